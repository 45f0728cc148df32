"""The HTTP edge of `truecost serve`: header size limit and header read deadline (issue 15, point 8).

Raw sockets against `truecost.gateway.server` running uvicorn in a thread on 127.0.0.1, with each
HTTP implementation the server can use (httptools, and h11 as the fallback). Today's plain uvicorn
holds an unfinished 8 MB header in memory per connection and never closes a connection that sends
one header byte per second; slow bodies and long streams must keep working under the guards.
"""

from tests.support.requires import need
import asyncio
import socket
import threading
import time

import pytest

need("uvicorn", "gateway")
from starlette.applications import Starlette  # noqa: E402
from starlette.responses import PlainTextResponse, StreamingResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

from truecost.demo.live import free_port  # noqa: E402
from truecost.gateway.server import make_config  # noqa: E402

MAX_HEADER = 16_384
HEADER_TIMEOUT = 1.5


async def ping(request):
    return PlainTextResponse("pong")


async def upload(request):
    n = 0
    async for chunk in request.stream():
        n += len(chunk)
    return PlainTextResponse(str(n))


async def stream(request):
    count, gap = int(request.query_params.get("n", "5")), float(request.query_params.get("gap", "0.3"))

    async def gen():
        for i in range(count):
            yield f"chunk {i}\n".encode()
            await asyncio.sleep(gap)

    return StreamingResponse(gen(), media_type="text/plain")


def make_app():
    return Starlette(
        routes=[Route("/ping", ping), Route("/upload", upload, methods=["POST"]), Route("/stream", stream)]
    )


class Served:
    def __init__(self, kind: str) -> None:
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(
            make_config(
                make_app(),
                "127.0.0.1",
                self.port,
                max_header_bytes=MAX_HEADER,
                header_timeout=HEADER_TIMEOUT,
                log_level="critical",
                http_kind=kind,
                timeout_keep_alive=5,
                lifespan="off",
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 15
        while not self.server.started:
            assert time.time() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)

    def connect(self, timeout: float = 5.0) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)


@pytest.fixture(scope="module", params=["httptools", "h11"])
def server(request):
    if request.param == "httptools":
        need("httptools", "gateway")
    with Served(request.param) as s:
        yield s


def read_until_closed(sock: socket.socket, limit: float) -> tuple[bytes, float, bool]:
    """Everything the server sends until it closes (or `limit` seconds pass); (data, elapsed, closed)."""
    start, data = time.monotonic(), b""
    sock.settimeout(0.2)
    while time.monotonic() - start < limit:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return data, time.monotonic() - start, True
        if not chunk:
            return data, time.monotonic() - start, True
        data += chunk
    return data, time.monotonic() - start, False


def read_responses(sock: socket.socket, count: int = 1, limit: float = 5.0) -> list[bytes]:
    """`count` responses with a content-length (the test app's plain answers), each as status line + body."""
    sock.settimeout(limit)
    data, out = b"", []
    while len(out) < count:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, (out, data)
            data += chunk
        head, _, data = data.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
        )
        while len(data) < length:
            chunk = sock.recv(65536)
            assert chunk, (out, data)
            data += chunk
        out.append(head.split(b"\r\n")[0] + b"\r\n\r\n" + data[:length])
        data = data[length:]
    return out


def read_response(sock: socket.socket, limit: float = 5.0) -> bytes:
    return read_responses(sock, 1, limit)[0]


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_a_normal_request_and_keep_alive_work(server):
    with server.connect() as s:
        s.sendall(b"GET /ping HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(s) == b"HTTP/1.1 200 OK\r\n\r\npong"
        time.sleep(HEADER_TIMEOUT / 2)  # under the deadline: the connection is still usable
        s.sendall(b"GET /ping HTTP/1.1\r\nHost: t\r\nX-Pad: " + b"p" * (MAX_HEADER - 200) + b"\r\n\r\n")
        assert read_response(s) == b"HTTP/1.1 200 OK\r\n\r\npong"


def test_pipelined_requests_and_a_body_in_the_same_segment_are_answered(server):
    body = b"b" * 200_000  # far past the header limit, sent with the headers in one go: no false 431
    with server.connect() as s:
        s.sendall(
            b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 200000\r\n\r\n"
            + body
            + b"GET /ping HTTP/1.1\r\nHost: t\r\n\r\n" * 3
        )
        assert read_responses(s, 4) == [b"HTTP/1.1 200 OK\r\n\r\n200000"] + [b"HTTP/1.1 200 OK\r\n\r\npong"] * 3


def test_a_header_block_over_the_limit_gets_431_and_a_close(server):
    with server.connect() as s:
        s.sendall(b"GET /ping HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * (MAX_HEADER + 10) + b"\r\n\r\n")
        data, elapsed, closed = read_until_closed(s, 5)
    assert data.startswith(b"HTTP/1.1 431 ") and b"connection: close" in data.lower()
    assert closed and elapsed < 3


def test_an_unfinished_8mb_header_is_cut_quickly(server):
    chunk = b"a" * 65536
    start = time.monotonic()
    with server.connect() as s:
        s.sendall(b"GET /ping HTTP/1.1\r\nHost: t\r\nX-Big: ")
        sent = 0
        try:
            while sent < 8 * 2**20:
                s.sendall(chunk)
                sent += len(chunk)
        except OSError:  # the server may already have closed: that is a pass too
            pass
        data, _, closed = read_until_closed(s, 5)
    assert closed and time.monotonic() - start < 5
    assert data == b"" or data.startswith(b"HTTP/1.1 431 ")


def test_20_unfinished_8mb_headers_hold_little_memory(server):
    chunk, socks = b"a" * 65536, []
    before = rss_kb()
    try:
        for _ in range(20):
            s = server.connect()
            socks.append(s)
            try:
                s.sendall(b"GET /ping HTTP/1.1\r\nHost: t\r\nX-Big: ")
                for _ in range(8 * 2**20 // len(chunk)):
                    s.sendall(chunk)
            except OSError:
                pass
        grown_mb = (rss_kb() - before) / 1024
        answers = [read_until_closed(s, 5) for s in socks]
    finally:
        for s in socks:
            s.close()
    assert grown_mb < 30, f"RSS grew {grown_mb:.0f} MB"
    assert all(closed for _, _, closed in answers)
    assert all(data == b"" or data.startswith(b"HTTP/1.1 431 ") for data, _, _ in answers)


def test_slowloris_is_closed_after_the_header_timeout(server):
    with server.connect() as s:
        start = time.monotonic()
        s.sendall(b"GET /ping HTTP/1.1\r\nHost: t\r\n")
        closed_at = None
        for byte in b"X-Slow: " + b"z" * 20:
            try:
                s.sendall(bytes([byte]))
            except OSError:
                break
            s.settimeout(0.5)  # one header byte every half second (a slowloris' pace, sped up)
            try:
                if s.recv(65536) is not None:
                    closed_at = time.monotonic() - start
                    break
            except socket.timeout:
                pass
            except OSError:
                closed_at = time.monotonic() - start
                break
        if closed_at is None:
            closed_at = time.monotonic() - start
    assert HEADER_TIMEOUT - 0.1 <= closed_at < HEADER_TIMEOUT + 2.0


def test_a_slowloris_after_a_first_request_on_a_keep_alive_connection_is_closed_too(server):
    with server.connect() as s:
        s.sendall(b"GET /ping HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(s).endswith(b"pong")
        s.sendall(b"GET /ping HTTP/1.1\r\nHost: t\r\n")  # never finished
        data, elapsed, closed = read_until_closed(s, HEADER_TIMEOUT + 3)
    assert closed and elapsed < HEADER_TIMEOUT + 2
    assert data == b"" or data.startswith(b"HTTP/1.1 408 ")


def test_a_connection_that_never_sends_is_closed_silently(server):
    with server.connect() as s:
        data, elapsed, closed = read_until_closed(s, HEADER_TIMEOUT + 3)
    assert closed and data == b"" and HEADER_TIMEOUT - 0.1 <= elapsed < HEADER_TIMEOUT + 2


def test_a_slow_body_upload_is_not_cut_by_the_header_timer(server):
    with server.connect() as s:
        s.sendall(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 8\r\n\r\n")
        start = time.monotonic()
        for _ in range(8):
            time.sleep(0.4)  # 3.2 s in all, twice the header timeout
            s.sendall(b"x")
        assert time.monotonic() - start > 2 * HEADER_TIMEOUT
        assert read_response(s) == b"HTTP/1.1 200 OK\r\n\r\n8"


def test_a_long_streaming_response_is_not_cut_by_the_header_timer(server):
    with server.connect() as s:
        s.sendall(b"GET /stream?n=8&gap=0.4 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        data, elapsed, closed = read_until_closed(s, 10)
    assert closed and elapsed > 2 * HEADER_TIMEOUT
    assert data.startswith(b"HTTP/1.1 200 ") and all(f"chunk {i}\n".encode() in data for i in range(8))


def test_chunked_uploads_with_small_trailers_still_work(server):
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in [b"y" * 1000] * 300)
    with server.connect() as s:
        s.sendall(
            b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunks
            + b"0\r\nX-Checksum: abc\r\n\r\n"
        )
        assert read_response(s) == b"HTTP/1.1 200 OK\r\n\r\n300000"


def test_an_endless_chunked_trailer_is_cut_and_holds_little_memory(server):
    chunk, socks = b"t" * 65536, []
    before = rss_kb()
    try:
        for _ in range(10):
            s = server.connect()
            socks.append(s)
            try:
                s.sendall(
                    b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n"
                    b"X-Trailer: "
                )
                for _ in range(8 * 2**20 // len(chunk)):
                    s.sendall(chunk)
            except OSError:
                pass
        grown_mb = (rss_kb() - before) / 1024
        answers = [read_until_closed(s, 5) for s in socks]
    finally:
        for s in socks:
            s.close()
    assert grown_mb < 30, f"RSS grew {grown_mb:.0f} MB"
    assert all(closed for _, _, closed in answers)
    assert all(not data.startswith(b"HTTP/1.1 200") for data, _, _ in answers)


# ------------------------------------------------------------------ the real gateway behind the guarded server

BAD_BODIES = [
    (
        "100k-deep JSON",
        b'{"model": "support", "messages": [{"role": "user", "content": "x"}], "x": '
        + b"[" * 100_000
        + b"]" * 100_000
        + b"}",
    ),
    ("lone surrogate", rb'{"model": "support", "messages": [{"role": "user", "content": "hi \ud800"}]}'),
    ("n=-1", b'{"model": "support", "messages": [{"role": "user", "content": "x"}], "n": -1}'),
    (
        "max_completion_tokens=-5",
        b'{"model": "support", "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": -5}',
    ),
    ("temperature hot", b'{"model": "support", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}'),
    ("NaN", b'{"model": "support", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}'),
]


def test_the_gateway_answers_bad_bodies_with_400_before_any_upstream_call(tmp_path):
    import uvicorn

    from tests.support.mock_upstream import ServerThread, make_app as make_upstream
    from truecost.gateway.app import build
    from truecost.gateway.config import parse_config

    with ServerThread(make_upstream()) as upstream:
        config = parse_config(
            {
                "ledger": str(tmp_path / "gw.db"),
                "upstreams": {"mock": {"base_url": upstream.url + "/v1", "timeout": 2, "max_retries": 0}},
                "models": {"support": {"candidates": [{"upstream": "mock", "model": "gpt-6-luna"}]}},
                "max_body_bytes": 1_000_000,
            }
        )
        port = free_port()
        server = uvicorn.Server(make_config(build(config), "127.0.0.1", port, log_level="critical"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            deadline = time.time() + 15
            while not server.started:
                assert time.time() < deadline and thread.is_alive()
                time.sleep(0.02)
            import httpx

            calls = upstream.server.config.app.state.calls
            for name, raw in BAD_BODIES:
                r = httpx.post(
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                    content=raw,
                    headers={"content-type": "application/json"},
                    timeout=10,
                )
                assert r.status_code == 400, (name, r.status_code, r.text[:200])
                assert r.json()["error"]["message"] and len(r.text) < 400, name
            assert calls["n"] == 0
            r = httpx.post(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                timeout=10,
                json={"model": "support", "messages": [{"role": "user", "content": "hi"}], "n": 1},
            )
            assert r.status_code == 200 and calls["n"] == 1
        finally:
            server.should_exit = True
            thread.join(10)
