"""The Upstream seam: what the gateway needs from a model API, and the typed answers it gets back.

Requests go out OpenAI-shaped (a chat completion or embeddings body). Answers come back as
``UpstreamResponse`` (a whole answer) or ``StreamChunk`` (one chunk of a stream): the body the
client receives, untouched, and beside it -- never inside it -- the usage as the provider counts
it (``NativeUsage``) when that differs from the OpenAI shape of the body's ``usage``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, AsyncGenerator, Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class NativeUsage:
    """Token counts in the provider's own shape, priced under its own counting rules (``flavour``, a key of
    ``truecost.pricing.usage.FLAVOURS``): e.g. Anthropic's cache reads and 5-minute / 1-hour cache writes."""

    flavour: str
    usage: dict[str, Any]


@dataclass(slots=True)
class UpstreamResponse:
    """A whole answer: ``body`` is what the client receives (OpenAI-shaped), ``usage`` its OpenAI-shaped usage
    as the upstream sent it (unchecked: pricing validates it), ``native_usage`` the provider's own counts."""

    body: dict[str, Any]
    usage: Any = None
    native_usage: NativeUsage | None = None

    @classmethod
    def of(cls, body: dict[str, Any]) -> UpstreamResponse:
        """An OpenAI-compatible answer: its usage is the body's own."""
        return cls(body, body.get("usage"))


@dataclass(slots=True)
class StreamChunk:
    """One chat completion chunk: ``data`` is sent to the client as one server-sent event; ``usage`` and
    ``native_usage`` as in ``UpstreamResponse`` (the last chunk of a complete stream carries them)."""

    data: dict[str, Any]
    usage: Any = None
    native_usage: NativeUsage | None = None

    @classmethod
    def of(cls, data: dict[str, Any]) -> StreamChunk:
        return cls(data, data.get("usage"))


@runtime_checkable
class Upstream(Protocol):
    """A model API behind OpenAI-shaped requests and typed answers.

    Every method raises only the UpstreamError subtree (``truecost.upstream.errors``), whose messages are
    redacted: no headers, keys, URLs with credentials, paths or upstream bodies. Optional abilities are
    declared as attributes, never probed: ``embed`` is called only when ``supports_embeddings`` is True.
    """

    supports_embeddings: bool  # the API has an embeddings endpoint

    async def complete(self, body: dict) -> UpstreamResponse:
        """A whole chat completion (retried on 429/5xx/timeouts before any answer arrived)."""

    def stream(self, body: dict) -> AsyncGenerator[StreamChunk, None]:
        """Chat completion chunks; the last one carries usage. Retried only before the first chunk."""

    async def embed(self, body: dict) -> UpstreamResponse:
        """An OpenAI-shaped embeddings answer (UpstreamUnsupported when ``supports_embeddings`` is False)."""

    async def aclose(self) -> None:
        """Release connections."""
