"""The gateway's trust model over HTTP, in process: who pays, budgets that hold and remember, every admitted
request settled exactly once, and a ledger row for every call the provider may bill."""

from tests.support.requires import need
import json
import re
import socket
import time
from decimal import Decimal

import httpx
import pytest

from tests.support.mock_upstream import ServerThread, make_app
from truecost.gateway.app import build
from truecost.gateway.config import hash_key, parse_config
from truecost.ledger import LedgerFilter

openai = need("openai", "openai")
KEY, BUDGETED, FREE_HEADERS, READER = "sk-trust-a", "sk-trust-budget", "sk-trust-platform", "sk-trust-other"
JOINER = "sk-trust-sdk-service"
MSG = [{"role": "user", "content": "refund?"}]


def _config(upstream_url, ledger, **extra):
    doc = {
        "ledger": str(ledger),
        "upstreams": {
            "mock": {"base_url": upstream_url + "/v1", "first_byte_timeout": 2.0, "idle_timeout": 1.0, "max_retries": 0}
        },
        "models": {
            "support": {"candidates": [{"upstream": "mock", "model": "gpt-6-luna"}]},
            "dear": {"candidates": [{"upstream": "mock", "model": "gpt-6.2-sol"}]},
            "drip": {"candidates": [{"upstream": "mock", "model": "gpt-6-luna", "upstream_model": "drip"}]},
            "float-usage": {
                "candidates": [{"upstream": "mock", "model": "gpt-6-luna", "upstream_model": "float-usage"}]
            },
            "cached-over": {
                "candidates": [{"upstream": "mock", "model": "gpt-6-luna", "upstream_model": "cached-over"}]
            },
            "bad-key": {"candidates": [{"upstream": "mock", "model": "gpt-6-luna", "upstream_model": "fail-401"}]},
            "all-fail": {"candidates": [{"upstream": "mock", "model": "gpt-6-luna", "upstream_model": "fail-500"}]},
            "mystery": {"candidates": [{"upstream": "mock", "model": "mystery-model-9"}]},
            "embed": {"candidates": [{"upstream": "mock", "model": "text-embedding-3-small"}]},
        },
        "keys": [
            {"name": "a", "key_sha256": hash_key(KEY), "cost_center": "cx", "tenant": "acme"},
            {"name": "budgeted", "key_sha256": hash_key(BUDGETED), "cost_center": "small", "tenant": "b"},
            {
                "name": "platform",
                "key_sha256": hash_key(FREE_HEADERS),
                "cost_center": "platform",
                "allow_attribution_headers": ["cost_center"],
            },
            {"name": "other", "key_sha256": hash_key(READER), "cost_center": "ops", "tenant": "globex"},
            {
                "name": "sdk",
                "key_sha256": hash_key(JOINER),
                "cost_center": "bot",
                "tenant": "acme",
                "allow_attribution_headers": ["request_id"],
            },
        ],
        "budgets": [{"cost_center": "small", "period": "day", "limit_usd": "0.0002"}],
    }
    doc.update(extra)
    return parse_config(doc)


@pytest.fixture
def upstream():
    with ServerThread(make_app()) as up:
        yield up


@pytest.fixture
def gw(upstream, tmp_path):
    app = build(_config(upstream.url, tmp_path / "gw.db"))
    with ServerThread(app) as server:
        yield server, app


def _client(server, key=KEY):
    return openai.OpenAI(api_key=key, base_url=server.url + "/v1", max_retries=0)


def _rows(app, request_id):
    app.state.writer.flush()
    return app.state.store.query(LedgerFilter(request_id=request_id))


def _in_flight(app, field, value):
    return app.state.pipeline.budgets.in_flight(field, value, "day")


def test_attribution_headers_never_change_who_pays(gw):
    server, app = gw
    raw = _client(server).chat.completions.with_raw_response.create(
        model="support",
        messages=MSG,
        extra_headers={
            "x-truecost-cost-center": "ops",
            "x-truecost-tenant": "globex",
            "x-truecost-team": "evil",
            "x-truecost-feature": "faq",
        },
    )
    (e,) = _rows(app, raw.headers["x-request-id"])
    assert (e.attribution.cost_center, e.attribution.tenant, e.attribution.team) == ("cx", "acme", None)
    assert e.attribution.feature == "faq"  # feature is always the client's to say
    assert 'truecost_attribution_headers_ignored_total{field="cost_center"} 1' in app.state.pipeline.metrics.render()


def test_a_key_may_be_allowed_to_bill_another_cost_center(gw):
    server, app = gw
    raw = _client(server, FREE_HEADERS).chat.completions.with_raw_response.create(
        model="support", messages=MSG, extra_headers={"x-truecost-cost-center": "search", "x-truecost-tenant": "x"}
    )
    (e,) = _rows(app, raw.headers["x-request-id"])
    assert e.attribution.cost_center == "search" and e.attribution.tenant is None  # tenant not allowed for it


def test_an_exhausted_budget_cannot_be_dodged_with_headers(gw):
    server, app = gw
    c = _client(server, BUDGETED)
    refused = None
    for _ in range(20):
        try:
            c.chat.completions.create(model="support", messages=MSG, max_tokens=100)
        except openai.RateLimitError as exc:
            refused = exc
            break
    assert refused is not None and refused.body["code"] == "budget_exceeded"
    for header in ({"x-truecost-cost-center": "ops"}, {"x-truecost-cost-center": ""}, {"x-truecost-tenant": "zz"}):
        with pytest.raises(openai.RateLimitError):
            c.chat.completions.create(model="support", messages=MSG, max_tokens=100, extra_headers=header)
    app.state.writer.flush()
    (row,) = app.state.store.aggregate([], LedgerFilter(attribution=(("cost_center", "small"),)))
    assert row.cost <= Decimal("0.0002")
    assert _in_flight(app, "cost_center", "small") == 0


def test_budget_spend_is_remembered_across_a_restart(upstream, tmp_path):
    config = _config(upstream.url, tmp_path / "gw.db")
    app = build(config)
    with ServerThread(app) as server:
        c = _client(server, BUDGETED)
        c.chat.completions.create(model="support", messages=MSG, max_tokens=100)
        c.chat.completions.create(model="support", messages=MSG, max_tokens=100)
        spent = app.state.pipeline.budgets.spent("cost_center", "small", "day")
    assert spent > 0
    app2 = build(config)  # a new process on the same ledger
    assert app2.state.pipeline.budgets.spent("cost_center", "small", "day") == spent
    with ServerThread(app2) as server:
        c = _client(server, BUDGETED)
        with pytest.raises(openai.RateLimitError):
            for _ in range(20):
                c.chat.completions.create(model="support", messages=MSG, max_tokens=100)
        app2.state.writer.flush()
        (row,) = app2.state.store.aggregate([], LedgerFilter(attribution=(("cost_center", "small"),)))
        assert row.cost <= Decimal("0.0002")


def test_the_estimate_counts_n_tools_and_the_response_format(gw):
    server, app = gw
    from truecost.gateway.admission import estimate

    tracker = app.state.pipeline.tracker
    plain = {"model": "x", "messages": MSG, "max_tokens": 100}
    tools = [{"type": "function", "function": {"name": f"f{i}", "description": "d" * 400}} for i in range(20)]
    base = estimate(tracker, plain, ["gpt-6-luna"]).cost
    assert estimate(tracker, {**plain, "n": 5}, ["gpt-6-luna"]).cost > 4 * base
    assert estimate(tracker, {**plain, "tools": tools}, ["gpt-6-luna"]).cost > 3 * base
    assert (
        estimate(
            tracker,
            {**plain, "response_format": {"type": "json_schema", "json_schema": {"d": "x" * 9000}}},
            ["gpt-6-luna"],
        ).cost
        > 2 * base
    )
    no_limit = estimate(tracker, {"model": "x", "messages": MSG}, ["gpt-6-luna"]).cost
    assert no_limit > 50 * base  # without max_tokens the model may write thousands of tokens
    # the dearest candidate prices a fallback alias
    assert (
        estimate(tracker, plain, ["gpt-6-luna", "gpt-6.2-sol"]).cost == estimate(tracker, plain, ["gpt-6.2-sol"]).cost
    )


def test_an_unpriced_model_is_refused_under_a_hard_budget_unless_allowed(upstream, tmp_path):
    budgets = [{"cost_center": "cx", "period": "day", "limit_usd": "1"}]
    app = build(_config(upstream.url, tmp_path / "a.db", budgets=budgets))
    with ServerThread(app) as server:
        with pytest.raises(openai.PermissionDeniedError) as info:
            _client(server).chat.completions.create(model="mystery", messages=MSG, max_tokens=10)
        assert info.value.body["code"] == "unpriced_model" and "mystery-model-9" in info.value.message
    allow = [{**budgets[0], "unpriced": "allow"}]
    app = build(_config(upstream.url, tmp_path / "b.db", budgets=allow))
    with ServerThread(app) as server:
        assert _client(server).chat.completions.create(model="mystery", messages=MSG, max_tokens=10).choices


def test_embeddings_go_through_the_same_admission(gw):
    server, app = gw
    c = _client(server, BUDGETED)
    with pytest.raises(openai.RateLimitError):
        for _ in range(400):
            c.embeddings.create(model="embed", input=["x" * 4000] * 8)
    assert _in_flight(app, "cost_center", "small") == 0


def test_the_client_request_id_never_becomes_the_ledger_id(gw):
    server, app = gw
    ids = []
    for key in (KEY, READER):
        raw = _client(server, key).chat.completions.with_raw_response.create(
            model="support", messages=MSG, extra_headers={"x-request-id": "shared-id-1"}
        )
        ids.append(raw.headers["x-request-id"])
        (e,) = _rows(app, raw.headers["x-request-id"])
        assert e.details["client_request_id"] == "shared-id-1"
    assert ids[0] != ids[1] and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert _rows(app, "shared-id-1") == []
    assert int(ids[0], 16) - int(ids[1], 16) not in (-1, 1)


@pytest.mark.parametrize("alias", ["float-usage", "cached-over"])
def test_malformed_upstream_usage_still_answers_and_is_recorded_unknown(gw, alias):
    server, app = gw
    raw = _client(server).chat.completions.with_raw_response.create(model=alias, messages=MSG)
    assert raw.parse().choices[0].message.content
    assert raw.headers["x-truecost-cost-usd"] == "unknown"
    (e,) = _rows(app, raw.headers["x-request-id"])
    assert e.cost is None and "malformed usage" in e.details["unknown_reason"]
    assert e.details["raw_usage"]["prompt_tokens"] in (120.5, 120)


def test_an_upstream_401_is_the_gateways_credentials_not_the_clients(gw):
    server, _ = gw
    with pytest.raises(openai.APIStatusError) as info:
        _client(server).chat.completions.create(model="bad-key", messages=MSG)
    assert info.value.status_code == 502 and info.value.body["code"] == "upstream_auth_failed"
    assert "sk-upstr" not in json.dumps(info.value.body)


def test_a_hang_up_is_charged_for_the_prompt_and_what_was_streamed(gw):
    server, app = gw
    prompt = "please explain " * 1500  # ~22 KB
    body = {"model": "drip", "stream": True, "max_tokens": 50, "messages": [{"role": "user", "content": prompt}]}
    with httpx.Client(base_url=server.url, timeout=10) as http:
        with http.stream("POST", "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {KEY}"}) as r:
            request_id = r.headers["x-request-id"]
            for _line in r.iter_lines():
                break  # one chunk, then hang up
    deadline = time.time() + 10
    rows = []
    while time.time() < deadline and not rows:
        rows = [e for e in _rows(app, request_id) if e.step == "generate"]
        time.sleep(0.1)
    (e,) = rows
    assert e.details["client_disconnected"] and e.details["usage_estimated_from_chunks"]
    assert e.details["tokens"]["input"] >= len(json.dumps(body["messages"])) // 4
    assert e.cost > Decimal("0.0005")  # 5.6k prompt tokens at gpt-6-luna's $0.10/1M, not just one chunk


def test_every_admission_is_settled_after_failures_hang_ups_and_bad_bodies(upstream, tmp_path):
    budgets = [{"cost_center": "cx", "period": "day", "limit_usd": "5"}]
    app = build(_config(upstream.url, tmp_path / "s.db", budgets=budgets))
    with ServerThread(app) as server:
        c = _client(server)
        with pytest.raises(openai.APIStatusError):
            c.chat.completions.create(model="all-fail", messages=MSG, max_tokens=10)
        bad = b'{"model": "support", "messages": [{"role": "user", "content": "\\ud800"}]}'
        r = httpx.post(
            server.url + "/v1/chat/completions",
            content=bad,
            headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"},
        )
        assert r.status_code == 400
        for _ in range(3):  # hang-ups at the socket level, mid-stream
            s = socket.create_connection(("127.0.0.1", server.port))
            payload = json.dumps({"model": "drip", "stream": True, "max_tokens": 5, "messages": MSG}).encode()
            s.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                b"authorization: Bearer "
                + KEY.encode()
                + b"\r\ncontent-length: "
                + str(len(payload)).encode()
                + b"\r\n\r\n"
                + payload
            )
            s.recv(100)
            s.close()
        c.chat.completions.create(model="support", messages=MSG, max_tokens=10)
        deadline = time.time() + 10
        while time.time() < deadline and _in_flight(app, "cost_center", "cx") != 0:
            time.sleep(0.1)
        assert _in_flight(app, "cost_center", "cx") == 0
        app.state.writer.flush()
        (row,) = app.state.store.aggregate([], LedgerFilter(attribution=(("cost_center", "cx"),)))
        assert app.state.pipeline.budgets.spent("cost_center", "cx", "day") == row.cost


def test_otlp_spans_posted_to_the_gateway_are_priced_and_attributed_to_the_key(gw):
    from tests.unit.integrations.spans import json_body, json_span

    server, app = gw
    genai = {
        "gen_ai.system": "openai",
        "gen_ai.request.model": "gpt-6-luna",
        "gen_ai.usage.input_tokens": 1000,
        "gen_ai.usage.output_tokens": 100,
        "truecost.cost_center": "ops",
    }
    body = json_body([json_span(genai, name="chat gpt-6-luna")])
    ct = {"content-type": "application/json"}
    assert httpx.post(server.url + "/v1/traces", content=body, headers=ct).status_code == 401  # keys are on
    r = httpx.post(server.url + "/v1/traces", content=body, headers={**ct, "authorization": f"Bearer {KEY}"})
    assert r.status_code == 200
    app.state.writer.flush()
    rows = [e for e in app.state.store.query() if e.source == "otlp"]
    assert len(rows) == 1 and rows[0].cost > 0
    assert rows[0].attribution.cost_center == "cx" and rows[0].attribution.tenant == "acme"  # pinned by the key


def test_the_gateways_events_say_gateway_and_spans_posted_to_it_say_otlp(gw):
    from tests.unit.integrations.spans import json_body, json_span

    server, app = gw
    raw = _client(server).chat.completions.with_raw_response.create(model="support", messages=MSG)
    rows = _rows(app, raw.headers["x-request-id"])
    assert rows and {e.source for e in rows} == {"gateway"} and all("source" not in e.details for e in rows)
    genai = {"gen_ai.system": "openai", "gen_ai.request.model": "gpt-6-luna", "gen_ai.usage.input_tokens": 10}
    httpx.post(
        server.url + "/v1/traces",
        content=json_body([json_span(genai)]),
        headers={"content-type": "application/json", "authorization": f"Bearer {KEY}"},
    ).raise_for_status()
    app.state.writer.flush()
    assert {r.keys[0]: r.events for r in app.state.store.aggregate(["source"])} == {"gateway": len(rows), "otlp": 1}


def test_only_a_key_granted_request_id_joins_the_request_it_opened(gw):
    server, app = gw
    opened = "0f" * 16  # the id the SDK gave the request it opened
    raw = _client(server, JOINER).chat.completions.with_raw_response.create(
        model="support", messages=MSG, extra_headers={"x-request-id": opened, "x-truecost-cost-center": "ops"}
    )
    assert raw.headers["x-request-id"] == opened
    (e,) = _rows(app, opened)
    assert e.attribution.cost_center == "bot"  # joining a request grants nothing else
    raw = _client(server, READER).chat.completions.with_raw_response.create(
        model="support", messages=MSG, extra_headers={"x-request-id": opened}
    )
    assert raw.headers["x-request-id"] != opened and len(_rows(app, opened)) == 1


def test_a_revoked_key_loses_its_dashboard_session(upstream, tmp_path):
    admin = "sk-trust-admin"
    config = _config(upstream.url, tmp_path / "d.db", admin_key_sha256=hash_key(admin))
    app = build(config)
    with ServerThread(app) as server:
        made = httpx.post(
            server.url + "/admin/keys",
            headers={"authorization": f"Bearer {admin}"},
            json={"name": "viewer", "tenant": "acme", "cost_center": "cx", "scopes": ["read"]},
        )
        assert made.status_code == 201
        with httpx.Client(base_url=server.url, follow_redirects=False) as browser:
            assert browser.post("/ui/login", data={"key": made.json()["secret"]}).status_code in (302, 303)
            assert browser.get("/ui/").status_code == 200
            r = httpx.post(
                server.url + "/admin/keys/viewer/revoke",
                headers={"authorization": f"Bearer {admin}"},
                json={"reason": "left the team"},
            )
            assert r.status_code == 200
            assert browser.get("/ui/").status_code == 303  # back to the login page


def test_an_attribution_header_the_ledger_cannot_store_is_a_400_before_anything_is_spent(gw):
    server, app = gw
    for headers in ({"x-truecost-feature": "f" * 600}, {"x-truecost-tags": "k=" + "v" * 600}):
        r = httpx.post(
            server.url + "/v1/chat/completions",
            json={"model": "support", "messages": MSG},
            headers={"authorization": f"Bearer {KEY}", **headers},
        )
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_attribution"
    assert _in_flight(app, "cost_center", "small") == 0
