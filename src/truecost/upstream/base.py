"""The Upstream seam: what the gateway needs from a model API."""

from __future__ import annotations

from typing import AsyncIterator, Protocol, runtime_checkable


@runtime_checkable
class Upstream(Protocol):
    """A model API behind OpenAI-shaped requests and answers.

    Every method raises only the UpstreamError subtree (``truecost.upstream.errors``), whose messages are
    redacted: no headers, keys, URLs with credentials, paths or upstream bodies. Answers and the final stream
    chunk carry ``_truecost_usage`` (``{"flavour", "usage"}``) when the provider counts tokens its own way.
    """

    flavour: str  # usage counting rules of the answers: "openai" | "anthropic"
    supports_embeddings: bool  # declared, not probed: embed() raises UpstreamUnsupported when False

    async def complete(self, body: dict) -> dict:
        """A whole chat completion (retried on 429/5xx/timeouts before any answer arrived)."""

    def stream(self, body: dict) -> AsyncIterator[dict]:
        """Chat completion chunks; the last one carries usage. Retried only before the first chunk."""

    async def embed(self, body: dict) -> dict:
        """An OpenAI-shaped embeddings answer."""

    async def aclose(self) -> None:
        """Release connections."""
