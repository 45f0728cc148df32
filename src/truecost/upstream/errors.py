"""The UpstreamError subtree: what can go wrong when calling a model API.

Every message here is safe to show a client, write to the ledger and log: it never carries an
upstream's body, a header, a URL with credentials or a path (see ``truecost.upstream.redact``).
"""

from __future__ import annotations

from truecost.errors import UpstreamError
from truecost.upstream.redact import (
    describe_failure,
    error_fields,
    is_connection_failure,
    is_malformed_http,
    is_timeout,
    redact,
    safe_identifier,
)


class UpstreamHTTPError(UpstreamError):
    """The upstream answered with an error: a status >= 300, or an error object inside a 200 (``in_band``).

    ``str()`` is ``upstream answered <status> (<error_type>)``: never the upstream's body. ``detail`` keeps
    a redacted, bounded excerpt of the upstream's own message for operators (it is not part of ``str()``).
    An error inside a 200 has ``status`` 502 (the upstream failed) and ``in_band`` True.
    """

    def __init__(
        self,
        status: int,
        body: str | dict | None = None,
        retry_after: float | None = None,
        *,
        error_type: str | None = None,
        in_band: bool = False,
        reason: str | None = None,
        detail: str | None = None,
        secrets: tuple[str, ...] = (),
    ) -> None:
        if body is not None:  # a raw body: keep only the identifier and a redacted excerpt
            found_type, found_message = error_fields(body)
            error_type = error_type or found_type
            detail = detail if detail is not None else found_message
        self.status = 502 if in_band else int(status)
        self.error_type = safe_identifier(error_type)
        self.retry_after, self.in_band = retry_after, in_band
        self.detail = redact(detail, secrets) if detail else None
        note = reason or self.error_type
        what = "200 with an error object" if in_band else str(self.status)
        super().__init__(f"upstream answered {what}" + (f" ({note})" if note else "") + self._tail)

    _tail = ""

    @property
    def retryable(self) -> bool:
        return not self.in_band and (self.status == 429 or self.status >= 500)


class UpstreamAuthError(UpstreamHTTPError):
    """The upstream refused the gateway's own credentials (401/403): a configuration problem, not the client's."""

    _tail = ": the gateway's own credentials for this upstream were rejected"

    @property
    def retryable(self) -> bool:
        return False


class _Redacted(UpstreamError):
    """Its message goes through ``redact``: whoever builds one cannot leak a credential by mistake."""

    retryable = False

    def __init__(self, message: str = "") -> None:
        super().__init__(redact(message))


class UpstreamTimeout(_Redacted):
    retryable = True


class UpstreamConnectionError(_Redacted):
    retryable = True


class UpstreamBadResponse(_Redacted):
    """The upstream's answer was not valid HTTP, not JSON, or not the shape its API promises."""


class UpstreamUnsupported(_Redacted):
    """The upstream's API has no such operation (Anthropic has no embeddings endpoint)."""


class UpstreamStreamCut(UpstreamError):
    """The stream ended before its final chunk; ``usage`` holds what was consumed, if known."""

    retryable = False

    def __init__(self, message: str, chunks: int, usage: dict | None = None) -> None:
        super().__init__(redact(message))
        self.chunks, self.usage = chunks, usage


def in_band_error(answer: dict, secrets: tuple[str, ...] = ()) -> UpstreamHTTPError:
    """An error object the upstream sent inside a 200 (an answer or a stream chunk)."""
    return UpstreamHTTPError(200, answer, in_band=True, secrets=secrets)


def translate(
    exc: BaseException,
    *,
    secrets: tuple[str, ...] = (),
    chunks: int = 0,
    usage: dict | None = None,
    timed_out: str = "",
) -> UpstreamError:
    """The one place an exception raised while talking to an upstream becomes an UpstreamError.

    aiohttp, httpx, asyncio and OS exceptions carry request info, headers and URLs; the message built here is
    ``describe_failure``'s redacted summary instead. ``chunks`` > 0 means a stream was under way (a cut, never
    retried); ``timed_out`` says which timeout fired ("waiting for the first byte after 60.0s").
    """
    if isinstance(exc, UpstreamError):
        return exc
    if is_timeout(exc):
        when = f" {timed_out}" if timed_out else ""
        if chunks:
            return UpstreamStreamCut(f"stream timed out{when} after {chunks} chunks", chunks, usage)
        return UpstreamTimeout(f"upstream timed out{when}")
    why = describe_failure(exc, secrets)
    if chunks:
        return UpstreamStreamCut(f"stream cut after {chunks} chunks: {why}", chunks, usage)
    status = _status_of(exc)
    if status is not None:  # an HTTP status raised as an exception (raise_for_status and the like): no body
        cls = UpstreamAuthError if status in (401, 403) else UpstreamHTTPError
        return cls(status)
    if is_malformed_http(exc):
        return UpstreamBadResponse(f"upstream answer unusable: {why}")
    if is_connection_failure(exc):
        return UpstreamConnectionError(f"upstream connection failed: {why}")
    return UpstreamBadResponse(f"upstream answer unusable: {why}")


def _status_of(exc: BaseException) -> int | None:
    """The HTTP status an aiohttp ClientResponseError / httpx HTTPStatusError reports (None for parser errors)."""
    names = {c.__name__ for c in type(exc).__mro__}
    if "HTTPStatusError" in names:
        status = getattr(getattr(exc, "response", None), "status_code", None)
    elif (
        "ClientResponseError" in names
        and not is_malformed_http(exc)
        and not names & {"TooManyRedirects", "ContentTypeError", "WSServerHandshakeError"}
    ):
        status = getattr(exc, "status", None)
    else:
        return None
    return status if isinstance(status, int) and 300 <= status <= 599 else None
