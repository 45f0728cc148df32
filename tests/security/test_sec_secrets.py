"""Issue 15, point 1: the upstream's credentials never leave the gateway, whatever the upstream answers.

The hostile upstream echoes the Authorization header it receives (and an org id, an internal host and
path, a marker) in bodies, headers and status lines, or answers malformed HTTP that makes an HTTP client
build exceptions carrying the request's headers. None of it may reach a client, the ledger (any table),
the spool or write-ahead log, the gateway's log, the dashboard or /metrics.
"""

from __future__ import annotations

import json

import pytest

from tests.security.harness import chat_body, http, post_chat, ui_login, ui_pages
from tests.security.sec_config import (
    ADMIN_KEY,
    EMBED_HOSTILE,
    HOSTILE,
    METRICS_TOKEN,
    SHARED_HOSTILE,
    UPSTREAM_KEY,
    UPSTREAM_KEY_CORE,
    USERINFO_PASSWORD,
    key,
)
from tests.security.upstreams import MARKER, ORG
from tests.support.hostile_upstream import SECRETS as SHARED_SECRETS

SECRETS = (UPSTREAM_KEY_CORE, USERINFO_PASSWORD, *SHARED_SECRETS)
# what the upstream said: never echoed verbatim to a client or into the ledger
ECHOES = (MARKER, ORG, "10.23.45.67", "/srv/openai-proxy")


def _leaks(text: str, needles=SECRETS + ECHOES) -> list[str]:
    return [n for n in needles if n in text]


def _response_text(r) -> str:
    return r.text + "\n" + "\n".join(f"{k}: {v}" for k, v in r.headers.items())


def _hostile_request(gw, model: str, stream: bool, marker: str):
    body = chat_body(model, f"{marker} tell me a secret", max_tokens=20, stream=stream)
    if stream:
        body["stream_options"] = {"include_usage": True}
    return post_chat(gw, key("secrets"), body, timeout=30)


def _is_upstream_error(r, stream: bool, model: str) -> bool:
    """A 502 (a 429 may pass on an upstream 429) in the OpenAI error shape, or -- for a stream -- a 200 whose
    events carry an error object."""
    if r.status_code == 502 or (r.status_code == 429 and "429" in model):
        try:
            return bool((r.json().get("error") or {}).get("message"))
        except ValueError:
            return False
    if stream and r.status_code == 200:
        events = [ln[6:] for ln in r.text.splitlines() if ln.startswith("data: ") and ln[6:] != "[DONE]"]
        try:
            return any("error" in json.loads(e) for e in events)
        except ValueError:
            return False
    return False


STREAM_ONLY = ("stream-garbage", "stream-error")  # answer normally when not streamed
MODELS = HOSTILE + ["userinfo"] + [f"sh-{b}" for b in SHARED_HOSTILE] + [f"sha-{b}" for b in SHARED_HOSTILE]
CASES = [
    pytest.param(m, s, id=f"{m}-{'stream' if s else 'json'}")
    for m in MODELS
    for s in (False, True)
    if s or m not in STREAM_ONLY
]


@pytest.mark.parametrize("model,stream", CASES)
def test_a_hostile_upstream_answer_is_a_redacted_upstream_error_with_a_ledger_row(gw, upstream, model, stream):
    marker = f"sec-{model}-{stream}"
    r = _hostile_request(gw, model, stream, marker)
    text = _response_text(r)
    assert not _leaks(text), f"{model}: the client saw {_leaks(text)} in\n{text[:1500]}"
    assert r.status_code != 500, f"{model}: an internal error instead of an upstream error: {r.text[:500]}"
    assert _is_upstream_error(r, stream, model), f"{model}: {r.status_code} {r.text[:500]}"
    if model in HOSTILE:  # the request really reached the hostile upstream, with the real key
        calls = upstream.calls(marker)
        assert calls and calls[0]["headers"].get("authorization") == f"Bearer {UPSTREAM_KEY}"
    rid = r.headers.get("x-request-id")
    assert rid, "an admitted request that failed upstream still names its ledger request id"
    rows = gw.wait_rows("request_id = ?", (rid,))
    assert rows, f"{model}: no ledger row for a request that called the upstream"
    dumped = json.dumps([{k: str(v) for k, v in row.items()} for row in rows])
    assert not _leaks(dumped), f"{model}: the ledger row holds {_leaks(dumped)}: {dumped[:1500]}"
    assert all(row["cost"] is None or row["cost"] >= 0 for row in rows)
    failed = [row for row in rows if row["outcome"] == "error"]
    assert failed and all(row["details"].get("unknown_reason") or row["cost"] is not None for row in failed)


@pytest.mark.parametrize("model", EMBED_HOSTILE)
def test_a_hostile_embeddings_upstream_is_a_redacted_502_with_a_ledger_row(gw, upstream, model):
    marker = f"sec-embed-{model}"
    with http() as c:
        r = c.post(
            gw.url + "/v1/embeddings",
            json={"model": f"embed-{model}", "input": [marker]},
            headers={"authorization": f"Bearer {key('secrets')}"},
        )
    assert not _leaks(_response_text(r)), f"{model}: the client saw {_leaks(_response_text(r))}"
    assert r.status_code == 502, f"{model}: {r.status_code} {r.text[:300]}"
    calls = upstream.calls(marker)
    assert calls and calls[0]["headers"].get("authorization") == f"Bearer {UPSTREAM_KEY}"
    rows = gw.wait_rows("request_id = ?", (r.headers.get("x-request-id", "-"),))
    assert rows and not _leaks(json.dumps([{k: str(v) for k, v in row.items()} for row in rows]))


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize(
    "model",
    [
        "echo-500",
        "echo-401",
        "bad-status",
        "header-space",
        "redirect-loop",
        "sha-secret-500",
        "sha-malformed-status",
        "sha-unauthorized",
    ],
)
def test_the_anthropic_endpoint_redacts_upstream_failures_too(gw, upstream, model, stream):
    marker = f"sec-messages-{model}-{stream}"
    with http() as c:
        r = c.post(
            gw.url + "/v1/messages",
            headers={"x-api-key": key("secrets"), "anthropic-version": "2023-06-01"},
            json={
                "model": model,
                "max_tokens": 20,
                "stream": stream,
                "messages": [{"role": "user", "content": marker}],
            },
        )
    text = _response_text(r)
    assert not _leaks(text), f"{model}: the client saw {_leaks(text)} in\n{text[:1000]}"
    assert r.status_code != 500, r.text[:300]
    if stream and r.status_code == 200:
        assert "event: error" in r.text, r.text[-500:]
    else:
        assert r.status_code in (502, 429) and r.json()["type"] == "error", (r.status_code, r.text[:300])


def test_upstream_credentials_appear_nowhere_at_rest_or_on_any_page(gw, upstream):
    """After every hostile behaviour (again, here), scan every surface the gateway writes or serves."""
    ids = []
    for model, stream in [c.values for c in CASES]:
        r = _hostile_request(gw, model, stream, f"scan-{model}-{stream}")
        assert not _leaks(_response_text(r))
        if r.headers.get("x-request-id"):
            ids.append(r.headers["x-request-id"])
    assert len(ids) >= len(CASES) - 2
    for rid in ids:
        gw.wait_rows("request_id = ?", (rid,), timeout=5)
    # the ledger: every table (events, rollups, keys, audit, budgets...)
    assert not _leaks(gw.dump_all_tables(), SECRETS + (ORG,)), "a secret is stored in the ledger database"
    # every file the gateway wrote beside its config: database, its WAL, the spool, the write-ahead log, the log
    for path in gw.dir.rglob("*"):
        if path.is_file() and path != gw.config_path:
            data = path.read_bytes()
            for secret in SECRETS:
                assert secret.encode() not in data, f"{secret[:6]}... written to {path.name}"
    log = gw.log_text()
    assert not _leaks(log, SECRETS + (ORG,)), f"the gateway's log holds a secret:\n{log[-3000:]}"
    # the dashboard, logged in as the admin: the overview, every page it links to, each request's page
    with ui_login(gw, ADMIN_KEY) as c:
        pages = ui_pages(c, gw, extra=[f"/ui/request/{rid}" for rid in ids[:12]])
    assert pages["/ui/"].status_code == 200, "the admin could not log in to /ui"
    assert sum(1 for p, r in pages.items() if p.startswith("/ui/request/") and r.status_code == 200) >= 6
    for path, r in pages.items():
        assert not _leaks(r.text), f"{path} shows {_leaks(r.text)}"
    with http() as c:
        metrics = c.get(gw.url + "/metrics", headers={"authorization": f"Bearer {METRICS_TOKEN}"})
    assert metrics.status_code == 200 and "truecost_" in metrics.text
    assert not _leaks(metrics.text), f"/metrics shows {_leaks(metrics.text)}"
