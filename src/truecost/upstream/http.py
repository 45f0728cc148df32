"""HTTP plumbing shared by the upstream clients: one aiohttp session, timeouts, retries, redaction.

Timeouts (all in seconds):

- ``connect``: opening the TCP (and TLS) connection.
- ``first_byte``: from sending the request until the first byte of the answer. For a non-streaming call it
  bounds the whole exchange (headers *and* body: an unstreamed answer arrives when it is done). For a stream it
  bounds the wait for the response headers and the first line of the body.
- ``idle``: the longest gap between two lines of a stream once it flows. A stream that keeps flowing is never
  cut, however long it runs: there is no total timeout.

Redirects are never followed (a 3xx is an ``UpstreamHTTPError``). Retries (``max_retries``, exponential
``backoff``, or the upstream's ``retry-after`` up to 10 s) happen only while nothing was handed to the caller.
Every failure leaves as an ``UpstreamError`` built by ``errors.translate``: redacted, with the client's own
secrets (its API key) removed by value.
"""

from __future__ import annotations

import asyncio
import json
import math
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, AsyncGenerator, Callable, Iterable, Protocol
from urllib.parse import urlsplit

from truecost.errors import ConfigError, MissingExtraError, UpstreamError
from truecost.upstream.base import StreamChunk
from truecost.upstream.errors import UpstreamAuthError, UpstreamBadResponse, UpstreamHTTPError, translate

MAX_ERROR_BODY = 64 * 1024  # bytes of an error answer read to find its error type
MAX_ANSWER_BODY = 256 * 1024 * 1024  # a non-streaming answer larger than this is refused
MAX_RETRY_DELAY = 10.0


def aiohttp_module():
    try:
        import aiohttp
    except ImportError:
        raise MissingExtraError("the gateway's upstream client", "pip install 'truecost[gateway]'") from None
    return aiohttp


@dataclass(frozen=True)
class Timeouts:
    connect: float = 5.0
    first_byte: float = 60.0
    idle: float = 30.0

    def __post_init__(self) -> None:
        for name in ("connect", "first_byte", "idle"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"upstream {name}_timeout must be a positive number of seconds, not {value!r}")


class StreamParser(Protocol):
    """Turns a stream's lines into chunks for one attempt; ``chunks`` counts the chunks handed out so far."""

    chunks: int
    done: bool

    def feed(self, line: str) -> Iterable[StreamChunk]: ...

    def end(self) -> None:
        """The body ended: raise UpstreamStreamCut unless the stream was complete."""

    @property
    def cut_usage(self) -> dict | None: ...


class HTTPTransport:
    def __init__(
        self,
        base_url: str,
        headers: dict[str, str],
        secrets: Iterable[str | None],
        timeouts: Timeouts,
        *,
        max_retries: int = 2,
        backoff: float = 0.25,
        max_connections: int = 256,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers, self.timeouts = dict(headers), timeouts
        try:  # credentials in the base URL are secrets too
            url = urlsplit(self.base_url)
            extra: tuple[str | None, ...] = (url.password, url.query or None)
        except ValueError:
            extra = ()
        self.secrets = tuple(s for s in (*secrets, *extra) if s)
        self.max_retries, self.backoff, self.max_connections = max_retries, backoff, max_connections
        self._session = None

    def session(self):
        aiohttp = aiohttp_module()
        if self._session is None or self._session.closed:  # created inside the running loop
            self._session = aiohttp.ClientSession(
                headers=self.headers,
                json_serialize=json.dumps,
                connector=aiohttp.TCPConnector(limit=self.max_connections, ttl_dns_cache=300),
                # no total: the first-byte and idle timeouts are enforced per phase below
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeouts.connect),
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()

    # ------------------------------------------------------------------------------------------ one answer

    async def post_json(self, path: str, payload: dict) -> Any:
        """POST and parse a JSON answer, retried on retryable failures."""
        attempt = 0
        while True:
            try:
                return await self._post_once(path, payload)
            except UpstreamError as err:
                if not getattr(err, "retryable", False) or attempt >= self.max_retries:
                    raise
                delay = self._delay(err, attempt)
            attempt += 1
            await asyncio.sleep(delay)

    async def _post_once(self, path: str, payload: dict) -> Any:
        try:
            async with asyncio.timeout(self.timeouts.first_byte):
                async with self.session().post(self.base_url + path, json=payload, allow_redirects=False) as resp:
                    await self._check_status(resp)
                    raw = await _read_body(resp, MAX_ANSWER_BODY)
        except UpstreamError:
            raise
        except Exception as exc:
            raise translate(exc, secrets=self.secrets, timed_out=self._timeout_note(exc, "first_byte")) from None
        try:
            return json.loads(raw)
        except ValueError:  # UnicodeDecodeError included
            raise UpstreamBadResponse("upstream returned a body that is not JSON") from None

    async def _check_status(self, resp) -> None:
        status = resp.status
        if status < 300:
            return
        if status < 400:
            raise UpstreamHTTPError(status, reason="redirect not followed")
        retry_after = _retry_after(resp.headers.get("retry-after"))
        body = (await _read_body(resp, MAX_ERROR_BODY, truncate=True)).decode("utf-8", errors="replace")
        cls = UpstreamAuthError if status in (401, 403) else UpstreamHTTPError
        raise cls(status, body, retry_after, secrets=self.secrets)

    def _delay(self, err: Exception, attempt: int) -> float:
        delay = getattr(err, "retry_after", None) or self.backoff * (2**attempt)
        return min(delay, MAX_RETRY_DELAY)

    def _timeout_note(self, exc: BaseException, phase: str) -> str:
        names = {c.__name__ for c in type(exc).__mro__}
        if "ConnectionTimeoutError" in names or "Connection timeout" in str(exc):
            return f"connecting after {self.timeouts.connect:g}s"
        if phase == "idle":
            return f"with no data for {self.timeouts.idle:g}s (idle timeout)"
        return f"waiting for the first byte after {self.timeouts.first_byte:g}s"

    # ------------------------------------------------------------------------------------------ streams

    async def stream(
        self, path: str, payload: dict, parser: Callable[[], StreamParser]
    ) -> AsyncGenerator[StreamChunk, None]:
        """POST and yield the chunks ``parser`` makes of the answer's lines; retried before the first chunk."""
        attempt = 0
        while True:
            state = parser()
            try:
                async with aclosing(self._stream_once(path, payload, state)) as chunks:  # closed at once on hang-up
                    async for chunk in chunks:
                        yield chunk
                return
            except UpstreamError as err:
                if state.chunks or not getattr(err, "retryable", False) or attempt >= self.max_retries:
                    raise
                delay = self._delay(err, attempt)
            attempt += 1
            await asyncio.sleep(delay)

    async def _stream_once(self, path: str, payload: dict, state: StreamParser) -> AsyncGenerator[StreamChunk, None]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeouts.first_byte
        phase, resp, clean = "first_byte", None, False
        try:
            async with asyncio.timeout_at(deadline):
                resp = await self.session().post(self.base_url + path, json=payload, allow_redirects=False)
                await self._check_status(resp)
            while True:
                if phase == "first_byte":
                    async with asyncio.timeout_at(deadline):
                        raw = await resp.content.readline()
                    phase = "idle"
                else:
                    async with asyncio.timeout(self.timeouts.idle):
                        raw = await resp.content.readline()
                if not raw:
                    break
                for chunk in state.feed(raw.decode("utf-8", errors="replace").strip()):
                    yield chunk
                if state.done:
                    break
            state.end()
            clean = True
        except UpstreamError:
            raise
        except Exception as exc:
            raise translate(
                exc,
                secrets=self.secrets,
                chunks=state.chunks,
                usage=state.cut_usage,
                timed_out=self._timeout_note(exc, phase),
            ) from None
        finally:
            if resp is not None:
                if clean:
                    resp.release()  # the connection goes back to the pool when the body was read to its end
                else:
                    resp.close()  # stop the upstream generating (and billing) for nobody


async def _read_body(resp, limit: int, truncate: bool = False) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        data = await resp.content.read(65536)
        if not data:
            return b"".join(parts)
        size += len(data)
        if size > limit:
            if truncate:
                parts.append(data[: len(data) - (size - limit)])
                return b"".join(parts)
            raise UpstreamBadResponse(f"upstream answer is larger than {limit} bytes")
        parts.append(data)


def _retry_after(value: str | None) -> float | None:
    try:
        seconds = float(value) if value else None
    except ValueError:  # an HTTP date: fall back to our own backoff
        return None
    return seconds if seconds is not None and math.isfinite(seconds) and seconds >= 0 else None


def timeouts(connect_timeout: float, first_byte_timeout: float, idle_timeout: float, timeout: float | None) -> Timeouts:
    """``timeout`` is the legacy name of ``first_byte_timeout``."""
    return Timeouts(connect_timeout, first_byte_timeout if timeout is None else timeout, idle_timeout)


class TransportClient:
    """What every model-API client shares: one redacting transport, its timeouts, repr and close."""

    def __init__(
        self,
        base_url: str,
        headers: dict[str, str],
        api_key: str | None,
        *,
        connect_timeout: float,
        first_byte_timeout: float,
        idle_timeout: float,
        max_retries: int,
        backoff: float,
        max_connections: int,
        timeout: float | None,
    ) -> None:
        self._http = HTTPTransport(
            base_url,
            headers,
            (api_key,),
            timeouts(connect_timeout, first_byte_timeout, idle_timeout, timeout),
            max_retries=max_retries,
            backoff=backoff,
            max_connections=max_connections,
        )
        self.base_url, self.max_retries = self._http.base_url, max_retries
        self.timeouts = self._http.timeouts
        self.timeout = self.timeouts.first_byte  # the legacy attribute

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    async def aclose(self) -> None:
        await self._http.aclose()
