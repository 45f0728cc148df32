"""Secrets never leave: redact() and describe_failure() on every exception type that carries request info."""

from __future__ import annotations

from tests.support.requires import need
import pytest

from truecost.errors import UpstreamError
from truecost.upstream.errors import (
    UpstreamAuthError,
    UpstreamBadResponse,
    UpstreamConnectionError,
    UpstreamHTTPError,
    UpstreamStreamCut,
    UpstreamTimeout,
    in_band_error,
    translate,
)
from truecost.upstream.redact import LIMIT, describe_failure, error_fields, redact, safe_identifier

from tests.support.hostile_upstream import SECRET_MESSAGE, SECRETS

KEY = "sk-SECRET-test-key-0123456789abcdef"
URL = "https://admin:hunter2@api.example.com:8443/v1/secret/path?api_key=sk-query-SECRET-1234&x=1"
FORBIDDEN = (
    KEY,
    "sk-SECRET",
    "authorization",
    "bearer",
    "hunter2",
    "/v1/secret",
    "api_key=sk",
    "sk-query",
    "CIMultiDict",
    "RequestInfo",
    "x-api-key: ",
)


def assert_clean(text: str) -> None:
    low = text.lower()
    for bad in FORBIDDEN + SECRETS:
        assert bad.lower() not in low, f"{bad!r} leaked in {text!r}"


def assert_exception_clean(exc: BaseException) -> None:
    for text in (str(exc), repr(exc), *map(str, exc.args), str(getattr(exc, "detail", "") or "")):
        assert_clean(text)


# ---------------------------------------------------------------------------------------------- redact()


@pytest.mark.parametrize(
    "text",
    [
        f"authorization: Bearer {KEY}",
        f"Authorization=Bearer {KEY}\nnext",
        f"{{'authorization': 'Bearer {KEY}', 'content-type': 'application/json'}}",
        f"[(b'Authorization', b'Bearer {KEY}')]",
        f"<CIMultiDictProxy('Host': 'x', 'Authorization': 'Bearer {KEY}', 'User-Agent': 'aiohttp')>",
        f"<CIMultiDictProxy('Authorization': 'Bearer a)b\\'c', 'x-api-key': '{KEY}')>",
        f"RequestInfo(url=URL('{URL}'), method='POST', headers=<CIMultiDictProxy('authorization': 'Bearer {KEY}')>)",
        f"Headers({{'authorization': '[secure]', 'x-api-key': '{KEY}'}})",
        f"x-api-key: {KEY}",
        f"api-key: {KEY}",
        f"Cookie: session={KEY}",
        f"failed to reach {URL}",
        "Bearer sk-SECRET",
        "token sk-SECRET-abcdef used",
        "sk-ant-api03-SECRET and sk-proj-SECRET",
        SECRET_MESSAGE,
        f'{{"error": {{"message": "{SECRET_MESSAGE}"}}}}',
        "password=hunter2 and api_key=sk-query-SECRET-1234",
        "the key " + KEY[:20],  # a prefix of a key is still a key
    ],
)
def test_redact_removes_credentials(text):
    out = redact(text, [KEY])
    assert_clean(out)
    assert len(out) <= LIMIT and "\n" not in out


def test_redact_removes_the_known_secret_whatever_it_looks_like():
    assert "plain-words-key" not in redact("the plain-words-key leaked", ["plain-words-key"])
    assert "p%40ss" not in redact("url?x=p%40ss", ["p@ss"])


@pytest.mark.parametrize(
    "text",
    [
        SECRET_MESSAGE,
        URL,
        f"<CIMultiDict('Authorization': 'Bearer {KEY}')> at /srv/x",
        "upstream answered 429 (rate_limit_exceeded)",
        "a b  c\n\td",
    ],
)
def test_redact_is_idempotent(text):
    once = redact(text)
    assert redact(once) == once


def test_redact_keeps_useful_words_and_bounds_length():
    assert (
        redact("upstream answered 429 (rate_limit_exceeded) for gpt-4.1-mini")
        == "upstream answered 429 (rate_limit_exceeded) for gpt-4.1-mini"
    )
    assert redact("see https://api.openai.com/v1/chat/completions?key=1 now") == "see https://api.openai.com now"
    assert redact("HTTP/1.1 500, 3/4 done") == "HTTP/1.1 500, 3/4 done"
    assert len(redact("word " * 1000)) == LIMIT
    assert redact(None) == "" and redact(b"bytes sk-SECRETbytes") == "bytes [redacted]"


@pytest.mark.parametrize(
    "path",
    ["/srv/inference/app.py", "/home/bob/.ssh/id_rsa", "~/keys/openai", "C:\\Users\\bob\\key.txt", "/etc/passwd"],
)
def test_redact_removes_filesystem_paths(path):
    assert path not in redact(f"error in {path}: boom")


@pytest.mark.parametrize(
    "host", ["db-7.internal.corp", "10.2.3.4", "192.168.1.20", "172.20.0.5", "vault.svc", "model-7.internal"]
)
def test_redact_removes_internal_hosts(host):
    assert host not in redact(f"cannot reach {host}:5432")


def test_redact_is_linear_on_hostile_input():
    import time

    t = time.perf_counter()
    redact("a" * 200_000 + "(" * 50_000 + "<CIMultiDict(" + "'" * 10_000)
    assert time.perf_counter() - t < 2.0


# ---------------------------------------------------------------------------------------------- error bodies


def test_error_fields_reads_openai_anthropic_and_plain_bodies():
    assert error_fields(
        '{"error": {"message": "m", "type": "invalid_request_error", "code": "rate_limit_exceeded"}}'
    ) == ("rate_limit_exceeded", "m")
    assert error_fields('{"type": "error", "error": {"type": "overloaded_error", "message": "m"}}') == (
        "overloaded_error",
        "m",
    )
    assert error_fields({"error": "model_not_found"}) == ("model_not_found", "model_not_found")
    assert error_fields("<html>oops</html>") == (None, "<html>oops</html>")
    assert error_fields('{"error": {"code": "sk-abcdef123456", "type": "org-Secret42"}}')[0] is None


@pytest.mark.parametrize(
    "value",
    [
        "sk-abcdef123",
        "org-AbcDef",
        "Bearer",
        "authorization",
        "authorization_error",
        "x-api-key",
        "has space",
        "x" * 100,
        42,
        None,
        "/srv/path",
    ],
)
def test_safe_identifier_refuses_what_is_not_an_identifier(value):
    assert safe_identifier(value) is None


def test_http_error_never_carries_the_body():
    body = '{"error": {"message": "%s", "type": "server_error", "code": "internal_error"}}' % SECRET_MESSAGE.replace(
        '"', ""
    )
    exc = UpstreamHTTPError(500, body + f" authorization: Bearer {KEY}", secrets=(KEY,))
    assert str(exc) == "upstream answered 500" and exc.error_type is None  # not JSON any more: no type
    exc = UpstreamHTTPError(500, body, secrets=(KEY,))
    assert str(exc) == "upstream answered 500 (internal_error)" and exc.status == 500 and exc.retryable
    assert exc.detail and len(exc.detail) <= LIMIT
    assert_exception_clean(exc)
    assert not hasattr(exc, "body")


def test_auth_redirect_and_in_band_errors():
    auth = UpstreamAuthError(
        401, f'{{"error": {{"code": "invalid_api_key", "message": "bad key {KEY}"}}}}', secrets=(KEY,)
    )
    assert isinstance(auth, UpstreamHTTPError) and auth.status == 401 and not auth.retryable
    assert "credentials" in str(auth) and "invalid_api_key" in str(auth)
    assert_exception_clean(auth)
    redirect = UpstreamHTTPError(302, reason="redirect not followed")
    assert str(redirect) == "upstream answered 302 (redirect not followed)" and not redirect.retryable
    band = in_band_error({"error": {"type": "server_error", "message": SECRET_MESSAGE}})
    assert band.in_band and band.status == 502 and band.error_type == "server_error" and not band.retryable
    assert "200" in str(band)
    assert_exception_clean(band)


def test_every_upstream_error_message_is_redacted_at_construction():
    for exc in (
        UpstreamTimeout(f"timed out {URL}"),
        UpstreamConnectionError(f"authorization: Bearer {KEY}"),
        UpstreamBadResponse(SECRET_MESSAGE),
        UpstreamStreamCut(f"cut {URL}", 2, None),
    ):
        assert_exception_clean(exc)


# ---------------------------------------------------------------------------------------------- aiohttp


def _aiohttp_exceptions():
    aiohttp = need("aiohttp", "gateway")
    from aiohttp import client_exceptions as ce
    from aiohttp import http_exceptions as he
    from multidict import CIMultiDict, CIMultiDictProxy
    from yarl import URL as YURL

    headers = CIMultiDictProxy(
        CIMultiDict(
            {"Host": "api.example.com", "Authorization": f"Bearer {KEY}", "x-api-key": KEY, "Cookie": f"s={KEY}"}
        )
    )
    url = YURL(URL)
    try:
        info = aiohttp.RequestInfo(url, "POST", headers, url)
    except TypeError:
        info = aiohttp.RequestInfo(url=url, method="POST", headers=headers)
    leak = f"Bearer {KEY} at {URL}"
    resp_kw = dict(request_info=info, history=(), status=500, message=leak, headers=headers)
    out = {
        "ClientResponseError": lambda: ce.ClientResponseError(**resp_kw),
        "ClientResponseError-parser": lambda: ce.ClientResponseError(
            info, (), status=400, message=f"Invalid header value char: b'X Leak: Bearer {KEY}'", headers=headers
        ),
        "TooManyRedirects": lambda: ce.TooManyRedirects(**{**resp_kw, "status": 302}),
        "ContentTypeError": lambda: ce.ContentTypeError(**resp_kw),
        "WSServerHandshakeError": lambda: ce.WSServerHandshakeError(**resp_kw),
        "ClientHttpProxyError": lambda: ce.ClientHttpProxyError(**resp_kw),
        "ServerDisconnectedError": lambda: ce.ServerDisconnectedError(message=leak),
        "ClientPayloadError": lambda: ce.ClientPayloadError(
            f"Response payload is not completed: <TransferEncodingError: 400, message='{leak}'>"
        ),
        "InvalidURL": lambda: ce.InvalidURL(url, f"bad {leak}") if _takes_two(ce.InvalidURL) else ce.InvalidURL(url),
        "ClientOSError": lambda: ce.ClientOSError(104, f"Connection reset by peer {leak}"),
        "ServerTimeoutError": lambda: ce.ServerTimeoutError(f"Timeout on reading data from socket {leak}"),
        "ServerFingerprintMismatch": lambda: ce.ServerFingerprintMismatch(b"a", b"b", "api.example.com", 443),
        "ClientConnectionError": lambda: ce.ClientConnectionError(leak),
        "ClientError": lambda: ce.ClientError(leak),
    }
    try:
        from aiohttp.client_reqrep import ConnectionKey

        fields = dict(
            host="api.example.com",
            port=8443,
            is_ssl=True,
            ssl=True,
            proxy=url,
            proxy_auth=aiohttp.BasicAuth("admin", "hunter2"),
            proxy_headers_hash=None,
        )
        key = ConnectionKey(**{k: v for k, v in fields.items() if k in ConnectionKey._fields})
        os_error = OSError(111, f"Connect call failed {leak}")
        out["ClientConnectorError"] = lambda: ce.ClientConnectorError(key, os_error)
        out["ClientProxyConnectionError"] = lambda: ce.ClientProxyConnectionError(key, os_error)
        out["ClientConnectorSSLError"] = lambda: ce.ClientConnectorSSLError(key, os_error)
        out["ClientConnectorCertificateError"] = lambda: ce.ClientConnectorCertificateError(
            key, Exception(f"certificate verify failed {leak}")
        )
    except (ImportError, TypeError, AttributeError):
        pass
    for name in ("ConnectionTimeoutError", "SocketTimeoutError", "ClientConnectionResetError"):
        if hasattr(ce, name):
            out[name] = (lambda cls: lambda: cls(leak))(getattr(ce, name))
    for name in (
        "InvalidUrlClientError",
        "RedirectClientError",
        "NonHttpUrlClientError",
        "InvalidUrlRedirectClientError",
        "NonHttpUrlRedirectClientError",
    ):
        if hasattr(ce, name):
            out[name] = (lambda cls: lambda: cls(url, leak))(getattr(ce, name))
    out["BadStatusLine"] = lambda: he.BadStatusLine(f"HTTP/1.1 2x0 Bearer {KEY}")
    out["InvalidHeader"] = lambda: he.InvalidHeader(f"X Leak: Bearer {KEY}".encode())
    out["LineTooLong"] = lambda: he.LineTooLong(f"Bearer {KEY}", "8190", "9000")
    out["BadHttpMessage"] = lambda: he.BadHttpMessage(leak, headers=headers)
    out["TransferEncodingError"] = lambda: he.TransferEncodingError(leak)
    out["ContentLengthError"] = lambda: he.ContentLengthError(leak)
    return out


def _takes_two(cls) -> bool:
    import inspect

    try:
        return len(inspect.signature(cls.__init__).parameters) > 2
    except (TypeError, ValueError):
        return False


AIOHTTP_NAMES = [
    "ClientResponseError",
    "ClientResponseError-parser",
    "TooManyRedirects",
    "ContentTypeError",
    "WSServerHandshakeError",
    "ClientHttpProxyError",
    "ServerDisconnectedError",
    "ClientPayloadError",
    "InvalidURL",
    "ClientOSError",
    "ServerTimeoutError",
    "ServerFingerprintMismatch",
    "ClientConnectionError",
    "ClientError",
    "ClientConnectorError",
    "ClientProxyConnectionError",
    "ClientConnectorSSLError",
    "ClientConnectorCertificateError",
    "ConnectionTimeoutError",
    "SocketTimeoutError",
    "ClientConnectionResetError",
    "InvalidUrlClientError",
    "RedirectClientError",
    "NonHttpUrlClientError",
    "InvalidUrlRedirectClientError",
    "NonHttpUrlRedirectClientError",
    "BadStatusLine",
    "InvalidHeader",
    "LineTooLong",
    "BadHttpMessage",
    "TransferEncodingError",
    "ContentLengthError",
]


@pytest.mark.parametrize("name", AIOHTTP_NAMES)
def test_aiohttp_exceptions_are_described_without_secrets(name):
    factories = _aiohttp_exceptions()
    assert name in factories, f"this aiohttp has no {name}: update AIOHTTP_NAMES for the installed version"
    exc = factories[name]()
    assert KEY in repr(exc) + str(exc) + repr(getattr(exc, "request_info", "")) + str(
        getattr(exc, "headers", "")
    ) or name in ("ServerFingerprintMismatch",)  # the hazard is real: the raw exception does carry the key
    text = describe_failure(exc)
    assert text.startswith(type(exc).__name__)
    assert_clean(text)
    assert_clean(describe_failure(exc, [KEY]))
    err = translate(exc, secrets=(KEY,))
    assert isinstance(err, UpstreamError)
    assert_exception_clean(err)
    cut = translate(exc, secrets=(KEY,), chunks=3, usage={"prompt_tokens": 1})
    assert isinstance(cut, UpstreamStreamCut) and cut.chunks == 3
    assert_exception_clean(cut)


def test_aiohttp_failures_map_to_the_right_upstream_errors():
    f = _aiohttp_exceptions()
    assert isinstance(translate(f["ServerDisconnectedError"]()), UpstreamConnectionError)
    assert isinstance(translate(f["ServerTimeoutError"]()), UpstreamTimeout)
    assert isinstance(translate(f["ClientPayloadError"]()), UpstreamBadResponse)
    assert isinstance(translate(f["ClientResponseError-parser"]()), UpstreamBadResponse)
    assert isinstance(translate(f["BadStatusLine"]()), UpstreamBadResponse)
    if "ClientConnectorError" in f:
        err = translate(f["ClientConnectorError"]())
        assert isinstance(err, UpstreamConnectionError) and err.retryable
    assert "timed out" in str(translate(TimeoutError(), timed_out="waiting for the first byte after 2s"))


# ---------------------------------------------------------------------------------------------- httpx


def _httpx_exceptions():
    httpx = need("httpx", "gateway")
    request = httpx.Request("POST", URL, headers={"authorization": f"Bearer {KEY}", "x-api-key": KEY})
    response = httpx.Response(500, request=request, headers={"set-cookie": f"s={KEY}"}, content=SECRET_MESSAGE.encode())
    leak = f"for url '{URL}' with headers {request.headers!r} authorization: Bearer {KEY}"
    out = {
        "HTTPStatusError": lambda: httpx.HTTPStatusError(
            f"Server error '500' {leak}", request=request, response=response
        ),
        "ConnectError": lambda: httpx.ConnectError(f"[Errno 111] {leak}", request=request),
        "ConnectTimeout": lambda: httpx.ConnectTimeout(leak, request=request),
        "ReadTimeout": lambda: httpx.ReadTimeout(leak, request=request),
        "WriteTimeout": lambda: httpx.WriteTimeout(leak, request=request),
        "PoolTimeout": lambda: httpx.PoolTimeout(leak, request=request),
        "ReadError": lambda: httpx.ReadError(leak, request=request),
        "WriteError": lambda: httpx.WriteError(leak, request=request),
        "RemoteProtocolError": lambda: httpx.RemoteProtocolError(f"illegal header line {leak}", request=request),
        "LocalProtocolError": lambda: httpx.LocalProtocolError(leak, request=request),
        "ProxyError": lambda: httpx.ProxyError(leak, request=request),
        "UnsupportedProtocol": lambda: httpx.UnsupportedProtocol(leak, request=request),
        "TooManyRedirects": lambda: httpx.TooManyRedirects(leak, request=request),
        "DecodingError": lambda: httpx.DecodingError(leak, request=request),
        "InvalidURL": lambda: httpx.InvalidURL(leak),
    }
    return out


HTTPX_NAMES = [
    "HTTPStatusError",
    "ConnectError",
    "ConnectTimeout",
    "ReadTimeout",
    "WriteTimeout",
    "PoolTimeout",
    "ReadError",
    "WriteError",
    "RemoteProtocolError",
    "LocalProtocolError",
    "ProxyError",
    "UnsupportedProtocol",
    "TooManyRedirects",
    "DecodingError",
    "InvalidURL",
]


@pytest.mark.parametrize("name", HTTPX_NAMES)
def test_httpx_exceptions_are_described_without_secrets(name):
    exc = _httpx_exceptions()[name]()
    assert KEY in str(exc)  # the hazard is real
    text = describe_failure(exc)
    assert text.startswith(type(exc).__name__)
    assert_clean(text)
    err = translate(exc, secrets=(KEY,))
    assert isinstance(err, UpstreamError)
    assert_exception_clean(err)


def test_httpx_failures_map_to_the_right_upstream_errors():
    f = _httpx_exceptions()
    assert isinstance(translate(f["ReadTimeout"]()), UpstreamTimeout)
    assert isinstance(translate(f["ConnectError"]()), UpstreamConnectionError)
    assert isinstance(translate(f["RemoteProtocolError"]()), UpstreamBadResponse)
    assert describe_failure(f["HTTPStatusError"]()) == "HTTPStatusError: upstream answered 500"


def test_describe_failure_survives_a_hostile_str():
    class Nasty(Exception):
        def __str__(self):
            raise RuntimeError("no")

    assert describe_failure(Nasty()) == "Nasty"
    assert_clean(describe_failure(ValueError(f"bad json near authorization: Bearer {KEY}")))
    assert_clean(describe_failure(RuntimeError(f"boom {URL}")))
