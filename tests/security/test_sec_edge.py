"""Issue 15, point 8: hardening at the edge -- hostile bodies are 400/413 before any upstream call; upstream
protocol abuse becomes a 502; header size and header read time are bounded; a stream times out on idle
gaps, not on its total length."""

from __future__ import annotations

import json
import re
import socket
import time

import pytest

from tests.security.harness import chat_body, http, post_chat, unique
from tests.security.sec_config import key


def _no_500(r) -> None:
    assert r.status_code != 500, f"an internal error: {r.text[:300]}"


def _refused(gw, r, cid: str) -> None:
    """A 400 in the OpenAI error shape, and nothing called or billed for it in the ledger."""
    _no_500(r)
    assert r.status_code == 400 and r.json()["error"]["message"], f"{r.status_code} {r.text[:300]}"
    time.sleep(0.3)  # past the ledger writer's flush interval
    assert not [row for row in gw.client_rows(cid) if row["step"] == "generate"], "a refused request was billed"


def test_a_100k_deep_json_body_is_a_400_not_a_crash(gw, upstream):
    depth = 100_000
    raw = (
        b'{"model": "chat", "max_tokens": 5, "messages": [{"role": "user", "content": "deep-json"}], "x": '
        + b"[" * depth
        + b"]" * depth
        + b"}"
    )
    cid = unique("deep")
    r = post_chat(gw, key("edge"), None, raw=raw, headers={"x-request-id": cid})
    _refused(gw, r, cid)
    shallow = (
        b'{"model": "chat", "messages": [{"role": "user", "content": "deep-json-65"}], "x": '
        + b"[" * 65
        + b"]" * 65
        + b"}"
    )
    r = post_chat(gw, key("edge"), None, raw=shallow)  # past max_json_depth 64
    assert r.status_code == 400, r.text[:300]
    assert not upstream.calls("deep-json")
    assert gw.alive() and post_chat(gw, key("edge"), chat_body("chat", "after-deep", max_tokens=5)).status_code == 200


@pytest.mark.parametrize(
    "marker,raw",
    [
        ("lone-1", b'{"model": "chat", "messages": [{"role": "user", "content": "lone-1 \\ud800"}]}'),
        ("lone-2", b'{"model": "chat", "messages": [{"role": "user", "content": "lone-2 \\udfff tail"}]}'),
        ("lone-3", b'{"model": "chat", "messages": [{"role": "user", "content": "lone-3", "name": "\\ud83d"}]}'),
        ("lone-4", b'{"model": "chat", "messages": [{"role": "user", "content": "lone-4"}], "user": "\\udc00"}'),
        (
            "lone-5",
            b'{"model": "chat", "messages": [{"role": "user", "content": [{"type": "text", "text": "lone-5 \\ud800"}]}]}',
        ),
        ("lone-6", b'{"model": "chat\\ud800", "messages": [{"role": "user", "content": "lone-6"}]}'),
        ("lone-7", b'{"model": "chat", "messages": [{"role": "user", "content": "lone-7"}], "\\ud800": 1}'),
    ],
    ids=["content", "low", "name", "user", "part", "model", "field-name"],
)
def test_a_lone_surrogate_is_a_400_before_any_upstream_call(gw, upstream, marker, raw):
    cid = unique(marker)
    r = post_chat(gw, key("edge"), None, raw=raw, headers={"x-request-id": cid})
    _refused(gw, r, cid)
    assert not upstream.calls(marker)


def test_a_lone_surrogate_in_the_api_key_is_a_401_not_a_crash(gw):
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        body = json.dumps(chat_body("chat", "lone-key", max_tokens=5)).encode()
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer sk-\xed\xa0\x80\xff\r\n"
            + f"Content-Length: {len(body)}\r\n".encode()
            + b"Connection: close\r\n\r\n"
            + body
        )
        head = s.recv(200)
    assert head.startswith(b"HTTP/1.1 4"), head


@pytest.mark.parametrize(
    "field,value",
    [
        ("n", -1),
        ("n", 0),
        ("n", 17),
        ("n", 1.5),
        ("n", "2"),
        ("n", True),
        ("max_completion_tokens", -5),
        ("max_completion_tokens", 0),
        ("max_tokens", 0),
        ("max_tokens", "100"),
        ("temperature", "hot"),
        ("temperature", -0.1),
        ("temperature", 2.5),
        ("temperature", float("nan")),
        ("top_p", 1.5),
        ("top_p", -1),
        ("presence_penalty", 3),
        ("frequency_penalty", -3),
        ("top_logprobs", 50),
        ("stream", "yes"),
        ("seed", "x"),
    ],
)
def test_out_of_range_parameters_are_a_400_before_any_upstream_call(gw, upstream, field, value):
    marker = f"param-{field}-{value!r}"
    body = chat_body("chat", marker, **{field: value})
    raw = json.dumps(body, allow_nan=True).encode()
    cid = unique("param")
    r = post_chat(gw, key("edge"), None, raw=raw, headers={"x-request-id": cid})
    assert r.status_code == 400, f"{field}={value!r}: {r.status_code} {r.text[:300]}"
    _refused(gw, r, cid)
    assert not upstream.calls(marker)


def test_an_oversized_body_is_a_413(gw, upstream):
    raw = json.dumps(chat_body("chat", "too-big " + "x" * 1_100_000)).encode()
    cid = unique("big")
    r = post_chat(gw, key("edge"), None, raw=raw, headers={"x-request-id": cid})
    assert r.status_code == 413 and not upstream.calls("too-big")
    assert not gw.client_rows(cid)


def test_an_error_object_inside_a_200_is_a_502_with_a_ledger_row(gw, upstream):
    r = post_chat(gw, key("edge"), chat_body("error-in-200", "err200", max_tokens=5))
    assert r.status_code == 502, r.text
    assert upstream.calls("err200")
    rows = gw.wait_rows("request_id = ?", (r.headers["x-request-id"],))
    assert rows and all(row["outcome"] == "error" for row in rows)


@pytest.mark.parametrize("model", ["echo-401", "echo-403"])
def test_an_upstream_auth_failure_is_a_502_about_the_gateways_own_credentials(gw, upstream, model):
    import openai

    from tests.security.harness import openai_client

    with pytest.raises(openai.APIStatusError) as info:
        openai_client(gw, key("edge")).chat.completions.create(
            model=model, messages=[{"role": "user", "content": f"auth-{model}"}], max_tokens=5
        )
    assert info.value.status_code == 502, "the client would think its own key was refused"
    assert "credentials" in info.value.message.lower() and "gateway" in info.value.message.lower(), info.value.message
    assert len(upstream.calls(f"auth-{model}")) == 1, "an auth failure was retried"


def test_an_upstream_redirect_loop_is_not_followed(gw, upstream):
    r = post_chat(gw, key("edge"), chat_body("redirect-loop", "redir-loop", max_tokens=5))
    assert r.status_code == 502, r.text
    assert len(upstream.calls("redir-loop")) <= 2  # at most max_retries + 1 attempts, and 3xx is not retryable
    assert not [c for c in upstream.calls() if c["path"].startswith("/loop")], "a redirect was followed"


def _read_until_closed(s: socket.socket, deadline: float) -> tuple[bytes, bool]:
    """-> (bytes read, closed by the server before the deadline)."""
    data = b""
    while time.monotonic() < deadline:
        s.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            part = s.recv(65536)
        except socket.timeout:
            return data, False
        except (ConnectionResetError, BrokenPipeError):
            return data, True
        if not part:
            return data, True
        data += part
    return data, False


def test_an_endless_header_is_refused_with_431_and_the_connection_closed(gw):
    """20 connections each send 64 KB of one unfinished header line (limit 16 KB)."""
    socks = []
    cid = unique("431")
    try:
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
            s.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                + f"X-Request-Id: {cid}\r\n".encode()
                + f"Authorization: Bearer {key('edge')}\r\nX-Pad: ".encode()
            )
            socks.append(s)
        for s in socks:
            try:
                for _ in range(16):
                    s.sendall(b"a" * 4096)
            except (BrokenPipeError, ConnectionResetError, socket.timeout):
                pass  # the server stopped reading: fine
        deadline = time.monotonic() + 6
        for s in socks:
            data, closed = _read_until_closed(s, deadline)
            assert closed or data.startswith(b"HTTP/1.1 431"), f"still open, answered {data[:80]!r}"
            assert not data or data.startswith(b"HTTP/1.1 431"), data[:80]
    finally:
        for s in socks:
            s.close()
    with http() as c:
        assert c.get(gw.url + "/healthz").status_code == 200
    assert not gw.client_rows(cid)


def test_a_slowloris_client_is_cut_off_at_the_header_timeout(gw):
    """header_timeout 2 s: a client trickling a header byte every 0.25 s is closed within ~2 s, while a
    normal client is served meanwhile."""
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    try:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        t0 = time.monotonic()
        closed = False
        served_meanwhile = False
        while time.monotonic() - t0 < 6:
            try:
                s.sendall(b"X")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            s.settimeout(0.25)
            try:
                part = s.recv(1024)
                if not part or part.startswith(b"HTTP/1.1 408"):
                    closed = True
                    break
            except socket.timeout:
                pass
            except ConnectionResetError:
                closed = True
                break
            if not served_meanwhile and time.monotonic() - t0 > 0.5:
                with http() as c:
                    served_meanwhile = c.get(gw.url + "/healthz").status_code == 200
        elapsed = time.monotonic() - t0
    finally:
        s.close()
    assert closed, "a client that never finishes its headers kept its connection for 6 s"
    assert elapsed < 4.5, f"closed only after {elapsed:.1f}s (header_timeout 2 s)"
    assert served_meanwhile


def _sse(r) -> list[str]:
    return [ln[6:] for ln in r.text.splitlines() if ln.startswith("data: ")]


def test_a_long_stream_without_idle_gaps_is_not_cut_by_the_first_byte_timeout(gw):
    """drip-long: 10 chunks 0.4 s apart, 4 s in all; first_byte_timeout 2.5 s, idle_timeout 1 s."""
    t0 = time.monotonic()
    r = post_chat(gw, key("edge"), chat_body("drip-long", "idle-long", max_tokens=50, stream=True), timeout=20)
    elapsed = time.monotonic() - t0
    events = _sse(r)
    assert r.status_code == 200 and events and events[-1] == "[DONE]", events[-3:]
    text = "".join(
        (json.loads(e)["choices"] or [{}])[0].get("delta", {}).get("content") or ""
        for e in events[:-1]
        if "choices" in json.loads(e)
    )
    assert text.split() == [f"w{i}" for i in range(10)]
    assert elapsed > 3.5


def test_a_stream_that_goes_silent_is_cut_at_the_idle_timeout(gw):
    """stall: 2 chunks, then 4 s of silence; idle_timeout 1 s."""
    t0 = time.monotonic()
    r = post_chat(gw, key("edge"), chat_body("stall", "idle-stall", max_tokens=50, stream=True), timeout=20)
    elapsed = time.monotonic() - t0
    events = _sse(r)
    assert r.status_code == 200
    assert "[DONE]" not in events and any("error" in json.loads(e) for e in events), events
    assert elapsed < 3.5, f"the silent stream was cut after {elapsed:.1f}s (idle_timeout 1 s)"
    rows = gw.wait_rows("request_id = ?", (r.headers["x-request-id"],))
    assert rows and rows[0]["outcome"] == "error" and rows[0]["cost"] is not None and rows[0]["cost"] > 0


def test_a_chunked_body_without_content_length_is_still_limited(gw, upstream):
    def body():
        yield b'{"model": "chat", "messages": [{"role": "user", "content": "chunked-big '
        for _ in range(120):
            yield b"x" * 10_000
        yield b'"}]}'

    with http() as c:
        cid = unique("chunked")
        r = c.post(
            gw.url + "/v1/chat/completions",
            content=body(),
            headers={"authorization": f"Bearer {key('edge')}", "content-type": "application/json", "x-request-id": cid},
        )
    assert r.status_code == 413 and not upstream.calls("chunked-big")
    assert not gw.client_rows(cid)


@pytest.mark.parametrize(
    "path,raw",
    [
        ("/v1/embeddings", b'{"model": "embed", "input": "other-deep", "x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"),
        ("/v1/embeddings", b'{"model": "embed", "input": ["other-lone \\ud800"]}'),
        (
            "/v1/messages",
            b'{"model": "chat", "max_tokens": 5, "messages": [{"role": "user", "content": "other-deep"}], "x": '
            + b"[" * 50_000
            + b"]" * 50_000
            + b"}",
        ),
        (
            "/v1/messages",
            b'{"model": "chat", "max_tokens": 5, "messages": [{"role": "user", "content": "other-lone \\udc00"}]}',
        ),
        (
            "/v1/messages",
            b'{"model": "chat", "max_tokens": -5, "messages": [{"role": "user", "content": "other-neg"}]}',
        ),
        (
            "/v1/messages",
            b'{"model": "chat", "max_tokens": 5, "temperature": "hot", "messages": [{"role": "user", '
            b'"content": "other-hot"}]}',
        ),
    ],
    ids=["embed-deep", "embed-lone", "messages-deep", "messages-lone", "messages-neg", "messages-hot"],
)
def test_the_other_spending_endpoints_validate_as_strictly(gw, upstream, path, raw):
    cid = unique("other")
    with http() as c:
        r = c.post(
            gw.url + path,
            content=raw,
            headers={
                "authorization": f"Bearer {key('edge')}",
                "x-request-id": cid,
                "x-api-key": key("edge"),
                "content-type": "application/json",
            },
        )
    _no_500(r)
    assert r.status_code == 400, r.text[:300]
    time.sleep(0.3)
    assert not [row for row in gw.client_rows(cid) if row["step"] in ("generate", "embed")]
    marker = re.search(rb"other-[a-z]+", raw).group().decode()
    assert not upstream.calls(marker)
