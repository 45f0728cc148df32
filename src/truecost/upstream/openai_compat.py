"""One client for every OpenAI-compatible endpoint (OpenAI, Azure OpenAI, vLLM, Ollama, llama.cpp...)."""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator

import httpx

from truecost.upstream.errors import (UpstreamBadResponse, UpstreamConnectionError, UpstreamHTTPError,
                                      UpstreamStreamCut, UpstreamTimeout)


class OpenAICompatibleUpstream:
    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float = 60.0, connect_timeout: float = 5.0,
                 max_retries: int = 2, backoff: float = 0.25, max_connections: int = 256, transport=None) -> None:
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self.max_retries, self.backoff = max_retries, backoff
        self._client = httpx.AsyncClient(
            base_url=self.base_url, headers=headers, transport=transport,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections))

    async def _post(self, path: str, body: dict) -> dict:
        attempt = 0
        while True:
            try:
                resp = await self._client.post(path, json=body)
                if resp.status_code >= 400:
                    retry_after = resp.headers.get("retry-after")
                    raise UpstreamHTTPError(resp.status_code, resp.text,
                                            float(retry_after) if retry_after and retry_after.replace(".", "", 1).isdigit() else None)
                try:
                    return resp.json()
                except ValueError:
                    raise UpstreamBadResponse(f"upstream returned non-JSON: {resp.text[:200]}") from None
            except httpx.TimeoutException as exc:
                err: Exception = UpstreamTimeout(f"upstream timed out: {exc!r}")
            except httpx.TransportError as exc:
                err = UpstreamConnectionError(f"upstream connection failed: {exc!r}")
            except UpstreamHTTPError as exc:
                err = exc
            if not getattr(err, "retryable", False) or attempt >= self.max_retries:
                raise err
            delay = getattr(err, "retry_after", None) or self.backoff * (2 ** attempt)
            attempt += 1
            await asyncio.sleep(min(delay, 10.0))

    async def complete(self, body: dict) -> dict:
        """A non-streaming chat completion (retried on 429/5xx/timeouts: nothing was sent yet)."""
        return await self._post("/chat/completions", {**body, "stream": False})

    async def embed(self, body: dict) -> dict:
        return await self._post("/embeddings", body)

    async def stream(self, body: dict) -> AsyncIterator[dict]:
        """Stream chunks. Retries happen only before the first chunk; a cut afterwards raises UpstreamStreamCut."""
        body = {**body, "stream": True, "stream_options": {**(body.get("stream_options") or {}), "include_usage": True}}
        attempt = 0
        while True:
            chunks = 0
            usage = None
            try:
                async with self._client.stream("POST", "/chat/completions", json=body) as resp:
                    if resp.status_code >= 400:
                        text = (await resp.aread()).decode(errors="replace")
                        raise UpstreamHTTPError(resp.status_code, text)
                    done = False
                    async for line in resp.aiter_lines():
                        if not line.startswith("data:"):
                            continue
                        data = line[5:].strip()
                        if data == "[DONE]":
                            done = True
                            break
                        try:
                            chunk = json.loads(data)
                        except ValueError:
                            raise UpstreamStreamCut(f"malformed chunk after {chunks} chunks", chunks, usage) from None
                        chunks += 1
                        usage = chunk.get("usage") or usage
                        yield chunk
                    if not done:
                        raise UpstreamStreamCut(f"stream ended without [DONE] after {chunks} chunks", chunks, usage)
                    return
            except httpx.TimeoutException as exc:
                err: Exception = (UpstreamTimeout(f"upstream timed out: {exc!r}") if chunks == 0 else
                                  UpstreamStreamCut(f"stream timed out after {chunks} chunks", chunks, usage))
            except httpx.TransportError as exc:
                err = (UpstreamConnectionError(f"upstream connection failed: {exc!r}") if chunks == 0 else
                       UpstreamStreamCut(f"stream cut after {chunks} chunks: {exc!r}", chunks, usage))
            except UpstreamHTTPError as exc:
                err = exc
            if chunks or not getattr(err, "retryable", False) or attempt >= self.max_retries:
                raise err
            attempt += 1
            await asyncio.sleep(self.backoff * (2 ** attempt))

    async def aclose(self) -> None:
        await self._client.aclose()
