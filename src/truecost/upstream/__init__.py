"""Talk to model APIs behind one Upstream protocol. Every failure surfaces as an UpstreamError subclass,
its message redacted (``truecost.upstream.redact``)."""

from truecost.upstream.base import NativeUsage, StreamChunk, Upstream, UpstreamResponse
from truecost.upstream.errors import (
    UpstreamAuthError,
    UpstreamBadResponse,
    UpstreamConnectionError,
    UpstreamHTTPError,
    UpstreamStreamCut,
    UpstreamTimeout,
    UpstreamUnsupported,
)
from truecost.upstream.openai_compat import OpenAICompatibleUpstream

__all__ = [
    "Upstream",
    "UpstreamResponse",
    "StreamChunk",
    "NativeUsage",
    "OpenAICompatibleUpstream",
    "UpstreamHTTPError",
    "UpstreamAuthError",
    "UpstreamTimeout",
    "UpstreamConnectionError",
    "UpstreamBadResponse",
    "UpstreamStreamCut",
    "UpstreamUnsupported",
]
