"""Run the gateway under uvicorn with limits at the HTTP edge.

uvicorn reads request headers without a size limit (httptools) and without a deadline: a client
that sends an endless header line, or one header byte per second, holds memory and a connection
for as long as it likes. ``serve`` runs uvicorn with its own HTTP protocol (a subclass of
uvicorn's httptools protocol; of the h11 one when httptools is missing) that adds two guards,
both per request on a keep-alive connection:

- **header size**: the bytes received before the request's header block completes are counted;
  past ``max_header_bytes`` the server answers ``431`` and closes. Bytes are counted *before*
  they reach the parser, so a connection never holds more than the limit in parser buffers.
  After the 431 the connection drains (and drops) what the client is still sending for a short
  moment, so the client can read the answer instead of a reset.
- **header deadline**: a timer starts when the connection opens and again when a response
  completes; if the next request's header block has not fully arrived within ``header_timeout``
  seconds the connection is closed (with a ``408`` when part of a request had arrived; silently
  when the connection was idle, as a keep-alive close). The timer stops as soon as the header
  block is complete, so slow bodies and long streaming responses are never cut by it; idle
  keep-alive connections still close after uvicorn's ``timeout_keep_alive``.

The same size limit bounds a chunked body's trailer fields, which the parsers also buffer whole:
past it the connection is closed (httptools: counted here; h11: its ``max_incomplete_event_size``).
"""

from __future__ import annotations

import asyncio
import http
from typing import TYPE_CHECKING, Any

DEFAULT_MAX_HEADER_BYTES = 16_384
DEFAULT_HEADER_TIMEOUT = 10.0
LINGER_SECONDS = 1.0  # after a 431: drain the client's remaining bytes this long, then close


def _response(status: int, default_headers, text: str) -> bytes:
    body = text.encode("ascii")
    lines = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n".encode("ascii")]
    for name, value in default_headers:
        lines += [name, b": ", value, b"\r\n"]
    lines += [
        b"content-type: text/plain; charset=utf-8\r\n",
        b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
        b"connection: close\r\n\r\n",
        body,
    ]
    return b"".join(lines)


if TYPE_CHECKING:

    class _UvicornHTTPProtocol(asyncio.Protocol):
        """What the guard uses of the uvicorn protocol it is mixed into (for the type checker only)."""

        transport: Any
        loop: asyncio.AbstractEventLoop
        cycle: Any
        server_state: Any

        def on_response_complete(self) -> None: ...
else:
    _UvicornHTTPProtocol = object


class _HeaderGuard(_UvicornHTTPProtocol):
    """Mixed into a uvicorn HTTP protocol (first in the MRO). Needs of the protocol: ``data_received``,
    ``on_response_complete``, ``connection_made``/``connection_lost``, attributes ``transport``,
    ``loop``, ``cycle`` (the current request's RequestResponseCycle, set when its headers complete)
    and ``server_state``; and of the concrete class: ``_awaiting_headers()``."""

    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    http_kind: str = ""

    _header_count = 0
    _body_gap = 0  # bytes since the parser last reported body data (chunk-size lines, trailers)
    _guards_body_gap = False  # set by protocols whose parser reports body data (on_body) and buffers trailers
    _header_timer: asyncio.TimerHandle | None = None
    _discarding = False
    _linger: asyncio.TimerHandle | None = None

    def _awaiting_headers(self) -> bool:  # pragma: no cover - defined by each concrete protocol
        raise NotImplementedError

    # -- connection life
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._header_count = 0
        self._arm_header_timer()

    def connection_lost(self, exc) -> None:
        self._cancel_header_timer()
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        before = self.cycle
        super().on_response_complete()
        if self.transport.is_closing():
            self._cancel_header_timer()
        elif self.cycle is not before:  # a pipelined request's headers completed meanwhile
            self._header_count = 0
            self._cancel_header_timer()
        elif self._idle():
            self._arm_header_timer()

    # -- reading
    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        limit = self.max_header_bytes
        while data:
            if self._awaiting_headers():
                room = limit - self._header_count
                if room <= 0:
                    self._reject_oversized()
                    return
                chunk = data[:room] if len(data) > room else data
                self._header_count += len(chunk)
            else:  # body bytes: fed in slices so that a pipelined request starting inside one is counted soon
                chunk = data[:limit] if len(data) > limit else data
                self._body_gap += len(chunk)
            data = data[len(chunk) :]
            cycle = self.cycle
            super().data_received(chunk)
            if self.transport.is_closing() or self.transport.get_protocol() is not self:
                return
            if self.cycle is not cycle:  # a header block completed in this chunk
                self._header_count = 0
                self._cancel_header_timer()
            if self._header_count >= limit and self._awaiting_headers():
                self._reject_oversized()
                return
            if self._guards_body_gap and self._body_gap > limit and not self._awaiting_headers():
                # a chunked body's trailer fields (or chunk-size lines) past the header limit: the parser
                # would buffer them whole; the request is under way, so there is no answer to give but a close
                self.transport.close()
                return

    # -- the two guards
    def _idle(self) -> bool:
        """Waiting for the next request's headers with no response in progress."""
        return self._awaiting_headers() and (self.cycle is None or self.cycle.response_complete)

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        if self.header_timeout and self.header_timeout > 0:
            self._header_timer = self.loop.call_later(self.header_timeout, self._header_deadline)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_deadline(self) -> None:
        self._header_timer = None
        if self.transport is None or self.transport.is_closing() or not self._idle():
            return
        if self._header_count:  # part of a request arrived: say why (best effort), then close
            self.transport.write(
                _response(408, self.server_state.default_headers, "Request header block not received in time")
            )
        self.transport.close()

    def _reject_oversized(self) -> None:
        self._cancel_header_timer()
        self._discarding = True
        self.transport.write(
            _response(
                431,
                self.server_state.default_headers,
                f"Request header fields too large (limit {self.max_header_bytes} bytes)",
            )
        )
        if self.transport.can_write_eof():
            self.transport.write_eof()
            # keep reading (and dropping) briefly so the client sees the 431 rather than a reset
            self._linger = self.loop.call_later(LINGER_SECONDS, self.transport.close)
        else:
            self.transport.close()


_classes: dict[tuple[str, int, float], type] = {}


def guarded_protocol(
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    kind: str | None = None,
) -> type:
    """uvicorn's HTTP protocol class with the header guards; ``kind`` 'httptools' or 'h11' (default:
    httptools when installed)."""
    if kind is None:
        import importlib.util

        kind = "httptools" if importlib.util.find_spec("httptools") is not None else "h11"
    if int(max_header_bytes) < 1:
        raise ValueError("max_header_bytes must be positive")
    key = (kind, int(max_header_bytes), float(header_timeout))
    if key in _classes:
        return _classes[key]
    attrs: dict[str, Any] = {
        "max_header_bytes": int(max_header_bytes),
        "header_timeout": float(header_timeout),
        "http_kind": kind,
    }
    if kind == "httptools":
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        class GuardedHttpToolsProtocol(_HeaderGuard, HttpToolsProtocol):
            _in_body = False
            _guards_body_gap = True

            def _awaiting_headers(self) -> bool:
                return not self._in_body

            def on_headers_complete(self) -> None:
                self._in_body, self._body_gap = True, 0
                super().on_headers_complete()

            def on_body(self, body: bytes) -> None:
                self._body_gap = 0
                super().on_body(body)

            def on_message_complete(self) -> None:
                self._in_body, self._body_gap = False, 0
                super().on_message_complete()

        base: type[_HeaderGuard] = GuardedHttpToolsProtocol
    elif kind == "h11":
        import h11
        from uvicorn.protocols.http.h11_impl import H11Protocol

        class GuardedH11Protocol(_HeaderGuard, H11Protocol):
            def _awaiting_headers(self) -> bool:
                return self.conn.their_state in (h11.IDLE, h11.DONE)

        base = GuardedH11Protocol
    else:
        raise ValueError(f"unknown HTTP protocol kind {kind!r} (httptools or h11)")
    cls = type(base.__name__, (base,), attrs)
    _classes[key] = cls
    return cls


def make_config(
    app,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    log_level: str = "warning",
    http_kind: str | None = None,
    **uvicorn_options,
):
    """A ``uvicorn.Config`` running ``app`` with the guarded protocol (run it with ``uvicorn.Server(config)``)."""
    import uvicorn

    protocol: Any = guarded_protocol(max_header_bytes, header_timeout, http_kind)
    options: dict[str, Any] = {"access_log": False, "ws": "none", "server_header": False}
    options.update(uvicorn_options)
    if protocol.http_kind == "h11":
        options.setdefault("h11_max_incomplete_event_size", int(max_header_bytes))
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, http=protocol, **options)


def serve(
    app,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    log_level: str = "warning",
    **uvicorn_options,
) -> None:
    """Serve ``app`` until interrupted (what ``truecost serve`` runs)."""
    import uvicorn

    uvicorn.Server(
        make_config(
            app,
            host,
            port,
            max_header_bytes=max_header_bytes,
            header_timeout=header_timeout,
            log_level=log_level,
            **uvicorn_options,
        )
    ).run()
