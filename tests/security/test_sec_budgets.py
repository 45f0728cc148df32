"""Issue 15, point 3: budgets that hold -- across restarts, under concurrent bursts, against hang-ups; every
admitted estimate settled exactly once; the estimate covers n, tools and response_format; unpriced models and
embeddings go through the same admission.

Figures: the hostile upstream's answer costs $0.0000252 on gpt-6-luna (100 + 20 cached in, 30 out at
$0.10/$0.01/$0.50 per 1M); the admission estimate of ``max_tokens`` M is at least M x $0.50/1M (n=1).
"""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest

from tests.security.harness import IN_PRICE, OUT_PRICE, chat_body, http, post_chat, sha
from tests.security.sec_config import LUNA, key, upstream_block


def _hang_up(gw, api_key: str, body: dict, chunks: int = 1, timeout: float = 15.0):
    """Open a stream, read ``chunks`` data events, hang up. -> (status, request id or None)."""
    with http(timeout) as c:
        with c.stream(
            "POST", gw.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {api_key}"}
        ) as r:
            if r.status_code != 200:
                r.read()
                return r.status_code, r.headers.get("x-request-id")
            rid = r.headers.get("x-request-id")
            got = 0
            for line in r.iter_lines():
                if line.startswith("data: "):
                    got += 1
                    if got >= chunks:
                        break
    return 200, rid


def _code(r) -> str | None:
    try:
        return (r.json().get("error") or {}).get("code")
    except ValueError:
        return None


# -- restarts ------------------------------------------------------------------------------------------------


def test_spend_survives_kill9_and_restart_and_the_limit_holds(make_gateway, upstream, tmp_path):
    """$0.0002 a day; each request is estimated >= $0.00005 and costs $0.0000252: six fit in a day.
    Three before a kill -9, then only three more after the restart, then none after a graceful restart."""
    k = "sk-restart-" + sha(str(tmp_path))[:12]
    limit = Decimal("0.0002")
    g = make_gateway(
        {
            "ledger": str(tmp_path / "restart.db"),
            "upstreams": {"hostile": upstream_block(upstream.url)},
            "models": {"chat": {"candidates": [{"upstream": "hostile", "model": LUNA, "upstream_model": "ok"}]}},
            "keys": [{"name": "r", "key_sha256": sha(k), "cost_center": "cc-restart"}],
            "budgets": [{"cost_center": "cc-restart", "period": "day", "limit_usd": str(limit), "hard": True}],
        },
        name="restart",
    )
    before = []
    for i in range(3):
        r = post_chat(g, k, chat_body("chat", f"restart-a{i}", max_tokens=100))
        assert r.status_code == 200, r.text
        before.append(r.headers["x-request-id"])
    g.kill9()  # no flush, no shutdown hook: the answered events must not be lost, nor their spend forgotten
    g.start()
    after = []
    for i in range(8):
        r = post_chat(g, k, chat_body("chat", f"restart-b{i}", max_tokens=100))
        if r.status_code != 200:
            assert r.status_code == 429 and _code(r) == "budget_exceeded", r.text
            break
        after.append(r.headers["x-request-id"])
    assert after, "after the restart the budget refused everything (spend counted twice?)"
    assert len(after) <= 3, f"after a kill -9 the budget forgot the day's spend: {len(after)} more requests admitted"
    rows = g.wait_rows("cost_center = 'cc-restart'", at_least=len(before) + len(after), settle=0.5)
    assert {r["request_id"] for r in rows} >= set(before) | set(after), "answered requests are missing from the ledger"
    assert g.spent("cost_center", "cc-restart") <= limit
    g.stop()  # graceful this time
    g.start()
    r = post_chat(g, k, chat_body("chat", "restart-c", max_tokens=100))
    assert r.status_code == 429 and _code(r) == "budget_exceeded", (
        f"after a restart the limit no longer holds: {r.text}"
    )
    assert not upstream.calls("restart-c")
    assert g.spent("cost_center", "cc-restart") <= limit


# -- concurrency at the boundary ----------------------------------------------------------------------------


def test_a_concurrent_burst_never_passes_a_hard_limit(gw, upstream):
    """40 concurrent requests against $0.002 a day: n of 1, 3 or 5, half of them with a 2 KB tools array, half
    streamed; the upstream bills each one the most it could cost (prompt characters / 4, max_tokens x n out).
    The README's bound -- concurrent requests overshoot only by what those in flight cost beyond their
    estimates -- is 0 here (the estimate counts characters / 3 and max_tokens x n), so the ledger's total for
    the day must stay <= the limit."""
    limit = Decimal("0.002")
    tools = [
        {
            "type": "function",
            "function": {
                "name": f"tool_{j}",
                "description": "look something up " * 6,
                "parameters": {"type": "object", "properties": {}},
            },
        }
        for j in range(12)
    ]

    def one(i: int):
        body = chat_body("echo-usage", f"burst-{i}", max_tokens=100, n=(1, 3, 5)[i % 3], stream=i % 2 == 1)
        if i % 4 < 2:
            body["tools"] = tools
        if body["stream"]:
            body["stream_options"] = {"include_usage": True}
        with http(30) as c:
            return c.post(
                gw.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key('burst')}"}
            )

    with ThreadPoolExecutor(40) as pool:
        results = list(pool.map(one, range(40)))
    ok = [r for r in results if r.status_code == 200]
    refused = [r for r in results if r.status_code == 429]
    assert len(ok) + len(refused) == 40, [r.status_code for r in results if r.status_code not in (200, 429)]
    assert all(_code(r) == "budget_exceeded" for r in refused)
    assert ok and refused, (len(ok), len(refused))
    for r in ok:
        if r.headers.get("content-type", "").startswith("text/event-stream"):
            assert r.text.rstrip().endswith("data: [DONE]"), r.text[-300:]
    rows = gw.wait_rows("cost_center = 'cc-burst'", at_least=len(ok), settle=0.5)
    assert len({r["request_id"] for r in rows}) == len(ok)
    assert len(upstream.calls("burst-")) == len(ok), "a refused request reached the upstream"
    assert all(r["cost"] is not None for r in rows)
    total = gw.spent("cost_center", "cc-burst")
    assert total <= limit, f"{len(ok)} admitted requests spent ${total} against a ${limit} hard limit"


# -- hang-ups --------------------------------------------------------------------------------------------------


def test_a_hang_up_is_charged_for_its_prompt_and_the_budget_counts_it(gw, upstream):
    """A 40 KB prompt is >= 5,000 tokens ($0.0005) by any count; $0.004 a day admits at most eight such
    hang-ups, however few chunks each one read."""
    prompt = "lorem ipsum dolor sit amet consectetur " * 1040  # 40,560 characters
    floor = 5000 * IN_PRICE
    charged, refused_at = [], None
    for i in range(10):
        status, rid = _hang_up(gw, key("hangup"), chat_body("drip", f"hangup-{i} {prompt}", max_tokens=50, stream=True))
        if status == 429:
            refused_at = i
            break
        assert status == 200 and rid
        rows = gw.wait_rows("request_id = ?", (rid,), timeout=10)
        assert rows, f"hang-up {i}: no ledger row"
        (gen,) = [r for r in rows if r["step"] == "generate"]
        assert gen["cost"] is not None and gen["cost"] >= floor, (
            f"hang-up {i} charged ${gen['cost']} for a 40 KB prompt (at least ${floor})"
        )
        assert any("estimat" in k and v for k, v in gen["details"].items()), (
            f"the hang-up's charge is not flagged as estimated: {gen['details']}"
        )
        charged.append(gen["cost"])
    assert refused_at is not None, f"ten hang-ups with 40 KB prompts were all admitted (charged {charged})"
    assert gw.spent("cost_center", "cc-hangup") <= Decimal("0.004")
    calls = upstream.calls("hangup-")
    assert len(calls) == len(charged)
    time.sleep(0.5)
    assert all(c["cancelled"] for c in calls), "the upstream call went on after the client hung up"


def _abandon(gw, api_key: str, body: dict) -> None:
    """Send a whole request on a raw socket and hang up before reading a byte of the answer."""
    data = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {api_key}\r\nContent-Length: {len(data)}\r\n\r\n".encode()
            + data
        )


@pytest.mark.parametrize("which", ["gw", "cache_gw"])
def test_every_admitted_request_is_settled_exactly_once(request, which):
    """Bursts, hang-ups (after the first chunk, and before any byte), upstream failures, malformed usage, an
    idle-timed-out stream, a client that gives up, lone-surrogate bodies -- each with an estimate of >= $0.004,
    where one leaked admission would show -- on the plain gateway and on one with the semantic cache on.
    Afterwards the budget guard must hold exactly what the ledger says was spent (known costs, plus
    ``budget_charge_usd`` on rows whose cost is unknown): a request that just fits the rest of the $0.1 is
    admitted, one just over it is refused."""
    from tests.security.sec_config import CACHE_KEYS

    gw = request.getfixturevalue(which)
    k = key("settle") if which == "gw" else CACHE_KEYS["settle"]
    limit = Decimal("0.1")
    big = 8000  # an estimate of >= $0.004
    for round_ in range(3):
        with ThreadPoolExecutor(4) as pool:
            list(
                pool.map(
                    lambda i, r=round_: post_chat(
                        gw, k, chat_body("chat", f"settle-b{r}-{i} {i * 'x'}", max_tokens=big)
                    ),
                    range(4),
                )
            )
    for i in range(2):
        _hang_up(gw, k, chat_body("drip", f"settle-h{i}", max_tokens=big, stream=True))
        _abandon(gw, k, chat_body("drip", f"settle-a{i}", max_tokens=big, stream=True))
        _abandon(gw, k, chat_body("slow", f"settle-as{i}", max_tokens=big))
    failing = ("echo-500", "close", "truncated", "redirect-loop", "usage-float", "usage-string", "error-in-200")
    for model in failing if which == "gw" else failing[::3]:  # the cached path: a sample (each costs a lookup)
        post_chat(gw, k, chat_body(model, f"settle-f-{model}", max_tokens=big))
    _hang_up(gw, k, chat_body("stream-error", "settle-se", max_tokens=big, stream=True), chunks=5)
    post_chat(gw, k, chat_body("stall", "settle-stall", max_tokens=big, stream=True))
    for content in ("settle \\ud800", "\\udfff settle"):
        surrogate = (
            b'{"model": "chat", "max_tokens": 8000, "messages": [{"role": "user", "content": "'
            + content.encode()
            + b'"}]}'
        )
        post_chat(gw, k, None, raw=surrogate)
    try:  # the client gives up before the answer (the upstream takes 1.5 s)
        post_chat(gw, k, chat_body("slow", "settle-slow", max_tokens=big), timeout=0.4)
    except Exception:  # noqa: BLE001 - httpx's timeout is the point
        pass
    time.sleep(1.5)
    rows = gw.wait_rows("cost_center = 'cc-settle'", at_least=12, settle=1.5, timeout=15)
    assert len({r["request_id"] for r in rows}) >= 12
    spent = gw.budget_spent("cost_center", "cc-settle")
    assert spent < limit - Decimal("0.02"), f"the scenario itself spent ${spent}"
    rest = limit - spent
    over = int((rest + Decimal("0.000002")) / OUT_PRICE) + 1
    r = post_chat(gw, k, chat_body("chat", "settle-over", max_tokens=over))
    assert r.status_code == 429 and _code(r) == "budget_exceeded", (
        f"max_tokens={over} (estimate > the ${rest} left by the ledger) was admitted: the guard undercounts spend"
    )
    margin = Decimal("0.00003")  # the probe's own prompt
    fits = int((rest - margin) / OUT_PRICE)
    r = post_chat(gw, k, chat_body("chat", "settle-fit", max_tokens=fits))
    unknown = [
        (
            u["service"],
            u["outcome"],
            str(u["details"].get("unknown_reason"))[:80],
            u["details"].get("budget_charge_usd"),
        )
        for u in rows
        if u["cost"] is None
    ][:10]
    assert r.status_code == 200, (
        f"max_tokens={fits} fits the ${rest} the ledger leaves but was refused: an admitted estimate was never "
        f"settled, or settled at more than the ledger records. unknown-cost rows: {unknown}; {r.text[:300]}"
    )


# -- what the estimate covers -------------------------------------------------------------------------------


def test_the_estimate_covers_n_tools_response_format_and_max_completion_tokens(gw, upstream):
    """$0.001 a day. Each refused request below would have been admitted by an estimate of the messages and
    max_tokens alone; each must be refused without reaching the upstream."""
    k = key("est")
    assert post_chat(gw, k, chat_body("chat", "est-base", max_tokens=200)).status_code == 200
    assert post_chat(gw, k, chat_body("chat", "est-n4", max_tokens=200, n=4)).status_code == 200  # $0.0004 fits
    tools = [
        {
            "type": "function",
            "function": {
                "name": f"lookup_{i}",
                "description": "Look up an order by its identifier and return its status. " * 40,
                "parameters": {
                    "type": "object",
                    "properties": {f"field_{j}": {"type": "string", "description": "an id"} for j in range(20)},
                },
            },
        }
        for i in range(40)
    ]
    schema = {
        "type": "json_schema",
        "json_schema": {
            "name": "answer",
            "schema": {
                "type": "object",
                "properties": {
                    f"field_{j}": {"type": "string", "description": "a field of the answer " * 30} for j in range(250)
                },
            },
        },
    }
    assert len(json.dumps(tools)) > 100_000 and len(json.dumps(schema)) > 100_000
    refused = {
        "n": chat_body("chat", "est-n16", max_tokens=200, n=16),  # 16 x 200 x $0.5/1M = $0.0016
        "tools": chat_body("chat", "est-tools", max_tokens=10, tools=tools),  # >= 12,500 tokens in
        "response_format": chat_body("chat", "est-rf", max_tokens=10, response_format=schema),
        "max_completion_tokens": chat_body("chat", "est-mct", max_completion_tokens=3000),  # $0.0015 out
    }
    for what, body in refused.items():
        r = post_chat(gw, k, body)
        assert r.status_code == 429 and _code(r) == "budget_exceeded", f"{what}: {r.status_code} {r.text[:300]}"
        assert not upstream.calls(body["messages"][0]["content"]), f"{what}: reached the upstream"
    assert post_chat(gw, k, chat_body("chat", "est-small", max_tokens=10)).status_code == 200  # room was left


def test_an_unpriced_model_under_a_hard_budget_is_refused_unless_allowed(gw, upstream):
    r = post_chat(gw, key("unpriced"), chat_body("house", "unpriced-refuse", max_tokens=10))
    assert r.status_code in (400, 403, 429) and "price" in r.json()["error"]["message"].lower(), r.text
    assert not upstream.calls("unpriced-refuse")
    r = post_chat(gw, key("unpriced-ok"), chat_body("house", "unpriced-allow", max_tokens=10))
    assert r.status_code == 200, r.text
    (row, *_x) = gw.wait_rows("request_id = ?", (r.headers["x-request-id"],))
    assert row["cost"] is None and row["details"].get("unknown_reason")
    assert post_chat(gw, key("plain"), chat_body("house", "unpriced-nobudget", max_tokens=10)).status_code == 200


def test_embeddings_go_through_budget_admission(gw, upstream):
    k = key("embed")
    texts = [f"embed-big {i} " + "the quick brown fox jumps over the lazy dog " * 8 for i in range(200)]
    with http() as c:
        r = c.post(
            gw.url + "/v1/embeddings", json={"model": "embed", "input": texts}, headers={"authorization": f"Bearer {k}"}
        )
        assert r.status_code == 429 and _code(r) == "budget_exceeded", f"{r.status_code} {r.text[:300]}"
        assert not upstream.calls("embed-big"), "an embedding over budget reached the upstream"
        r = c.post(
            gw.url + "/v1/embeddings",
            json={"model": "embed", "input": "embed-small"},
            headers={"authorization": f"Bearer {k}"},
        )
    assert r.status_code == 200, r.text
    (row, *_x) = gw.wait_rows("request_id = ?", (r.headers["x-request-id"],))
    assert row["step"] == "embed" and row["cost_center"] == "cc-embed" and row["cost"] > 0


def test_a_hang_up_on_the_anthropic_endpoint_is_charged_for_its_prompt_too(gw):
    prompt = "lorem ipsum dolor sit amet consectetur " * 1040
    with http(15) as c:
        with c.stream(
            "POST",
            gw.url + "/v1/messages",
            headers={"x-api-key": key("plain"), "anthropic-version": "2023-06-01"},
            json={
                "model": "drip",
                "max_tokens": 50,
                "stream": True,
                "messages": [{"role": "user", "content": "hangup-messages " + prompt}],
            },
        ) as r:
            assert r.status_code == 200
            rid = r.headers["x-request-id"]
            for line in r.iter_lines():
                if line.startswith("event: content_block_delta"):
                    break
    rows = gw.wait_rows("request_id = ?", (rid,), timeout=10)
    (gen,) = [row for row in rows if row["step"] == "generate"]
    assert gen["cost"] is not None and gen["cost"] >= 5000 * IN_PRICE, gen
    assert any("estimat" in k and v for k, v in gen["details"].items()), gen["details"]
