"""Make failure text safe to show a client, store in the ledger and write to a log.

``redact(text, secrets)`` removes what must never leave the gateway: the known secret values it is given
(each upstream passes its own API key), credential headers (``authorization``, ``x-api-key``, ``api-key``,
``cookie``...) with their values, ``Bearer ...`` / ``Basic ...`` credentials, key-like tokens (``sk-...``,
``org-...``, JWTs, long random strings), ``key=value`` secrets, header dumps (``<CIMultiDict(...)>``,
``RequestInfo(...)``, httpx ``Headers(...)``), URL userinfo, paths and query strings (a URL keeps only its
scheme, host and port), absolute filesystem paths, private addresses and internal host names. The result is
one line of at most ``LIMIT`` characters.

``describe_failure(exc)`` is a short safe message for any exception: its type name and a reason chosen per
type (never ``repr(exc)``, never ``request_info`` or headers), passed through ``redact``.

``error_fields(body)`` reads an upstream's error body: an identifier-like error type/code (safe to show) and
its message (NOT safe: it goes through ``redact`` and stays out of exception messages).

Pure functions over text: no I/O, no third-party imports (exceptions are recognised by class name).
"""

from __future__ import annotations

import errno as _errno
import json
import re
from typing import Any, Iterable
from urllib.parse import quote, urlsplit

from truecost.errors import UpstreamError

LIMIT = 200
MASK = "[redacted]"
_WORK_LIMIT = 4000  # the regex rules run on at most this much text (after known secrets and dumps are gone)

_HEADER_NAMES = (
    r"(?:proxy-)?authorization|x-api-key|api-key|x-goog-api-key|anthropic-api-key|x-auth-token|"
    r"(?:set-)?cookie|openai-organization|openai-project|x-amz-security-token"
)
# a credential header with its value, as a header line, a dict item or a (name, value) pair: to the end of the line
_HEADER_LINE = re.compile(rf"(?i)(?<![\w-])(?:{_HEADER_NAMES})(?![\w-])['\"]?\s*[:=,]\s*[^\r\n]*")
# the words themselves, even inside identifiers ("authorization_error"): a reader must never see them echoed
_HEADER_WORD = re.compile(rf"(?i)authorization|bearer|(?<![\w-])(?:{_HEADER_NAMES})(?![\w-])")
_DUMP_START = re.compile(
    r"<?\b(?:CIMultiDictProxy|CIMultiDict|MultiDictProxy|MultiDict|RequestInfo|Headers|"
    r"ClientResponse|HeadersDict|RawHeaders)\("
)
_URL = re.compile(r"(?i)\b[a-z][a-z0-9+.\-]{1,15}://[^\s'\"<>\\`]*")
_AUTH_SCHEME = re.compile(
    r"(?i)\b(?:(?:bearer|digest)\s+(?:\[redacted\]|[^\s,'\";)\]}]+)"
    r"|basic\s+(?:\[redacted\]|[A-Za-z0-9+/]{8,}={0,2}))"
)
_TOKENS = re.compile(
    r"(?<![A-Za-z0-9])(?:"
    r"(?:sk|rk|pk)[-_][A-Za-z0-9_\-]{3,}"  # OpenAI / Anthropic / Stripe style keys
    r"|org-[A-Za-z0-9_\-]{3,}|proj_[A-Za-z0-9_\-]{3,}"  # organisation and project ids
    r"|eyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]*)?"  # JWTs
    r"|AKIA[0-9A-Z]{12,}|AIza[0-9A-Za-z_\-]{12,}|gh[pousr]_[A-Za-z0-9]{12,}|xox[abprs]-[A-Za-z0-9\-]{8,}"
    r"|hf_[A-Za-z0-9]{12,}|glpat-[A-Za-z0-9_\-]{12,}"
    r")"
)
_KEY_VALUE = re.compile(
    r"(?i)\b(password|passwd|pwd|secret|client_secret|token|access_token|refresh_token|"
    r"api_?key|apikey|key|sig|signature|credentials?)(['\"]?[ \t]*[=:][ \t]*)['\"]?"
    r"[^\s'\"&,;)}\]]+"
)
_LONG_RUN = re.compile(r"[A-Za-z0-9_\-+/=]{24,}")
_PRIVATE_IP = re.compile(
    r"(?<![\d.])(?:10\.\d{1,3}|172\.(?:1[6-9]|2\d|3[01])|192\.168|169\.254)\.\d{1,3}\.\d{1,3}"
    r"(?![\d.])"
)
_INTERNAL_HOST = re.compile(
    r"(?i)\b(?:[a-z0-9](?:[a-z0-9\-]*[a-z0-9])?\.)+(?:internal|local|localdomain|corp|lan|"
    r"intranet|intra|svc|priv|private|home\.arpa)\b"
)
_POSIX_PATH = re.compile(r"(?<![\w/.:~\-\]])~?/(?=[\w.~\-])[^\s'\"()<>\[\]{},;]*")
_WINDOWS_PATH = re.compile(r"(?i)(?<![\w])[a-z]:\\[^\s'\"<>]*|\\\\[\w.\-]+\\[^\s'\"<>]*")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_SPACE = re.compile(r"\s+")
_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]{0,63}")
_IDENTIFIER_WORDS = re.compile(r"[A-Za-z][A-Za-z0-9 _/\-]{0,59}")


def redact(text: Any, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with secrets, credentials, URLs' userinfo/paths/queries and filesystem paths removed; one line,
    at most ``LIMIT`` characters."""
    if text is None:
        return ""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", errors="replace")
    text = str(text)
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):  # the literal values first
        text = text.replace(secret, MASK)
        encoded = quote(secret, safe="")
        if encoded != secret:
            text = text.replace(encoded, MASK)
    text = _drop_dumps(text)
    text = _HEADER_LINE.sub(MASK, text)
    text = text[:_WORK_LIMIT]
    text = _URL.sub(_url_origin, text)
    text = _AUTH_SCHEME.sub(MASK, text)
    text = _TOKENS.sub(MASK, text)
    text = _KEY_VALUE.sub(lambda m: m.group(1) + "=" + MASK, text)
    text = _LONG_RUN.sub(_random_looking, text)
    text = _PRIVATE_IP.sub("[host]", text)
    text = _INTERNAL_HOST.sub("[host]", text)
    text = _WINDOWS_PATH.sub("[path]", text)
    text = _POSIX_PATH.sub("[path]", text)
    text = _HEADER_WORD.sub(MASK, text)
    text = _SPACE.sub(" ", _CONTROL.sub("", text)).strip()
    return text if len(text) <= LIMIT else text[: LIMIT - 1] + "…"


def _drop_dumps(text: str) -> str:
    """Remove ``<CIMultiDict(...)>``-like dumps whole (balanced parentheses, quotes respected)."""
    out, pos = [], 0
    while (m := _DUMP_START.search(text, pos)) is not None:
        out.append(text[pos : m.start()])
        end = _close_paren(text, m.end())
        if end < len(text) and text[end] == ">":
            end += 1
        out.append(MASK)
        pos = end
    out.append(text[pos:])
    return "".join(out)


def _close_paren(text: str, i: int) -> int:
    """Index just past the ``)`` closing the ``(`` before ``i``; the end of ``text`` if it never closes."""
    depth, quote_char, n = 1, "", len(text)
    while i < n:
        c = text[i]
        if quote_char:
            if c == "\\":
                i += 1
            elif c == quote_char:
                quote_char = ""
        elif c in "'\"":
            quote_char = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return n


def _url_origin(m: re.Match) -> str:
    """``scheme://user:pass@host:port/path?q`` -> ``scheme://host:port``."""
    raw = m.group(0)
    for placeholder in ("[host]", MASK):  # already redacted (redact() is idempotent)
        scheme, _, rest = raw.partition("://")
        if rest.startswith(placeholder):
            after = rest[len(placeholder) :]
            port = re.match(r":\d{1,5}", after)
            tail = after[len(after.rstrip(").,;:]}!?")) :]
            return f"{scheme}://{placeholder}" + (port.group(0) if port else "") + tail
    stripped = raw.rstrip(").,;:]}!?")
    tail, raw = raw[len(stripped) :], stripped
    try:
        parts = urlsplit(raw)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return MASK + tail
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port else "") + tail


def _random_looking(m: re.Match) -> str:
    """A long run mixing letters and digits is a token, not a word."""
    run = m.group(0)
    has_digit = any(c.isdigit() for c in run)
    has_alpha = any(c.isalpha() for c in run)
    return MASK if has_digit and has_alpha else run


def safe_identifier(value: object) -> str | None:
    """``value`` if it is a short identifier-like string (``rate_limit_exceeded``) that redaction leaves alone."""
    if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value):
        return None
    return value if redact(value) == value and _HEADER_WORD.search(value) is None else None


def error_fields(body: Any) -> tuple[str | None, str | None]:
    """(error type, message) from an upstream error body in OpenAI, Anthropic or Ollama shape.

    The type is an identifier-like ``error.code`` (preferred) or ``error.type``, safe to show. The message is
    the upstream's own text: pass it through ``redact`` before it goes anywhere.
    """
    obj = body
    if isinstance(body, (bytes, bytearray)):
        body = bytes(body[:65536]).decode("utf-8", errors="replace")
    if isinstance(body, str):
        try:
            obj = json.loads(body) if len(body) <= 65536 else None
        except ValueError:
            return None, body or None
    if not isinstance(obj, dict):
        return None, None
    err = obj.get("error")
    if isinstance(err, dict):
        kind = safe_identifier(err.get("code")) or safe_identifier(err.get("type"))
        message = err.get("message")
        return kind, message if isinstance(message, str) else None
    if isinstance(err, str):
        return safe_identifier(err), err
    return None, None


# ----------------------------------------------------------------------------------------------- exceptions


def _names(exc: BaseException) -> set[str]:
    return {c.__name__ for c in type(exc).__mro__}


def is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, TimeoutError) or bool(_names(exc) & {"TimeoutException", "ServerTimeoutError"})


def is_malformed_http(exc: BaseException) -> bool:
    """The upstream's bytes were not valid HTTP (bad status line, bad header, bad chunking...)."""
    names = _names(exc)
    if names & {"HttpProcessingError", "RemoteProtocolError", "ProtocolError", "ClientPayloadError", "DecodingError"}:
        return True
    if "ClientResponseError" in names and not names & {"TooManyRedirects", "ContentTypeError"}:
        return getattr(exc, "status", 0) in (0, 400)  # raised by the response parser, not an HTTP status
    return False


def is_connection_failure(exc: BaseException) -> bool:
    return isinstance(exc, OSError) or bool(_names(exc) & {"ClientConnectionError", "NetworkError", "TransportError"})


def describe_failure(exc: BaseException, secrets: Iterable[str | None] = ()) -> str:
    """``<TypeName>: <short reason>``, redacted; never the exception's repr, request info or headers."""
    kind = type(exc).__name__
    reason = _reason(exc, _names(exc))
    return redact(f"{kind}: {reason}" if reason else kind, secrets)


def _reason(exc: BaseException, names: set[str]) -> str:
    if isinstance(exc, UpstreamError):
        return str(exc)
    if names & {"InvalidURL", "InvalidUrlClientError", "UnsupportedProtocol", "NonHttpUrlClientError"}:
        return "invalid upstream URL"
    if "TooManyRedirects" in names:
        return "too many redirects"
    if "RedirectClientError" in names:
        return "unusable redirect"
    if is_timeout(exc):
        return "timed out"
    if names & {"ClientConnectorCertificateError", "ClientSSLError", "ServerFingerprintMismatch"}:
        return "TLS handshake with the upstream failed"
    if "ClientConnectorError" in names:
        return "cannot connect to the upstream" + _os_reason(getattr(exc, "os_error", None))
    if "ServerDisconnectedError" in names:
        return "the upstream closed the connection"
    if "ClientPayloadError" in names:
        return "the response body was incomplete or malformed"
    if "HTTPStatusError" in names:  # httpx
        status = getattr(getattr(exc, "response", None), "status_code", None)
        return f"upstream answered {status}" if isinstance(status, int) else "upstream answered an error status"
    if "ClientResponseError" in names or "HttpProcessingError" in names:
        # aiohttp: a status (its reason phrase is the upstream's text: left out), or the parser's complaint
        # about the bytes (only its leading phrase: what follows quotes the upstream's bytes)
        if is_malformed_http(exc) or "HttpProcessingError" in names:
            phrase = _phrase(getattr(exc, "message", None))
            return "malformed HTTP" + (f" ({phrase})" if phrase else "")
        return f"status {getattr(exc, 'status', None)}"
    if names & {"RemoteProtocolError", "LocalProtocolError", "ProtocolError"}:
        return "malformed HTTP"
    if "ConnectError" in names:  # httpx
        return "cannot connect to the upstream"
    if "ProxyError" in names:
        return "proxy error"
    if names & {"ReadError", "WriteError", "CloseError", "NetworkError", "TransportError"}:
        return "network error while talking to the upstream"
    if "DecodingError" in names:
        return "undecodable response body"
    if isinstance(exc, OSError):
        return _os_reason(exc).strip(" ()") or "operating system error"
    if isinstance(exc, (UnicodeError, ValueError)):
        return "undecodable or malformed response"
    return _short(_safe_str(exc))


def _os_reason(err: object) -> str:
    if not isinstance(err, OSError):
        return ""
    if isinstance(err.strerror, str) and err.strerror:
        return f" ({err.strerror})"
    if isinstance(err.errno, int) and err.errno in _errno.errorcode:
        return f" ({_errno.errorcode[err.errno]})"
    return ""


def _phrase(message: object) -> str:
    """The fixed leading phrase of a parser message ("Bad status line"), without the bytes it quotes."""
    if not isinstance(message, str):
        return ""
    head = re.split(r"[:'\"\n(\[]|\bb'", message, maxsplit=1)[0].strip(" .,")
    return _short(head, 60) if _IDENTIFIER_WORDS.fullmatch(head) else ""


def _short(message: object, n: int = 80) -> str:
    if not isinstance(message, str):
        return ""
    text = redact(message)
    return text if len(text) <= n else text[: n - 1] + "…"


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # a hostile __str__ says nothing
        return ""
