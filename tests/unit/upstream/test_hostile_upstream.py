"""The upstream clients against a hostile upstream (raw sockets on 127.0.0.1): every failure leaves as an
UpstreamError whose str, repr, args and detail carry no secret; timeouts, redirects, auth and in-band errors."""

from __future__ import annotations

from tests.support.requires import need
import asyncio
import time

import pytest

need("aiohttp", "gateway")

from truecost.errors import UpstreamError  # noqa: E402
from truecost.upstream import NativeUsage, Upstream  # noqa: E402
from truecost.upstream.anthropic import AnthropicUpstream  # noqa: E402
from truecost.upstream.errors import (  # noqa: E402
    UpstreamAuthError,
    UpstreamBadResponse,
    UpstreamConnectionError,  # noqa: E402
    UpstreamHTTPError,
    UpstreamStreamCut,
    UpstreamTimeout,
    UpstreamUnsupported,
)
from truecost.upstream.openai_compat import OpenAICompatibleUpstream  # noqa: E402

from tests.support.hostile_upstream import SECRETS, HostileUpstream  # noqa: E402

KEY = "sk-SECRET-hostile-test-key-0123456789abcdef"
FORBIDDEN = (
    KEY,
    "sk-SECRET",
    "authorization",
    "bearer",
    "x-api-key",
    "hunter2",
    "CIMultiDict",
    "RequestInfo",
    "api_key=",
) + SECRETS
KINDS = {"openai": OpenAICompatibleUpstream, "anthropic": AnthropicUpstream}
MSG = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def hostile():
    with HostileUpstream() as up:
        yield up


def make(hostile, kind="openai", **kw):
    opts = dict(connect_timeout=2.0, first_byte_timeout=3.0, idle_timeout=2.0, max_retries=0, backoff=0.01)
    opts.update(kw)
    return KINDS[kind](hostile.url + "/v1", KEY, **opts)


def assert_clean(exc: BaseException) -> None:
    assert isinstance(exc, UpstreamError), f"{type(exc).__name__} escaped: only the UpstreamError subtree may"
    texts = [str(exc), repr(exc), *map(str, exc.args), str(getattr(exc, "detail", "") or "")]
    for text in texts:
        low = text.lower()
        for bad in FORBIDDEN:
            assert bad.lower() not in low, f"{bad!r} leaked in {text!r}"


async def call(upstream, model, stream=False):
    """(chunks or answer, exception) of one call; closes the client."""
    got: list = []
    try:
        if stream:
            async for chunk in upstream.stream({"model": model, "messages": MSG}):
                got.append(chunk)
            return got, None
        return await upstream.complete({"model": model, "messages": MSG}), None
    except BaseException as exc:  # noqa: BLE001 - the point is to see whatever escapes
        return got, exc
    finally:
        await upstream.aclose()


def run(coro):
    return asyncio.run(coro)


BEHAVIOURS = [
    "malformed-status",
    "header-space",
    "redirect-loop",
    "secret-500",
    "secret-429",
    "unauthorized",
    "forbidden",
    "error-in-200",
    "not-json",
    "garbage",
    "close",
]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("kind", ["openai", "anthropic"])
@pytest.mark.parametrize("model", BEHAVIOURS)
def test_no_failure_carries_a_secret(hostile, model, kind, stream):
    before = len(hostile.requests)
    _, exc = run(call(make(hostile, kind), model, stream))
    assert exc is not None, f"{model} passed as a success"
    assert_clean(exc)
    sent = hostile.requests[before:]
    assert sent and KEY in str(sent[0].headers)  # the key really went out, so the check above means something


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_malformed_http_is_a_bad_response_or_connection_error(hostile, kind):
    for model in ("malformed-status", "header-space", "garbage"):
        _, exc = run(call(make(hostile, kind), model))
        assert isinstance(exc, (UpstreamBadResponse, UpstreamConnectionError)), (model, exc)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_redirects_are_not_followed(hostile, stream):
    before = hostile.calls("redirect-loop")
    _, exc = run(call(make(hostile, max_retries=2), "redirect-loop", stream))
    assert isinstance(exc, UpstreamHTTPError) and exc.status == 302 and not exc.retryable
    assert str(exc) == "upstream answered 302 (redirect not followed)"
    assert hostile.calls("redirect-loop") - before == 1  # neither followed nor retried


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
@pytest.mark.parametrize("model,status", [("unauthorized", 401), ("forbidden", 403)])
def test_upstream_401_403_is_an_auth_error_never_retried(hostile, kind, model, status):
    before = hostile.calls(model)
    _, exc = run(call(make(hostile, kind, max_retries=2), model))
    assert isinstance(exc, UpstreamAuthError) and exc.status == status and not exc.retryable
    assert "credentials" in str(exc)
    assert hostile.calls(model) - before == 1


def test_status_errors_keep_the_error_code_not_the_body(hostile):
    before = hostile.calls("secret-500")
    _, exc = run(call(make(hostile, max_retries=1), "secret-500"))
    assert isinstance(exc, UpstreamHTTPError) and exc.status == 500 and exc.error_type == "internal_error"
    assert str(exc) == "upstream answered 500 (internal_error)"
    assert exc.detail and "[redacted]" in exc.detail  # operators get a redacted excerpt
    assert hostile.calls("secret-500") - before == 2  # retried once
    _, exc = run(call(make(hostile, max_retries=1), "secret-429"))
    assert str(exc) == "upstream answered 429 (rate_limit_exceeded)" and exc.retry_after == 0


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("kind,error_type", [("openai", "server_overloaded"), ("anthropic", "overloaded_error")])
def test_an_error_object_inside_a_200_is_an_upstream_error(hostile, kind, error_type, stream):
    got, exc = run(call(make(hostile, kind), "error-in-200", stream))
    assert isinstance(exc, UpstreamHTTPError) and exc.in_band and exc.status == 502
    assert exc.error_type == error_type and not got
    assert_clean(exc)


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_normal_answers_usage_oddities_pass_through(hostile, kind):
    for model in ("normal", "usage-float", "usage-cached-over"):
        answer, exc = run(call(make(hostile, kind), model))
        assert exc is None and answer.body["choices"][0]["message"]["content"].startswith("The refund")
        assert "usage" in answer.body
        chunks, exc = run(call(make(hostile, kind), model, stream=True))
        assert exc is None and chunks[-1].usage and chunks[-1].data["usage"] == chunks[-1].usage
        assert "".join(
            c.data["choices"][0]["delta"].get("content", "") for c in chunks if c.data["choices"]
        ).startswith("The")
    answer, _ = run(call(make(hostile, "anthropic"), "usage-float"))
    assert answer.native_usage == NativeUsage("anthropic", {"input_tokens": 12.5, "output_tokens": 5.25})
    assert "_truecost_usage" not in answer.body and answer.usage == answer.body["usage"]
    answer, _ = run(call(make(hostile, "openai"), "usage-cached-over"))
    assert answer.usage["prompt_tokens_details"]["cached_tokens"] == 50 and answer.native_usage is None


def test_both_clients_are_upstreams_and_only_openai_embeds(hostile):
    openai, anthropic = make(hostile), make(hostile, "anthropic")
    assert isinstance(openai, Upstream) and isinstance(anthropic, Upstream)
    assert openai.supports_embeddings and not anthropic.supports_embeddings
    assert not hasattr(AnthropicUpstream, "_post") and not issubclass(AnthropicUpstream, OpenAICompatibleUpstream)

    async def go():
        try:
            answer = await openai.embed({"model": "normal", "input": "x"})
            with pytest.raises(UpstreamUnsupported):
                await anthropic.embed({"model": "normal", "input": "x"})
            return answer
        finally:
            await openai.aclose()
            await anthropic.aclose()

    assert run(go()).body["data"][0]["embedding"] == [0.1, 0.2, 0.3]


# ---------------------------------------------------------------------------------------------- timeouts


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_idle_timeout_cuts_a_stalled_stream(hostile, kind):
    t = time.perf_counter()
    got, exc = run(call(make(hostile, kind, first_byte_timeout=5.0, idle_timeout=0.5), "stall", stream=True))
    assert time.perf_counter() - t < 3.0
    assert isinstance(exc, UpstreamStreamCut) and "timed out" in str(exc) and "idle" in str(exc)
    assert len(got) == 2 and exc.chunks == 2
    assert_clean(exc)


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_a_slow_but_flowing_stream_is_never_cut(hostile, kind):
    """0.3 s between chunks for ~3 s: longer than first_byte + idle (2 s), never idle for 1 s."""
    t = time.perf_counter()
    got, exc = run(call(make(hostile, kind, first_byte_timeout=1.0, idle_timeout=1.0), "drip", stream=True))
    elapsed = time.perf_counter() - t
    assert exc is None, exc
    assert elapsed > 2.0
    content = [c for c in got if c.data["choices"] and c.data["choices"][0]["delta"].get("content")]
    assert len(content) == hostile.drip_chunks
    assert got[-1].usage


def test_first_byte_timeout_bounds_the_wait_for_an_answer(hostile):
    t = time.perf_counter()
    _, exc = run(call(make(hostile, first_byte_timeout=0.5), "slow-headers"))
    assert isinstance(exc, UpstreamTimeout) and "timed out" in str(exc) and "first byte" in str(exc)
    _, exc = run(call(make(hostile, first_byte_timeout=0.5, idle_timeout=5.0), "slow-headers", stream=True))
    assert isinstance(exc, UpstreamTimeout) and "timed out" in str(exc)
    # a whole answer whose body stalls halfway: first_byte_timeout bounds the body read too
    _, exc = run(call(make(hostile, first_byte_timeout=0.5), "stall"))
    assert isinstance(exc, UpstreamTimeout) and "timed out" in str(exc)
    assert time.perf_counter() - t < 4.0


def test_legacy_timeout_is_the_first_byte_timeout(hostile):
    up = OpenAICompatibleUpstream(hostile.url + "/v1", KEY, timeout=0.5, max_retries=0)
    assert up.timeouts.first_byte == 0.5 and up.timeout == 0.5
    _, exc = run(call(up, "slow-headers"))
    assert isinstance(exc, UpstreamTimeout)
    assert AnthropicUpstream(hostile.url, KEY, timeout=7).timeouts.first_byte == 7


def test_timeouts_must_be_positive():
    from truecost.errors import ConfigError

    for bad in (0, -1, float("nan"), float("inf"), "5"):
        with pytest.raises(ConfigError):
            OpenAICompatibleUpstream("http://127.0.0.1:9", idle_timeout=bad)


def test_a_refused_connection_is_retryable_and_clean():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    up = OpenAICompatibleUpstream(f"http://127.0.0.1:{port}/v1/secret?api_key=sk-SECRET-x", KEY, max_retries=0)
    _, exc = run(call(up, "normal"))
    assert isinstance(exc, UpstreamConnectionError) and exc.retryable
    assert_clean(exc)
    # credentials in the base URL beside an API key: aiohttp refuses to combine them; still no leak
    up = OpenAICompatibleUpstream(f"http://user:hunter2@127.0.0.1:{port}/v1", KEY, max_retries=0)
    _, exc = run(call(up, "normal"))
    assert_clean(exc)


def test_a_hang_up_closes_the_upstream_connection_at_once(hostile):
    """The caller stops after one chunk: the upstream connection is closed then (the provider stops generating),
    not when the session is closed or the generator garbage-collected."""
    before = hostile.disconnects

    async def go():
        up = make(hostile, idle_timeout=5.0)
        stream = up.stream({"model": "stall", "messages": MSG})
        try:
            await stream.__anext__()
            await stream.aclose()  # the client went away after one chunk
            for _ in range(200):  # a condition, not a sleep: returns as soon as the upstream saw the hang-up
                if hostile.disconnects > before:
                    return True
                await asyncio.sleep(0.05)
            return False
        finally:
            await up.aclose()

    assert run(go())
