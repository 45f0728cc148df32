"""The UpstreamError subtree: what can go wrong when calling a model API."""

from __future__ import annotations

from truecost.errors import UpstreamError


class UpstreamHTTPError(UpstreamError):
    def __init__(self, status: int, body: str, retry_after: float | None = None) -> None:
        super().__init__(f"upstream answered {status}: {body[:300]}")
        self.status, self.body, self.retry_after = status, body, retry_after

    @property
    def retryable(self) -> bool:
        return self.status == 429 or self.status >= 500


class UpstreamTimeout(UpstreamError):
    retryable = True


class UpstreamConnectionError(UpstreamError):
    retryable = True


class UpstreamBadResponse(UpstreamError):
    retryable = False


class UpstreamStreamCut(UpstreamError):
    """The stream ended before its final chunk; ``usage`` holds what was consumed, if known."""

    retryable = False

    def __init__(self, message: str, chunks: int, usage: dict | None = None) -> None:
        super().__init__(message)
        self.chunks, self.usage = chunks, usage
