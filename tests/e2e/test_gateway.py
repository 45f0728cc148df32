"""The gateway over HTTP, driven by the official openai SDK, against a loopback mock upstream."""

from tests.support.requires import need
import json
import time
from decimal import Decimal

import httpx
import pytest

from tests.support.mock_upstream import ServerThread, make_app
from truecost.gateway.app import build
from truecost.gateway.config import hash_key, parse_config
from truecost.ledger import LedgerFilter

openai = need("openai", "openai")
KEY, REVOKED = "sk-test-team-a", "sk-old"


def _mock_state(stack):
    return stack[2].server.config.app.state.calls


@pytest.fixture
def stack(tmp_path):
    with ServerThread(make_app()) as upstream:
        config = parse_config(
            {
                "ledger": str(tmp_path / "gw.db"),
                "upstreams": {"mock": {"base_url": upstream.url + "/v1", "timeout": 1.0, "max_retries": 1}},
                "models": {
                    "support": {"candidates": [{"upstream": "mock", "model": "gpt-6-luna"}]},
                    "routed": {
                        "candidates": [
                            {"upstream": "mock", "model": "gpt-6.2-sol"},
                            {"upstream": "mock", "model": "gpt-6-luna"},
                        ],
                        "route": {"strategy": "rules", "weak": "gpt-6-luna", "strong": "gpt-6.2-sol"},
                    },
                    "embed": {"candidates": [{"upstream": "mock", "model": "text-embedding-3-small"}]},
                    "with-fallback": {
                        "candidates": [
                            {"upstream": "mock", "model": "gpt-6.2-sol", "upstream_model": "fail-500"},
                            {"upstream": "mock", "model": "gpt-6-luna"},
                        ]
                    },
                    "all-fail": {
                        "candidates": [{"upstream": "mock", "model": "gpt-6-luna", "upstream_model": "fail-500"}]
                    },
                    "cut": {"candidates": [{"upstream": "mock", "model": "gpt-6-luna", "upstream_model": "cut"}]},
                    "slow": {"candidates": [{"upstream": "mock", "model": "gpt-6-luna", "upstream_model": "slow"}]},
                    "drip": {"candidates": [{"upstream": "mock", "model": "gpt-6-luna", "upstream_model": "drip"}]},
                },
                "keys": [
                    {"name": "team-a", "key_sha256": hash_key(KEY), "cost_center": "cx", "tenant": "acme"},
                    {"name": "old", "key_sha256": hash_key(REVOKED), "revoked": True},
                    {"name": "budgeted", "key_sha256": hash_key("sk-budget"), "tenant": "budgeted"},
                ],
                "budgets": [{"tenant": "budgeted", "period": "day", "limit_usd": "0.0001"}],
                "max_body_bytes": 50_000,
            }
        )
        app = build(config)
        with ServerThread(app) as gw:
            yield gw, app, upstream


def client(gw, key=KEY):
    return openai.OpenAI(api_key=key, base_url=gw.url + "/v1", max_retries=0)


def ledger_events(app, request_id):
    app.state.writer.flush()
    return app.state.store.query(LedgerFilter(request_id=request_id))


def test_completion_is_priced_and_the_header_equals_the_ledger(stack):
    gw, app, _ = stack
    raw = client(gw).chat.completions.with_raw_response.create(
        model="support", messages=[{"role": "user", "content": "refund?"}], extra_headers={"x-truecost-feature": "faq"}
    )
    resp = raw.parse()
    assert resp.choices[0].message.content.startswith("The refund")
    h = raw.headers
    assert h["x-truecost-model"] == "gpt-6-luna" and h["x-truecost-cache"] == "bypass"
    # gpt-6-luna: 100 uncached x 0.10/1M + 20 cached x 0.01/1M + 30 out x 0.50/1M = 0.0000252
    assert Decimal(h["x-truecost-cost-usd"]) == Decimal("0.0000252")
    events = ledger_events(app, h["x-request-id"])
    assert sum(e.cost for e in events) == Decimal(h["x-truecost-cost-usd"])
    assert events[0].attribution.cost_center == "cx" and events[0].attribution.feature == "faq"
    assert events[0].attribution.tenant == "acme"
    assert float(h["x-truecost-overhead-ms"]) >= 0


def test_streaming_through_the_sdk(stack):
    gw, app, _ = stack
    raw = client(gw).chat.completions.with_raw_response.create(
        model="support", messages=[{"role": "user", "content": "refund?"}], stream=True
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in raw.parse() if ch.choices)
    assert text.strip().startswith("The refund reaches")
    (e,) = ledger_events(app, raw.headers["x-request-id"])
    assert e.cost == Decimal("0.0000252") and e.details["streamed_chunks"] > 5


def test_fallback_to_the_next_candidate_is_recorded(stack):
    gw, app, _ = stack
    raw = client(gw).chat.completions.with_raw_response.create(
        model="with-fallback", messages=[{"role": "user", "content": "x"}]
    )
    assert raw.headers["x-truecost-model"] == "gpt-6-luna"
    events = ledger_events(app, raw.headers["x-request-id"])
    assert [(e.service, e.outcome) for e in events] == [("gpt-6.2-sol", "error"), ("gpt-6-luna", "ok")]


def test_all_candidates_failing_is_a_502_in_openai_shape(stack):
    gw, _, _ = stack
    with pytest.raises(openai.APIStatusError) as info:
        client(gw).chat.completions.create(model="all-fail", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 502 and info.value.body["code"] == "upstream_failed"


def test_upstream_timeout_is_an_error_not_a_hang(stack):
    gw, _, _ = stack
    with pytest.raises(openai.APIStatusError) as info:
        client(gw).chat.completions.create(model="slow", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 502 and "timed out" in info.value.message


def test_stream_cut_midway_ends_with_an_error_event_and_partial_cost(stack):
    gw, app, _ = stack
    raw = client(gw).chat.completions.with_raw_response.create(
        model="cut", messages=[{"role": "user", "content": "x"}], stream=True
    )
    with pytest.raises(openai.APIError):
        for _ in raw.parse():
            pass
    (e,) = ledger_events(app, raw.headers["x-request-id"])
    assert e.outcome == "error" and e.details.get("usage_estimated_from_chunks") and e.cost > 0


@pytest.mark.parametrize(
    "content,headers,status,code",
    [
        (b"{not json", {}, 400, None),
        (b'{"model": "support"}', {}, 400, None),
        (b'{"model": "support", "messages": "hi"}', {}, 400, None),
        (b'{"model": "nope", "messages": [{"role": "user", "content": "x"}]}', {}, 404, "model_not_found"),
        (b'{"model": "support", "messages": [{"role": "user", "content": "\xff\xfe"}]}', {}, 400, None),
        (b'{"model": "support", "messages": [], "pad": "' + b"x" * 60_000 + b'"}', {}, 413, "body_too_large"),
        (b'{"model": "support", "messages": [{"role": "user", "content": "x"}], "max_tokens": -5}', {}, 400, None),
    ],
)
def test_bad_requests_get_clear_openai_shaped_errors(stack, content, headers, status, code):
    gw, _, _ = stack
    r = httpx.post(
        gw.url + "/v1/chat/completions",
        content=content,
        headers={"authorization": f"Bearer {KEY}", "content-type": "application/json", **headers},
    )
    assert r.status_code == status
    err = r.json()["error"]
    assert err["message"] and (code is None or err["code"] == code)


@pytest.mark.parametrize("key,code", [("sk-wrong", "invalid_api_key"), (REVOKED, "revoked_api_key")])
def test_unknown_and_revoked_keys_are_refused(stack, key, code):
    gw, _, _ = stack
    with pytest.raises(openai.AuthenticationError) as info:
        client(gw, key).chat.completions.create(model="support", messages=[{"role": "user", "content": "x"}])
    assert info.value.body["code"] == code


def test_hard_budget_refuses_the_request_that_would_cross_it(stack):
    gw, _, _ = stack
    c = client(gw, "sk-budget")
    msg = [{"role": "user", "content": "x"}]
    # limit $0.0001; each request is estimated at ~$0.00005 (100 output tokens at $0.50/1M plus the
    # prompt) and really costs $0.0000252: two fit, the third would cross the limit.
    c.chat.completions.create(model="support", messages=msg, max_tokens=100)
    c.chat.completions.create(model="support", messages=msg, max_tokens=100)
    with pytest.raises(openai.RateLimitError) as info:
        c.chat.completions.create(model="support", messages=msg, max_tokens=100)
    assert info.value.body["code"] == "budget_exceeded" and "tenant=budgeted" in info.value.message
    assert client(gw).chat.completions.create(model="support", messages=msg).choices  # other tenants unaffected


def test_models_health_and_metrics(stack):
    gw, _, _ = stack
    ids = [m.id for m in client(gw).models.list()]
    assert "support" in ids and "with-fallback" in ids
    assert httpx.get(gw.url + "/healthz").json() == {"status": "ok"}
    client(gw).chat.completions.create(model="support", messages=[{"role": "user", "content": "x"}])
    text = httpx.get(gw.url + "/metrics").text
    assert 'truecost_requests_total{cost_center="cx",model="gpt-6-luna"}' in text
    assert "truecost_overhead_ms_count" in text


def _overhead_count(gw) -> int:
    line = next(
        ln for ln in httpx.get(gw.url + "/metrics").text.splitlines() if ln.startswith("truecost_overhead_ms_count")
    )
    return int(line.split()[-1])


def test_streams_count_in_the_overhead_histogram(stack):
    gw, _, _ = stack
    client(gw).chat.completions.create(model="support", messages=[{"role": "user", "content": "x"}])
    before = _overhead_count(gw)
    stream = client(gw).chat.completions.create(
        model="support", messages=[{"role": "user", "content": "x"}], stream=True
    )
    assert "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
    assert _overhead_count(gw) == before + 1


@pytest.fixture
def cached_stack(tmp_path):
    with ServerThread(make_app()) as upstream:
        config = parse_config(
            {
                "ledger": str(tmp_path / "gw.db"),
                "upstreams": {"mock": {"base_url": upstream.url + "/v1", "timeout": 2.0, "max_retries": 0}},
                "models": {
                    "support": {"candidates": [{"upstream": "mock", "model": "gpt-6-luna"}]},
                    "all-fail": {
                        "candidates": [{"upstream": "mock", "model": "gpt-6-luna", "upstream_model": "fail-500"}]
                    },
                },
                "cache": {"enabled": True, "embedder": "static", "policy": "fixed:0.97"},
                "compute": "aws/c7i.xlarge",  # prices the lookup's CPU time
            }
        )
        app = build(config)
        with ServerThread(app) as gw:
            yield gw, app, upstream


def test_gateway_cache_hit_costs_only_the_lookup_and_records_the_avoided_cost(cached_stack):
    gw, app, upstream = cached_stack
    c = openai.OpenAI(api_key="none", base_url=gw.url + "/v1", max_retries=0)
    msg = [{"role": "user", "content": "How long does a refund take?"}]
    first = c.chat.completions.with_raw_response.create(model="support", messages=msg)
    assert first.headers["x-truecost-cache"] == "miss"
    second = c.chat.completions.with_raw_response.create(model="support", messages=msg)
    assert second.headers["x-truecost-cache"] == "hit"
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert Decimal(second.headers["x-truecost-avoided-usd"]) == Decimal("0.0000252")
    assert Decimal(second.headers["x-truecost-cost-usd"]) < Decimal("0.0000252")
    events = ledger_events(app, second.headers["x-request-id"])
    assert [e.step for e in events] == ["cache_lookup"] and events[0].outcome == "cache_hit"
    stream = c.chat.completions.create(model="support", messages=msg, stream=True)
    assert (
        "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
        == first.parse().choices[0].message.content
    )
    assert upstream.server.config.app.state.calls["n"] == 1  # one real call for three requests


def test_gateway_never_caches_errors(cached_stack):
    gw, _app, _ = cached_stack
    c = openai.OpenAI(api_key="none", base_url=gw.url + "/v1", max_retries=0)
    for _ in range(2):
        with pytest.raises(openai.APIStatusError) as info:
            c.chat.completions.create(model="all-fail", messages=[{"role": "user", "content": "x"}])
        assert info.value.status_code == 502


def test_rules_router_serves_easy_requests_from_the_weak_model_and_records_the_saving(stack):
    gw, app, _ = stack
    c = client(gw)
    easy = c.chat.completions.with_raw_response.create(model="routed", messages=[{"role": "user", "content": "hi"}])
    assert easy.headers["x-truecost-model"] == "gpt-6-luna"
    (e,) = ledger_events(app, easy.headers["x-request-id"])
    # same tokens on gpt-6.2-sol: 100 x 2/1M + 20 x 0.10/1M + 30 x 10/1M = 0.000502; on luna 0.0000252
    assert e.outcome == "routed" and e.avoided_cost == Decimal("0.000502") - Decimal("0.0000252")
    hard = c.chat.completions.with_raw_response.create(
        model="routed",
        messages=[{"role": "user", "content": "```python\ndef f(x):\n    return x\n``` debug and refactor"}],
    )
    assert hard.headers["x-truecost-model"] == "gpt-6.2-sol"


def test_embeddings_are_priced(stack):
    gw, app, _ = stack
    raw = client(gw).embeddings.with_raw_response.create(model="embed", input=["a", "b"])
    assert len(raw.parse().data) == 2
    # 16 tokens x $0.02/1M
    assert Decimal(raw.headers["x-truecost-cost-usd"]) == Decimal("0.00000032")
    (e,) = ledger_events(app, raw.headers["x-request-id"])
    assert e.step == "embed"


def _anthropic_client(gw, key=KEY):
    anthropic = need("anthropic", "anthropic")
    return anthropic, anthropic.Anthropic(api_key=key, base_url=gw.url, max_retries=0)


def test_anthropic_messages_json_and_stream(stack):
    gw, app, _ = stack
    anthropic, c = _anthropic_client(gw)
    msg = c.messages.create(
        model="support", max_tokens=50, system="Be brief.", messages=[{"role": "user", "content": "refund?"}]
    )
    assert msg.content[0].text.startswith("The refund") and msg.stop_reason == "end_turn"
    assert msg.usage.input_tokens == 120 and msg.usage.output_tokens == 30
    with c.messages.stream(model="support", max_tokens=50, messages=[{"role": "user", "content": "refund?"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text.strip().startswith("The refund") and final.usage.output_tokens == 30
    with pytest.raises(anthropic.BadRequestError):
        c.messages.create(
            model="support", max_tokens=5, messages=[{"role": "user", "content": [{"type": "image", "source": {}}]}]
        )


def test_anthropic_stream_cut_is_an_error_event(stack):
    gw, _, _ = stack
    anthropic, c = _anthropic_client(gw)
    with pytest.raises(anthropic.APIError):
        with c.messages.stream(model="cut", max_tokens=50, messages=[{"role": "user", "content": "x"}]) as s:
            "".join(s.text_stream)


def test_client_disconnect_mid_stream_records_the_partial_cost(stack):
    gw, app, _ = stack
    with httpx.stream(
        "POST",
        gw.url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {KEY}"},
        json={"model": "drip", "stream": True, "messages": [{"role": "user", "content": "x"}]},
    ) as r:
        request_id = r.headers["x-request-id"]
        lines = r.iter_lines()
        got = [next(lines) for _ in range(3)]  # two chunks (and a blank separator), then hang up
        assert got[0].startswith("data: ")
    deadline = time.time() + 5
    events = []
    while time.time() < deadline and not events:
        events = ledger_events(app, request_id)
        time.sleep(0.1)
    (e,) = events
    assert e.outcome == "error" and e.details.get("usage_estimated_from_chunks") and 0 < e.cost
    # the upstream call was cancelled, not left running
    deadline = time.time() + 5
    while time.time() < deadline and not _mock_state(stack).get("cancelled"):
        time.sleep(0.05)
    assert _mock_state(stack).get("cancelled") == 1


def test_429_is_retried_honouring_retry_after_then_passed_on(tmp_path):
    with ServerThread(make_app()) as upstream:
        config = parse_config(
            {
                "ledger": str(tmp_path / "gw.db"),
                "upstreams": {"mock": {"base_url": upstream.url + "/v1", "max_retries": 2}},
                "models": {
                    "busy": {"candidates": [{"upstream": "mock", "model": "gpt-6-luna", "upstream_model": "fail-429"}]}
                },
            }
        )
        with ServerThread(build(config)) as gw:
            r = httpx.post(
                gw.url + "/v1/chat/completions", json={"model": "busy", "messages": [{"role": "user", "content": "x"}]}
            )
        assert r.status_code == 429 and r.json()["error"]["code"] == "upstream_failed"
        assert upstream.server.config.app.state.calls["n"] == 3  # the first try and two retries


def test_metrics_split_cost_by_step_and_model(stack):
    gw, _, _ = stack
    client(gw).chat.completions.create(model="support", messages=[{"role": "user", "content": "x"}])
    text = httpx.get(gw.url + "/metrics").text
    assert 'truecost_cost_usd_total{cost_center="cx",model="gpt-6-luna",step="generate"}' in text


def test_gateway_emits_opentelemetry_spans(tmp_path):
    sdk = need("opentelemetry.sdk.trace", "otel")
    from opentelemetry import trace
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    with ServerThread(make_app()) as upstream:
        config = parse_config(
            {
                "ledger": str(tmp_path / "gw.db"),
                "otel": True,
                "upstreams": {"mock": {"base_url": upstream.url + "/v1"}},
                "models": {"support": {"candidates": [{"upstream": "mock", "model": "gpt-6-luna"}]}},
            }
        )
        with ServerThread(build(config)) as gw:
            httpx.post(
                gw.url + "/v1/chat/completions",
                json={"model": "support", "messages": [{"role": "user", "content": "x"}]},
            )
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert spans["truecost.step.generate"].parent.span_id == spans["truecost.request"].context.span_id
    gen = spans["truecost.step.generate"].attributes
    assert gen["gen_ai.request.model"] == "gpt-6-luna" and gen["gen_ai.usage.output_tokens"] == 30
    assert Decimal(gen["truecost.cost_usd"]) == Decimal("0.0000252")


def test_anthropic_upstream_is_priced_with_anthropic_rules(tmp_path):
    with ServerThread(make_app()) as upstream:
        config = parse_config(
            {
                "ledger": str(tmp_path / "gw.db"),
                "upstreams": {"claude": {"base_url": upstream.url + "/v1", "kind": "anthropic"}},
                "models": {"sonnet": {"candidates": [{"upstream": "claude", "model": "claude-sonnet-5.5"}]}},
            }
        )
        app = build(config)
        with ServerThread(app) as gw:
            c = openai.OpenAI(api_key="none", base_url=gw.url + "/v1", max_retries=0)
            raw = c.chat.completions.with_raw_response.create(
                model="sonnet", messages=[{"role": "system", "content": "brief"}, {"role": "user", "content": "x"}]
            )
            resp = raw.parse()
            stream = c.chat.completions.with_raw_response.create(
                model="sonnet", messages=[{"role": "user", "content": "x"}], stream=True
            )
            text = "".join(ch.choices[0].delta.content or "" for ch in stream.parse() if ch.choices)
            (e,) = ledger_events(app, stream.headers["x-request-id"])
    assert resp.choices[0].message.content.startswith("The refund") and resp.usage.prompt_tokens == 26000
    assert text.strip().startswith("The refund")
    # the golden Anthropic case: input 1,000 + cache read 20,000 + 5m write 4,000 + 1h write 1,000 + output 800 = $0.026
    assert Decimal(raw.headers["x-truecost-cost-usd"]) == Decimal("0.026")
    assert "_truecost_usage" not in resp.model_dump()
    assert e.cost == Decimal("0.026")


def test_an_upstreams_price_attributes_select_its_regional_price(tmp_path):
    # the same answer from a global and a data-residency (regional, +10%) deployment of gpt-6-luna
    with ServerThread(make_app()) as upstream:
        config = parse_config(
            {
                "ledger": str(tmp_path / "gw.db"),
                "upstreams": {
                    "global": {"base_url": upstream.url + "/v1"},
                    "eu": {"base_url": upstream.url + "/v1", "price_attributes": {"region": "regional"}},
                },
                "models": {
                    "g": {"candidates": [{"upstream": "global", "model": "gpt-6-luna"}]},
                    "r": {"candidates": [{"upstream": "eu", "model": "gpt-6-luna"}]},
                },
            }
        )
        app = build(config)
        with ServerThread(app) as gw:
            c = openai.OpenAI(api_key="none", base_url=gw.url + "/v1", max_retries=0)
            costs = {}
            for alias in ("g", "r"):
                raw = c.chat.completions.with_raw_response.create(
                    model=alias, messages=[{"role": "user", "content": "x"}]
                )
                (e,) = ledger_events(app, raw.headers["x-request-id"])
                costs[alias] = (Decimal(raw.headers["x-truecost-cost-usd"]), e)
    assert costs["g"][0] > 0 and costs["r"][0] == costs["g"][0] * Decimal("1.1")
    assert costs["r"][1].cost == costs["r"][0]
    assert costs["r"][1].details.get("price_attributes") == {"region": "regional"}


class ResetServer:
    """Accepts TCP connections and resets them at once (SO_LINGER 0): a peer that drops the line."""

    def __init__(self) -> None:
        import socket
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        import socket
        import struct

        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.recv(65536)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()


def test_connection_reset_falls_back_to_the_next_candidate_and_is_recorded(tmp_path):
    reset = ResetServer()
    with ServerThread(make_app()) as upstream:
        config = parse_config(
            {
                "ledger": str(tmp_path / "gw.db"),
                "upstreams": {
                    "flaky": {"base_url": f"http://127.0.0.1:{reset.port}/v1", "timeout": 2, "max_retries": 1},
                    "mock": {"base_url": upstream.url + "/v1", "timeout": 2},
                },
                "models": {
                    "support": {
                        "candidates": [
                            {"upstream": "flaky", "model": "gpt-6.2-sol"},
                            {"upstream": "mock", "model": "gpt-6-luna"},
                        ]
                    }
                },
            }
        )
        app = build(config)
        with ServerThread(app) as gw:
            r = httpx.post(
                gw.url + "/v1/chat/completions",
                timeout=10,
                json={"model": "support", "messages": [{"role": "user", "content": "hello"}]},
            )
            assert r.status_code == 200 and r.headers["x-truecost-model"] == "gpt-6-luna"
            assert reset.accepted >= 1
            events = ledger_events(app, r.headers["x-request-id"])
            failed = [e for e in events if e.outcome == "error"]
            assert failed and failed[0].service == "gpt-6.2-sol" and failed[0].cost is None  # the reset is on record
            # a failed attempt's cost is not known (never silently 0), so the request's total is reported as unknown
            assert r.headers["x-truecost-cost-usd"] == "unknown"
            assert [e.outcome for e in events if e.service == "gpt-6-luna"] == ["ok"]


def test_slow_drip_stream_longer_than_the_timeouts_is_not_cut(stack):
    """The upstream drips (0.2 s a chunk, ~2.2 s in all) past its 1 s first-byte timeout: a stream that keeps
    flowing is never cut by a total timeout, only by an idle gap."""
    gw, app, _ = stack
    raw = client(gw).chat.completions.with_raw_response.create(
        model="drip", messages=[{"role": "user", "content": "x"}], stream=True, stream_options={"include_usage": True}
    )
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert text.startswith("The refund")
    (e,) = ledger_events(app, raw.headers["x-request-id"])
    assert e.outcome == "ok" and e.cost == Decimal("0.0000252")


def test_a_stalled_stream_is_cut_by_the_idle_timeout_and_charged(tmp_path):
    from tests.support.hostile_upstream import HostileUpstream

    with HostileUpstream() as up:
        config = parse_config(
            {
                "ledger": str(tmp_path / "gw.db"),
                "upstreams": {
                    "h": {"base_url": up.url + "/v1", "first_byte_timeout": 2, "idle_timeout": 0.5, "max_retries": 0}
                },
                "models": {
                    "stall": {"candidates": [{"upstream": "h", "model": "gpt-6-luna", "upstream_model": "stall"}]}
                },
            }
        )
        app = build(config)
        with ServerThread(app) as gw:
            raw = client(gw).chat.completions.with_raw_response.create(
                model="stall", messages=[{"role": "user", "content": "x"}], stream=True
            )
            got = []
            started = time.time()
            with pytest.raises(openai.APIError, match="timed out"):
                for c in raw.parse():
                    got.append(c)
            assert len(got) == 2 and time.time() - started < 5
            (e,) = ledger_events(app, raw.headers["x-request-id"])
            assert e.outcome == "error" and e.details.get("usage_estimated_from_chunks") and e.cost > 0


@pytest.mark.parametrize("enabled", [False, True])
def test_prompts_reach_the_log_only_when_enabled_and_then_scrubbed(tmp_path, caplog, enabled):
    import logging

    with ServerThread(make_app()) as upstream:
        config = parse_config(
            {
                "ledger": str(tmp_path / "gw.db"),
                "log_prompts": enabled,
                "upstreams": {"mock": {"base_url": upstream.url + "/v1", "timeout": 2}},
                "models": {"support": {"candidates": [{"upstream": "mock", "model": "gpt-6-luna"}]}},
            }
        )
        with caplog.at_level(logging.DEBUG), ServerThread(build(config)) as gw:
            r = httpx.post(
                gw.url + "/v1/chat/completions",
                timeout=10,
                json={
                    "model": "support",
                    "messages": [
                        {
                            "role": "user",
                            "content": "my email is jane.doe@example.com and card 4111 1111 1111 1111, secret-marker",
                        }
                    ],
                },
            )
            assert r.status_code == 200
    text = caplog.text
    assert "jane.doe@example.com" not in text and "4111 1111" not in text  # never, whatever the setting
    assert ("secret-marker" in text and "<email>" in text and "<card>" in text) == enabled


def test_admin_api_is_off_without_an_admin_key_and_refuses_tenant_keys(stack):
    gw, _, _ = stack
    r = httpx.post(
        gw.url + "/admin/cache/invalidate", json={"doc_ids": ["x"]}, headers={"authorization": f"Bearer {KEY}"}
    )
    assert r.status_code == 403 and "admin API is off" in r.json()["error"]["message"]
    with pytest.raises(Exception, match="hashed"):
        parse_config(
            {
                "upstreams": {"m": {"base_url": "http://x"}},
                "admin_key": "sk-plain",
                "models": {"a": {"candidates": [{"upstream": "m", "model": "gpt-6-luna"}]}},
            }
        )


def test_trained_router_calibrated_by_the_cli_routes_live_traffic(tmp_path):
    import random

    from click.testing import CliRunner

    from truecost.cli.main import cli
    from truecost.errors import ConfigError

    rng = random.Random(7)
    data = tmp_path / "labelled.jsonl"
    with open(data, "w") as fh:
        for i in range(400):
            hard = i % 2 == 0
            prompt = (
                f"Compute step by step: {' + '.join(str(rng.randint(0, 99)) for _ in range(10))}"
                if hard
                else f"Say hello to person {i}"
            )
            fh.write(
                json.dumps(
                    {
                        "prompt": prompt,
                        "prompt_tokens": len(prompt) // 4,
                        "models": {
                            "gpt-3.5-turbo-1106": {
                                "quality": 0 if hard and rng.random() < 0.8 else 1,
                                "output_tokens": 20,
                            },
                            "gpt-4-1106-preview": {"quality": 1, "output_tokens": 30},
                        },
                    }
                )
                + "\n"
            )
    artifact = tmp_path / "router.npz"
    res = CliRunner().invoke(
        cli,
        [
            "router",
            "calibrate",
            str(data),
            "--weak",
            "gpt-3.5-turbo-1106",
            "--strong",
            "gpt-4-1106-preview",
            "--kind",
            "trained",
            "--max-strong-share",
            "0.5",
            "--out",
            str(artifact),
        ],
        catch_exceptions=False,
    )
    out = json.loads(res.output)
    assert out["artifact"] == str(artifact) and 0.4 <= out["test"]["strong_share"] <= 0.5

    def conf(route):
        return parse_config(
            {
                "ledger": str(tmp_path / "gw.db"),
                "upstreams": {"mock": {"base_url": upstream.url + "/v1"}},
                "models": {
                    "routed": {
                        "candidates": [
                            {"upstream": "mock", "model": "gpt-6.2-sol"},
                            {"upstream": "mock", "model": "gpt-6-luna"},
                        ],
                        "route": {"weak": "gpt-6-luna", "strong": "gpt-6.2-sol", **route},
                    }
                },
                "keys": [{"name": "team-a", "key_sha256": hash_key(KEY)}],
            }
        )

    easy_q, hard_q = "Say hello to person 9001", "Compute step by step: 12 + 85 + 3 + 44 + 9"

    def ask(c, content, system=None, **kw):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
        return c.chat.completions.with_raw_response.create(model="routed", messages=messages, **kw)

    with ServerThread(make_app()) as upstream:
        with pytest.raises(ConfigError, match="needs its artifact"):
            conf({"strategy": "trained", "artifact": str(tmp_path / "missing.npz")})
        with pytest.raises(ConfigError, match="threshold: a number"):
            conf({"strategy": "trained", "artifact": str(artifact), "threshold": True})
        app = build(conf({"strategy": "trained", "artifact": str(artifact)}))
        with ServerThread(app) as gw:
            c = client(gw)
            easy, hard = ask(c, easy_q), ask(c, hard_q)
            forced = ask(c, "Say hello to person 1", extra_headers={"x-truecost-route": "strong"})
            assert easy.headers["x-truecost-model"] == "gpt-6-luna"
            assert hard.headers["x-truecost-model"] == "gpt-6.2-sol"
            assert forced.headers["x-truecost-model"] == "gpt-6.2-sol"
            (e,) = ledger_events(app, easy.headers["x-request-id"])
            assert e.outcome == "routed" and e.avoided_cost > 0
        # Holding the calibrated strong-call share instead of the threshold
        with pytest.raises(ConfigError, match="route.hold"):
            conf({"strategy": "trained", "artifact": str(artifact), "hold": "budget"})
        with pytest.raises(ConfigError, match="share_window"):
            conf({"strategy": "trained", "artifact": str(artifact), "hold": "share", "share_window": 3})
        app = build(conf({"strategy": "trained", "artifact": str(artifact), "hold": "share", "share_window": 60}))
        held = app.state.pipeline.routers["routed"].router
        assert held.hold is not None and held.hold.share == out["strong_share"] and held.hold.window == 60
        with ServerThread(app) as gw:
            c = client(gw)
            served = [
                ask(c, f"Say hello to person {rng.randint(1000, 9999)}").headers["x-truecost-model"] for _ in range(130)
            ]
        # every request is easy: the calibrated threshold (while the first window fills) sends none
        # up; once 60 scores are seen, the held share sends about half of them
        assert served[:60].count("gpt-6.2-sol") == 0
        share = served[60:].count("gpt-6.2-sol") / 70
        assert abs(share - out["strong_share"]) <= 0.2, (share, out["strong_share"])
        # A quality target ranks by predicted gain per extra dollar (priced at route time).
        per_dollar = tmp_path / "per_dollar.npz"
        res = CliRunner().invoke(
            cli,
            [
                "router",
                "calibrate",
                str(data),
                "--weak",
                "gpt-3.5-turbo-1106",
                "--strong",
                "gpt-4-1106-preview",
                "--kind",
                "trained",
                "--min-quality",
                "0.95",
                "--out",
                str(per_dollar),
            ],
            catch_exceptions=False,
        )
        out = json.loads(res.output)
        assert out["order"] == "gain-per-dollar" and out["test"]["quality_vs_strong"] >= 0.9
        app = build(conf({"strategy": "trained", "artifact": str(per_dollar)}))
        router = app.state.pipeline.routers["routed"].router
        assert router.extra_cost is not None
        with ServerThread(app) as gw:
            c = client(gw)
            assert ask(c, easy_q).headers["x-truecost-model"] == "gpt-6-luna"
            assert ask(c, hard_q).headers["x-truecost-model"] == "gpt-6.2-sol"
            # the same question behind a long context costs far more on the strong model: not worth it
            pricey = ask(c, hard_q, system="Background. " * 20000)
            assert pricey.headers["x-truecost-model"] == "gpt-6-luna"
        # a model without a price cannot be ranked by gain per dollar: refused at startup, by name
        unpriced = parse_config(
            {
                "ledger": str(tmp_path / "gw2.db"),
                "upstreams": {"mock": {"base_url": upstream.url + "/v1"}},
                "models": {
                    "routed": {
                        "candidates": [
                            {"upstream": "mock", "model": "gpt-6.2-sol"},
                            {"upstream": "mock", "model": "house-model-7b"},
                        ],
                        "route": {
                            "weak": "house-model-7b",
                            "strong": "gpt-6.2-sol",
                            "strategy": "trained",
                            "artifact": str(per_dollar),
                        },
                    }
                },
                "keys": [{"name": "team-a", "key_sha256": hash_key(KEY)}],
            }
        )
        with pytest.raises(ConfigError, match="'house-model-7b' has no price in force"):
            build(unpriced)
        # a price that disappears after startup keeps the strong model, and says why
        router.extra_cost = lambda request: None
        from truecost.routing.decision import RouteRequest

        d = router.route(RouteRequest("Say hello to person 9001"))
        assert d.model == "gpt-6.2-sol" and "unknown" in d.reason
    # an answer-aware (cascade) artifact cannot route before the call: a clear error at startup
    from truecost.routing.artifacts import write_artifact
    from truecost.routing.scorer import Example, FeatureSpec, GapScorer

    cascade = write_artifact(
        GapScorer(FeatureSpec(embed=False, answer=True)).fit(
            [Example(f"q{i}", float(i % 2), {}, f"the answer is {i}") for i in range(20)]
        ),
        tmp_path / "cascade.npz",
    )
    with ServerThread(make_app()) as upstream:
        with pytest.raises(ConfigError, match="needs the weak model's answer"):
            build(conf({"strategy": "trained", "artifact": str(cascade), "threshold": 0.5}))


def test_logprob_cascade_accepts_confident_weak_answers_and_escalates_the_rest(tmp_path):
    from truecost.errors import ConfigError

    def conf(strong_wire="gpt-6.2-sol", cache=None, **route):
        return parse_config(
            {
                "ledger": str(tmp_path / "gw.db"),
                "upstreams": {"mock": {"base_url": upstream.url + "/v1", "max_retries": 0}},
                **({"cache": cache} if cache else {}),
                "models": {
                    "cascade": {
                        "candidates": [
                            {"upstream": "mock", "model": "gpt-6.2-sol", "upstream_model": strong_wire},
                            {"upstream": "mock", "model": "gpt-6-luna"},
                        ],
                        "route": {"strategy": "cascade", "weak": "gpt-6-luna", "strong": "gpt-6.2-sol", **route},
                    }
                },
                "keys": [{"name": "team-a", "key_sha256": hash_key(KEY)}],
            }
        )

    with ServerThread(make_app()) as upstream:
        for bad in ({}, {"min_mean_logprob": 0.5}, {"min_mean_logprob": "high"}):
            with pytest.raises(ConfigError, match="min_mean_logprob"):
                conf(**bad)
        app = build(conf(min_mean_logprob=-0.5))
        with ServerThread(app) as gw:
            c = client(gw)
            easy = c.chat.completions.with_raw_response.create(
                model="cascade", messages=[{"role": "user", "content": "refund?"}]
            )
            assert easy.headers["x-truecost-model"] == "gpt-6-luna"
            assert easy.parse().choices[0].logprobs is None  # asked for by the cascade, not by the client
            (e,) = ledger_events(app, easy.headers["x-request-id"])
            assert e.outcome == "routed" and e.avoided_cost > 0 and e.details["route_strategy"] == "cascade"

            hard = c.chat.completions.with_raw_response.create(
                model="cascade", messages=[{"role": "user", "content": "a hard one"}]
            )
            assert hard.headers["x-truecost-model"] == "gpt-6.2-sol"
            weak, strong = sorted(
                ledger_events(app, hard.headers["x-request-id"]), key=lambda ev: ev.service != "gpt-6-luna"
            )
            assert weak.outcome == "escalated" and weak.cost > 0  # the weak call is paid all the same
            assert "escalate" in weak.details["route_reason"] and strong.service == "gpt-6.2-sol"
            assert Decimal(hard.headers["x-truecost-cost-usd"]) == weak.cost + strong.cost

            chunks = list(
                c.chat.completions.create(
                    model="cascade",
                    messages=[{"role": "user", "content": "a hard one"}],
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
            assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices).startswith("The refund")
            assert chunks[-1].usage.completion_tokens == 30  # the tokens really spent, not a cache hit's zero
    with ServerThread(make_app()) as upstream:  # the escalation fails: the weak answer beats an error
        app = build(
            conf(
                strong_wire="fail-500",
                min_mean_logprob=-0.5,
                cache={"enabled": True, "embedder": "static", "policy": "fixed:0.97"},
            )
        )
        with ServerThread(app) as gw:
            for _ in range(2):  # served, but never cached: the cascade declined it
                r = client(gw).chat.completions.with_raw_response.create(
                    model="cascade", messages=[{"role": "user", "content": "a hard one"}]
                )
                assert r.headers["x-truecost-model"] == "gpt-6-luna" and r.parse().choices[0].message.content
                assert r.headers["x-truecost-cache"] == "miss"
            for expected in ("miss", "hit"):  # an accepted weak answer is cached like any other
                r = client(gw).chat.completions.with_raw_response.create(
                    model="cascade", messages=[{"role": "user", "content": "refund?"}]
                )
                assert r.headers["x-truecost-cache"] == expected


def test_a_shared_budget_store_is_called_off_the_event_loop(stack):
    import asyncio

    gw, app, _ = stack
    calls = []

    class SharedGuard:  # stands in for PostgresBudgetGuard: network I/O on every admit and settle
        remote = True

        def take_alerts(self):
            return []

        def _where(self):
            try:
                asyncio.get_running_loop()
                return "event loop"
            except RuntimeError:
                return "worker thread"

        def admit(self, attribution, estimate, **kw):
            calls.append(("admit", self._where()))
            return [("tenant", "acme", "day")]

        def settle(self, keys, estimate, actual):
            calls.append(("settle", self._where()))

    original = app.state.pipeline.budgets
    app.state.pipeline.budgets = SharedGuard()
    try:
        client(gw).chat.completions.create(model="support", messages=[{"role": "user", "content": "refund?"}])
        list(
            client(gw).chat.completions.create(
                model="support", messages=[{"role": "user", "content": "hi"}], stream=True
            )
        )
        # a stream settles after its last chunk has gone out: the client can see the end first
        deadline = time.monotonic() + 5
        while len(calls) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        app.state.pipeline.budgets = original
    assert calls and {where for _op, where in calls} == {"worker thread"}
    assert [op for op, _w in calls] == ["admit", "settle", "admit", "settle"]
