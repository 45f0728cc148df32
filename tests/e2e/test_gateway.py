"""The gateway over HTTP, driven by the official openai SDK, against a loopback mock upstream: the core
request path (pricing header = ledger, streaming, errors, keys, budgets, metrics, embeddings, Anthropic,
cache, admin). Upstream faults are in test_gateway_faults.py, routing in test_gateway_routing.py."""

import time
from decimal import Decimal

import httpx
import pytest

from tests.support.gateway_stack import KEY, REVOKED, cached_stack, client, ledger_events, stack  # noqa: F401
from tests.support.mock_upstream import ServerThread, make_app
from tests.support.requires import need
from truecost.gateway.app import build
from truecost.gateway.config import parse_config

openai = need("openai", "openai")


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
