"""One client for every OpenAI-compatible endpoint (OpenAI, Azure OpenAI, vLLM, Ollama, llama.cpp...).

aiohttp underneath: under 64 concurrent requests httpx's async pool was the gateway's
bottleneck here (about 120 requests/s against ~600 with aiohttp on the same machine).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator

from truecost.errors import MissingExtraError
from truecost.upstream.errors import (UpstreamBadResponse, UpstreamConnectionError, UpstreamHTTPError,
                                      UpstreamStreamCut, UpstreamTimeout)


def _aiohttp():
    try:
        import aiohttp
    except ImportError:
        raise MissingExtraError("the gateway's upstream client", "pip install 'truecost[gateway]'") from None
    return aiohttp


class OpenAICompatibleUpstream:
    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float = 60.0, connect_timeout: float = 5.0,
                 max_retries: int = 2, backoff: float = 0.25, max_connections: int = 256) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self.max_retries, self.backoff, self.max_connections = max_retries, backoff, max_connections
        self._session = None

    def _sess(self):
        aiohttp = _aiohttp()
        if self._session is None or self._session.closed:  # created inside the running loop
            self._session = aiohttp.ClientSession(
                headers=self.headers, json_serialize=json.dumps,
                connector=aiohttp.TCPConnector(limit=self.max_connections, ttl_dns_cache=300),
                timeout=aiohttp.ClientTimeout(total=self.timeout, sock_connect=self.connect_timeout))
        return self._session

    async def _post(self, path: str, body: dict) -> dict:
        aiohttp = _aiohttp()
        attempt = 0
        while True:
            try:
                async with self._sess().post(self.base_url + path, json=body) as resp:
                    text = await resp.text()
                    if resp.status >= 400:
                        ra = resp.headers.get("retry-after")
                        raise UpstreamHTTPError(resp.status, text,
                                                float(ra) if ra and ra.replace(".", "", 1).isdigit() else None)
                try:
                    return json.loads(text)
                except ValueError:
                    raise UpstreamBadResponse(f"upstream returned non-JSON: {text[:200]}") from None
            except asyncio.TimeoutError as exc:
                err: Exception = UpstreamTimeout(f"upstream timed out after {self.timeout}s: {exc!r}")
            except aiohttp.ClientError as exc:
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
        aiohttp = _aiohttp()
        body = {**body, "stream": True, "stream_options": {**(body.get("stream_options") or {}), "include_usage": True}}
        attempt = 0
        while True:
            chunks = 0
            usage = None
            try:
                async with self._sess().post(self.base_url + "/chat/completions", json=body) as resp:
                    if resp.status >= 400:
                        raise UpstreamHTTPError(resp.status, await resp.text())
                    done = False
                    async for raw in resp.content:
                        line = raw.decode("utf-8", errors="replace").strip()
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
            except asyncio.TimeoutError as exc:
                err: Exception = (UpstreamTimeout(f"upstream timed out: {exc!r}") if chunks == 0 else
                                  UpstreamStreamCut(f"stream timed out after {chunks} chunks", chunks, usage))
            except aiohttp.ClientError as exc:
                err = (UpstreamConnectionError(f"upstream connection failed: {exc!r}") if chunks == 0 else
                       UpstreamStreamCut(f"stream cut after {chunks} chunks: {exc!r}", chunks, usage))
            except UpstreamHTTPError as exc:
                err = exc
            if chunks or not getattr(err, "retryable", False) or attempt >= self.max_retries:
                raise err
            attempt += 1
            await asyncio.sleep(self.backoff * (2 ** attempt))

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
