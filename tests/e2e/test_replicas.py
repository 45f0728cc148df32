"""Three gateway processes over one PostgreSQL (ledger + pgvector cache): what one caches the
others hit, and the shared ledger holds exactly what the clients were told they spent."""

import os
import signal
import subprocess
import sys
import threading
import time
from decimal import Decimal, localcontext

import httpx
import pytest
import yaml

from tests.support.mock_upstream import ServerThread, free_port, make_app
from tests.support.servers import fresh_name
from truecost.gateway.config import hash_key
from truecost.ledger import LedgerFilter
from truecost.ledger.postgres import PostgresLedgerStore

pytestmark = pytest.mark.slow  # real PostgreSQL and Redis Stack servers and several gateway processes

KEY = "sk-replica-test"
ADMIN = "sk-admin-test"


@pytest.fixture
def replicas(postgres_server, tmp_path):
    schema = fresh_name("gw")
    uri = postgres_server.uri
    with ServerThread(make_app()) as upstream:
        config = {
            "ledger": uri,
            "ledger_schema": schema,
            "compute": "aws/c7i.xlarge",
            "upstreams": {"mock": {"base_url": upstream.url + "/v1", "timeout": 5}},
            "models": {"support": {"candidates": [{"upstream": "mock", "model": "gpt-6-luna"}]}},
            "keys": [{"name": "a", "key_sha256": hash_key(KEY), "tenant": "acme", "cost_center": "cx"}],
            "admin_key_sha256": hash_key(ADMIN),
            "cache": {
                "enabled": True,
                "embedder": "minilm",
                "policy": "fixed:0.9",
                "backend": "postgres",
                "url": uri,
                "prefix": fresh_name("rc"),
            },
        }
        procs, urls = [], []
        for i in range(3):
            proc, url = start_replica(config, tmp_path, i)
            procs.append(proc)
            urls.append(url)
        try:
            yield urls, procs, schema, uri, config, tmp_path
        finally:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()


def start_replica(config, tmp_path, i, port=None):
    cfg = tmp_path / f"replica{i}.yaml"
    cfg.write_text(yaml.safe_dump({**config, "spool": str(tmp_path / f"spool{i}.jsonl")}))
    port = port or free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "truecost.cli.main", "serve", "--config", str(cfg), "--port", str(port)],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / f"replica{i}.log", "ab"),
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        assert proc.poll() is None, (tmp_path / f"replica{i}.log").read_text()[-2000:]
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        assert time.time() < deadline, "replica did not start"
        time.sleep(0.2)


def ask(url, text, docs=None):
    headers = {"authorization": f"Bearer {KEY}", **({"x-truecost-doc-ids": docs} if docs else {})}
    r = httpx.post(
        url + "/v1/chat/completions",
        headers=headers,
        timeout=30,
        json={"model": "support", "messages": [{"role": "user", "content": text}]},
    )
    assert r.status_code == 200, r.text
    return r


def test_three_replicas_share_the_cache_and_the_ledger(replicas):
    urls, procs, schema, uri, _, _ = replicas
    first = ask(urls[0], "what is the refund policy for damaged items")
    assert first.headers["x-truecost-cache"] == "miss"
    again = ask(urls[1], "what is the refund policy for damaged items")
    assert again.headers["x-truecost-cache"] == "hit"  # cached through replica 1, served by replica 2
    assert again.json()["choices"][0]["message"]["content"] == first.json()["choices"][0]["message"]["content"]
    told = [Decimal(first.headers["x-truecost-cost-usd"]), Decimal(again.headers["x-truecost-cost-usd"])]
    # an answer built from a knowledge-base document, invalidated through replica 3, is gone everywhere
    for r in (
        ask(urls[0], "how long does a refund take", docs="kb-refunds"),
        ask(urls[1], "how long does a refund take"),
    ):
        told.append(Decimal(r.headers["x-truecost-cost-usd"]))
    assert r.headers["x-truecost-cache"] == "hit"
    bad = httpx.post(
        urls[2] + "/admin/cache/invalidate",
        json={"doc_ids": ["kb-refunds"]},
        headers={"authorization": f"Bearer {KEY}"},
    )
    assert bad.status_code == 401  # a tenant key is not an admin key
    inv = httpx.post(
        urls[2] + "/admin/cache/invalidate",
        json={"doc_ids": ["kb-refunds"]},
        headers={"authorization": f"Bearer {ADMIN}"},
    )
    assert inv.status_code == 200 and inv.json()["invalidated"] == 1
    r = ask(urls[1], "how long does a refund take")  # replica 2 served it from the cache before; now it cannot
    told.append(Decimal(r.headers["x-truecost-cost-usd"]))
    assert r.headers["x-truecost-cache"] == "miss"
    # a knowledge-base version bump through replica 3 reaches the others within the stated bound (1 s)
    inv = httpx.post(
        urls[2] + "/admin/cache/invalidate",
        json={"kb_version": "2026-11-28"},
        headers={"authorization": f"Bearer {ADMIN}"},
    )
    assert inv.status_code == 200
    time.sleep(1.1)
    r = ask(urls[1], "what is the refund policy for damaged items")
    told.append(Decimal(r.headers["x-truecost-cost-usd"]))
    assert r.headers["x-truecost-cache"] == "miss"
    for i in range(24):
        r = ask(urls[i % 3], f"question number {i} about card {i * 7} fees")
        told.append(Decimal(r.headers["x-truecost-cost-usd"]))
    for p in procs:  # graceful stop: each replica flushes its ledger writer
        p.send_signal(signal.SIGTERM)
    for p in procs:
        p.wait(30)
    store = PostgresLedgerStore(uri, schema=schema)
    (row,) = store.aggregate([])
    assert row.request_count == 26 + 4 and row.unknown == 0
    with localcontext(prec=60):  # PostgreSQL sums NUMERIC exactly; add the headers as exactly
        assert row.cost == sum(told)  # the ledger total is what the clients were told, to the last digit
    store.close()


def test_kill_9_under_load_loses_no_answered_request(replicas):
    urls, procs, schema, uri, config, tmp_path = replicas
    import concurrent.futures

    told: dict[str, Decimal] = {}
    answered = threading.Semaphore(0)

    def one(i):
        r = ask(urls[0], f"load question {i} about transfer {i * 13}")
        answered.release()
        return r.headers["x-request-id"], Decimal(r.headers["x-truecost-cost-usd"])

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one, i) for i in range(120)]
        for _ in range(10):  # mid-load: once ten answers are out (however slow the machine), kill it
            assert answered.acquire(timeout=60), "the replica answered fewer than ten requests in time"
        procs[0].send_signal(signal.SIGKILL)  # some requests answered, some cut off
        for f in futures:
            try:
                rid, cost = f.result()
                told[rid] = cost
            except (httpx.HTTPError, AssertionError):
                pass  # never answered: the client got no cost, nothing to account for
    procs[0].wait()
    assert told, "no request was answered before the kill"
    # the replica comes back on the same folder and replays its write-ahead log
    proc, url = start_replica(config, tmp_path, 0)
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    store = PostgresLedgerStore(uri, schema=schema)
    for rid, cost in told.items():
        events = store.query(LedgerFilter(request_id=rid))
        assert events, f"answered request {rid} is missing from the ledger"
        with localcontext(prec=60):
            assert sum(e.cost for e in events) == cost
    ids = [e.id for e in store.query()]
    assert len(ids) == len(set(ids))
    store.close()


def test_a_budget_holds_across_replicas(replicas):
    import concurrent.futures

    urls, procs, schema, uri, config, tmp_path = replicas
    for p in procs:  # this test runs its own three replicas, with a budget
        p.send_signal(signal.SIGTERM)
        p.wait(30)
    budget_schema = fresh_name("bud")
    limit = Decimal("0.0002")
    cfg = {
        **config,
        "ledger_schema": budget_schema,
        "budgets": [{"tenant": "acme", "period": "day", "limit_usd": str(limit), "hard": True}],
    }
    started = [start_replica(cfg, tmp_path, 10 + i) for i in range(3)]
    try:

        def one(i):
            r = httpx.post(
                started[i % 3][1] + "/v1/chat/completions",
                headers={"authorization": f"Bearer {KEY}"},
                timeout=30,
                json={
                    "model": "support",
                    "max_tokens": 40,
                    "temperature": 0.3 + i / 1000,
                    "messages": [{"role": "user", "content": f"budget question {i}"}],
                },
            )
            return r.status_code, r.headers.get("x-truecost-cost-usd")

        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            results = list(pool.map(one, range(60)))
        after = [one(100 + i)[0] for i in range(3)]  # once the burst settled, every replica refuses
        assert after == [429, 429, 429]
    finally:
        for proc, _ in started:
            proc.send_signal(signal.SIGTERM)
        for proc, _ in started:
            proc.wait(30)
    admitted = [Decimal(c) for s, c in results if s == 200]
    refused = [s for s, _ in results if s == 429]
    assert admitted and refused and len(admitted) + len(refused) == 60
    store = PostgresLedgerStore(uri, schema=budget_schema)
    (row,) = store.aggregate([], LedgerFilter(attribution=(("tenant", "acme"),)))
    # admission counts spent + in-flight estimates; a request costing more than its estimate can overshoot,
    # but never by more than what the requests in flight at once (12 clients) cost beyond their estimates
    import json as _json

    from truecost.pricing import PriceCatalog, price_tokens
    from truecost.types import TokenUsage

    chars = len(_json.dumps([{"role": "user", "content": "budget question 10"}]))
    estimate = price_tokens(
        PriceCatalog.bundled().price_for("gpt-6-luna"), TokenUsage(input=chars // 3 + 1, output=40)
    ).cost
    assert limit / 2 < row.cost <= limit + 12 * max(a - estimate for a in admitted)
    with localcontext(prec=60):
        assert row.cost == sum(admitted)
    store.close()


def test_postgres_outage_under_load_loses_nothing(replicas, postgres_server):
    urls, procs, schema, uri, config, tmp_path = replicas
    for p in procs[1:]:
        p.send_signal(signal.SIGTERM)
        p.wait(30)
    told: dict[str, Decimal] = {}
    codes = []

    def burst(n, offset):
        for i in range(n):
            r = httpx.post(
                urls[0] + "/v1/chat/completions",
                headers={"authorization": f"Bearer {KEY}"},
                timeout=30,
                json={"model": "support", "messages": [{"role": "user", "content": f"outage {offset + i}"}]},
            )
            codes.append(r.status_code)
            if r.status_code == 200:
                told[r.headers["x-request-id"]] = Decimal(r.headers["x-truecost-cost-usd"])

    burst(10, 0)
    postgres_server.stop()  # ledger, cache and budgets all live there
    try:
        burst(20, 100)  # the gateway keeps answering: cache skipped, ledger spooled to disk
    finally:
        postgres_server.start()
    burst(10, 200)
    procs[0].send_signal(signal.SIGTERM)
    procs[0].wait(30)
    assert codes.count(200) == 40
    store = PostgresLedgerStore(uri, schema=schema)
    ids = [e.id for e in store.query()]
    assert len(ids) == len(set(ids))  # none doubled
    for rid, cost in told.items():  # none lost, to the last digit
        with localcontext(prec=60):
            assert sum(e.cost for e in store.query(LedgerFilter(request_id=rid))) == cost, rid
    store.close()
