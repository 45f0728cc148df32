"""`truecost collect` as a real process, fed by the real OpenTelemetry SDK over OTLP/HTTP (loopback only):
hand-made GenAI spans, and opentelemetry-instrumentation-openai around the official openai client
talking to the loopback mock."""

from __future__ import annotations

from tests.support.requires import need
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

need("opentelemetry.exporter.otlp.proto.http.trace_exporter", "integrations")

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: E402
from opentelemetry.sdk.resources import Resource  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: E402
from opentelemetry.trace import SpanKind  # noqa: E402

from tests.support.mock_upstream import ServerThread, free_port, make_app  # noqa: E402
from tests.unit.integrations.spans import write_prices  # noqa: E402
from truecost.ledger import BatchWriter  # noqa: E402
from truecost.ledger.sqlite import SQLiteLedgerStore  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
KEY = "test-ingest-key"
CONFIG = """
listen: 127.0.0.1:{port}
ledger: ledger.db
prices_files: [{prices}]
compute: acme/tc-cpu
ingest_key_env: TC_INGEST_KEY
otlp:
  rules:
    - match: {{db.system.name: pinecone}}
      step: vector_search
      price: {{resource: tc-vdb, kind: vector_db, component: read_unit, quantity_from: db.pinecone.usage.read_units}}
    - match: {{name: "pii.*"}}
      step: sanitize
      compute: true
"""


def start_collector(folder: Path, port: int, workers: int = 1) -> subprocess.Popen:
    if not (folder / "collect.yaml").exists():
        (folder / "collect.yaml").write_text(CONFIG.format(port=port, prices=write_prices(folder)))
    log = open(folder / "collect.log", "ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "truecost.cli.main",
            "collect",
            "--config",
            str(folder / "collect.yaml"),
            "--workers",
            str(workers),
        ],
        cwd=folder,
        env={**os.environ, "TC_INGEST_KEY": KEY},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    deadline = time.time() + 90
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"truecost collect did not start: {(folder / 'collect.log').read_text()}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def collector(tmp_path_factory):
    folder = tmp_path_factory.mktemp("collect")
    port = free_port()
    proc = start_collector(folder, port)
    yield f"http://127.0.0.1:{port}", folder / "ledger.db"
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(20)


def _provider(url: str, **resource) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": "rag-bot", **resource}))
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{url}/v1/traces", headers={"authorization": f"Bearer {KEY}"}))
    )
    return provider


def _events(url: str, db: Path, trace_id: str, n: int, timeout: float = 30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        store = SQLiteLedgerStore(db)
        try:
            events = [e for e in store.query() if e.request_id == trace_id]
        finally:
            store.close()
        if len(events) >= n:
            return sorted(events, key=lambda e: e.ts)
        time.sleep(0.25)
    raise AssertionError(
        f"{n} events for {trace_id} not in the ledger: {httpx.get(f'{url}/stats', headers={'authorization': f'Bearer {KEY}'}).text}"
    )


def test_sdk_spans_over_otlp_http_become_one_priced_request(collector):
    url, db = collector
    provider = _provider(url, **{"deployment.environment.name": "test", "tenant.id": "acme"})
    tracer = provider.get_tracer("rag-app")
    with tracer.start_as_current_span("POST /ask", kind=SpanKind.SERVER) as root:
        with tracer.start_as_current_span("pii.scrub"):
            time.sleep(0.05)
        with tracer.start_as_current_span("embeddings tc-embed", kind=SpanKind.CLIENT) as s:
            s.set_attributes(
                {
                    "gen_ai.operation.name": "embeddings",
                    "gen_ai.provider.name": "openai",
                    "gen_ai.request.model": "tc-embed",
                    "gen_ai.usage.input_tokens": 5000,
                }
            )
        with tracer.start_as_current_span("pinecone.query", kind=SpanKind.CLIENT) as s:
            s.set_attributes({"db.system.name": "pinecone", "db.pinecone.usage.read_units": 5})
        with tracer.start_as_current_span("chat tc-chat", kind=SpanKind.CLIENT) as s:
            s.set_attributes(
                {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.provider.name": "openai",
                    "gen_ai.request.model": "tc-chat",
                    "gen_ai.usage.input_tokens": 1000,
                    "gen_ai.usage.output_tokens": 200,
                    "gen_ai.usage.cache_read.input_tokens": 400,
                }
            )
        with tracer.start_as_current_span("GET /weather", kind=SpanKind.CLIENT) as s:
            s.set_attribute("http.request.method", "GET")
    trace_id = f"{root.get_span_context().trace_id:032x}"
    assert provider.force_flush(30_000)
    provider.shutdown()
    events = _events(url, db, trace_id, 5)
    by_name = {e.name: e for e in events}
    assert set(by_name) == {"pii.scrub", "embeddings tc-embed", "pinecone.query", "chat tc-chat", "GET /weather"}
    assert by_name["embeddings tc-embed"].cost == Decimal("0.0001")  # 5000 x 0.02/1M
    assert by_name["pinecone.query"].cost == Decimal("0.00008")  # 5 read units x 16/1M
    assert by_name["chat tc-chat"].cost == Decimal("0.00144")  # 600 x 1 + 400 x 0.1 + 200 x 4, per 1M
    assert by_name["pii.scrub"].step == "sanitize" and by_name["pii.scrub"].cost > 0  # compute time
    weather = by_name["GET /weather"]
    assert weather.cost is None and "no rule prices span" in weather.details["unknown_reason"]  # shown, not dropped
    for e in events:
        assert e.source == "otlp" and e.trace_id == trace_id
        assert (e.attribution.tenant, e.attribution.environment) == ("acme", "test")
        assert dict(e.attribution.tags) == {"service": "rag-bot"}
    stats = httpx.get(f"{url}/stats", headers={"authorization": f"Bearer {KEY}"}).json()
    assert stats["skipped"] >= 1 and stats["unpriced"] >= 1  # the server span: a container, counted


def test_a_wrong_ingest_key_is_refused(collector):
    url, _ = collector
    r = httpx.post(
        f"{url}/v1/traces",
        content=b"",
        headers={"content-type": "application/x-protobuf", "authorization": "Bearer nope"},
    )
    assert r.status_code == 401


def test_openllmetry_instrumented_openai_client_against_the_loopback_mock(collector):
    instrumentation = need("opentelemetry.instrumentation.openai", "integrations")
    openai = need("openai", "openai")
    url, db = collector
    provider = _provider(url, **{"tenant.id": "globex"})
    tracer = provider.get_tracer("app")
    instrumentor = instrumentation.OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        with ServerThread(make_app()) as mock:
            client = openai.OpenAI(base_url=f"{mock.url}/v1", api_key="sk-test", max_retries=0)
            with tracer.start_as_current_span("answer", kind=SpanKind.SERVER) as root:
                client.embeddings.create(model="tc-embed", input=["refund", "card"])
                client.chat.completions.create(model="tc-chat", messages=[{"role": "user", "content": "refund?"}])
                stream = client.chat.completions.create(
                    model="tc-chat",
                    stream=True,
                    stream_options={"include_usage": True},
                    messages=[{"role": "user", "content": "and again?"}],
                )
                text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
                assert "refund" in text
            assert provider.force_flush(30_000)
    finally:
        instrumentor.uninstrument()
        provider.shutdown()
    trace_id = f"{root.get_span_context().trace_id:032x}"
    events = _events(url, db, trace_id, 3)
    steps = sorted((e.step, e.service, e.cost) for e in events)
    # mock usage: 120 prompt tokens (20 cached), 30 completion: 100 x 1 + 20 x 0.1 + 30 x 4 per 1M
    assert steps == [
        ("embed", "tc-embed", Decimal("3.2E-7")),  # 16 tokens x 0.02/1M
        ("generate", "tc-chat", Decimal("0.000222")),
        ("generate", "tc-chat", Decimal("0.000222")),
    ]
    assert all(e.attribution.tenant == "globex" and e.source == "otlp" for e in events)


def test_kill_9_after_the_answer_loses_nothing_and_counts_nothing_twice(tmp_path):
    from tests.unit.integrations.spans import GENAI, json_body, json_span

    port = free_port()
    proc = start_collector(tmp_path, port)
    url = f"http://127.0.0.1:{port}/v1/traces"
    headers = {"content-type": "application/json", "authorization": f"Bearer {KEY}"}
    bodies = [json_body([json_span(GENAI) for _ in range(200)]) for _ in range(5)]
    for body in bodies:
        assert httpx.post(url, content=body, headers=headers, timeout=30).status_code == 200
    os.killpg(proc.pid, signal.SIGKILL)  # no shutdown: whatever was not stored yet is only in the journal
    proc.wait(20)
    proc = start_collector(tmp_path, port)
    try:
        assert httpx.post(url, content=bodies[0], headers=headers, timeout=30).status_code == 200  # a retry, too
        deadline = time.time() + 60
        while time.time() < deadline:
            stats = httpx.get(f"http://127.0.0.1:{port}/stats", headers={"authorization": f"Bearer {KEY}"}).json()
            if stats["journal_pending"] == 0 and stats["ledger"]["pending"] == 0:
                break
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
    BatchWriter(SQLiteLedgerStore(tmp_path / "ledger.db"), spool_path=tmp_path / "ledger.collect.spool.jsonl").close()
    store = SQLiteLedgerStore(tmp_path / "ledger.db")
    try:
        events = store.query()
    finally:
        store.close()
    assert len(events) == 1000 and len({e.id for e in events}) == 1000


def test_two_worker_processes_share_the_port_and_the_ledger(tmp_path):
    from tests.unit.integrations.spans import GENAI, json_body, json_span

    port = free_port()
    proc = start_collector(tmp_path, port, workers=2)
    try:
        headers = {"content-type": "application/json", "authorization": f"Bearer {KEY}"}
        for _ in range(10):
            body = json_body([json_span(GENAI) for _ in range(50)])
            assert httpx.post(f"http://127.0.0.1:{port}/v1/traces", content=body, headers=headers).status_code == 200
        deadline = time.time() + 60
        while time.time() < deadline:
            store = SQLiteLedgerStore(tmp_path / "ledger.db")
            try:
                if store.count() >= 500:
                    break
            finally:
                store.close()
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    store = SQLiteLedgerStore(tmp_path / "ledger.db")
    try:
        events = store.query()
    finally:
        store.close()
    assert len(events) == 500 and all(e.cost == Decimal("0.0018") for e in events)
    assert sorted(p.name for p in (tmp_path / "ledger.collect.spool.journal").glob("slot-*") if p.is_dir()) == [
        "slot-0",
        "slot-1",
    ]
