"""A hostile model API on 127.0.0.1: raw asyncio sockets, so it can answer what no HTTP framework would send.

    with HostileUpstream() as up:
        OpenAICompatibleUpstream(up.url + "/v1", "sk-test-key", ...)

It runs in a thread; ``up.url`` is ``http://127.0.0.1:<port>``. It speaks OpenAI shapes on
``.../chat/completions`` and ``.../embeddings`` and Anthropic shapes on ``.../messages``. One request per
connection (``Connection: close``). ``up.requests`` records every request received (method, path,
lower-cased headers, parsed JSON body), ``up.disconnects`` counts stalled streams whose client hung up.

The requested model name (the JSON body's ``model``) picks the behaviour:

==================== ==================================================================================
model                behaviour
==================== ==================================================================================
malformed-status     status line ``HTTP/1.1 2x0 <the request's credential header, echoed>``
header-space         200 whose headers include ``X Leak: <the request's credential header>`` (a space in
                     a header name) and a JSON answer
redirect-loop        302 to itself, the Location carrying userinfo and ``?api_key=`` (a loop if followed)
secret-500           500 whose JSON error body is full of secrets (see ``SECRETS``): org ids, internal
                     hosts, private IPs, /srv paths, ``sk-...`` keys, ``Authorization: Bearer ...``,
                     and the request's own credential header echoed; error code ``internal_error``
secret-429           429 with ``retry-after: 0``, error code ``rate_limit_exceeded`` (Anthropic: type
                     ``rate_limit_error``), secrets in the message
unauthorized         401, error code ``invalid_api_key``, the message echoing the request's key
forbidden            403, error type ``permission_error``
error-in-200         200 carrying an error object and no answer (OpenAI ``{"error": {...}}``, Anthropic
                     ``{"type": "error", ...}``; streamed: the error as the first event), secrets inside
not-json             200 ``application/json`` whose body is an HTML page with secrets
garbage              bytes that are not HTTP at all (with secrets), then close
close                closes the connection without answering
slow-headers         sleeps ``slow_seconds`` (default 2 s) before answering normally
drip                 streams one chunk every ``drip_interval`` (0.3 s) for ``drip_chunks`` (10) chunks,
                     ~3 s in all, then finishes normally (usage, [DONE]); not streamed: a normal answer
stall                streams 2 chunks, then sends nothing more until the client hangs up; not streamed:
                     headers and half the body, then nothing
usage-float          a normal answer whose usage has floats (``"prompt_tokens": 12.5``)
usage-cached-over    a normal answer whose ``cached_tokens`` (50) exceeds ``prompt_tokens`` (12) (Anthropic
                     shape: ``cache_read_input_tokens`` 50 beside ``input_tokens`` 12, which is consistent there)
anything else        a normal answer (streamed when asked), usage 12 prompt / 5 completion tokens
==================== ==================================================================================

``SECRETS`` lists strings from the hostile answers that must never reach a client, a log or the ledger;
the client's own API key (whatever the test chose) is echoed back by several behaviours as well.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field

SECRETS = (
    "sk-hostile-LEAK-0123456789abcdef",
    "sk-proj-UPSTREAMinternal42xyz",
    "org-HostileOrg4242",
    "db-7.internal.corp",
    "10.2.3.4",
    "/srv/inference/worker/secrets.yaml",
    "hunter2",
    "Bearer sk-upstream-INTERNAL-987654321",
)
SECRET_MESSAGE = (
    "Internal failure in /srv/inference/worker/secrets.yaml (worker db-7.internal.corp, 10.2.3.4) "
    "for org-HostileOrg4242: upstream key sk-hostile-LEAK-0123456789abcdef rejected by "
    "https://admin:hunter2@db-7.internal.corp/v1?api_key=sk-proj-UPSTREAMinternal42xyz; "
    "request headers: Authorization: Bearer sk-upstream-INTERNAL-987654321"
)
TEXT_WORDS = ["The", "refund", "reaches", "your", "account", "in", "five", "to", "seven", "days."]
USAGE = {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: dict = field(default_factory=dict)


class HostileUpstream:
    def __init__(self, drip_interval: float = 0.3, drip_chunks: int = 10, slow_seconds: float = 2.0) -> None:
        self.drip_interval, self.drip_chunks, self.slow_seconds = drip_interval, drip_chunks, slow_seconds
        self.requests: list[Received] = []
        self.disconnects = 0
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def calls(self, model: str) -> int:
        return sum(1 for r in self.requests if r.body.get("model") == model)

    # ------------------------------------------------------------------------------------------ lifecycle

    def __enter__(self) -> "HostileUpstream":
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._start())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="hostile-upstream", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the hostile upstream did not start")
        return self

    def __exit__(self, *exc) -> None:
        loop = self._loop
        if loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(10)
        loop.close()
        self._loop = None

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # ------------------------------------------------------------------------------------------ one request

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path = lines[0].split(" ")[:2]
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            raw = await reader.readexactly(int(headers.get("content-length") or 0))
            try:
                body = json.loads(raw) if raw else {}
            except ValueError:
                body = {}
            body = body if isinstance(body, dict) else {}
            self.requests.append(Received(method, path, headers, body))
            await self._respond(Exchange(self, reader, writer, path, headers, body))
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self._tasks.discard(task)
            try:
                writer.close()
            except Exception:
                pass

    async def _respond(self, ex: "Exchange") -> None:
        model = str(ex.body.get("model", ""))
        anthropic = ex.path.rstrip("/").endswith("/messages")
        credential = ex.headers.get("authorization") or ex.headers.get("x-api-key") or ""
        if model == "malformed-status":
            await ex.raw(f"HTTP/1.1 2x0 {credential}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}")
        elif model == "header-space":
            answer = json.dumps(self._answer(model, anthropic)).encode()
            await ex.raw(
                f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX Leak: {credential}\r\n"
                f"Content-Length: {len(answer)}\r\nConnection: close\r\n\r\n".encode()
                + answer
            )
        elif model == "redirect-loop":
            host = f"admin:hunter2@127.0.0.1:{self.port}"
            await ex.send(302, b"", {"Location": f"http://{host}{ex.path}?api_key=sk-hostile-LEAK-0123456789abcdef"})
        elif model == "secret-500":
            await ex.json(
                500, _error("internal_error", "server_error", SECRET_MESSAGE + f" (you sent {credential})", anthropic)
            )
        elif model == "secret-429":
            await ex.json(
                429,
                _error(
                    "rate_limit_exceeded", "rate_limit_error" if anthropic else "requests", SECRET_MESSAGE, anthropic
                ),
                {"retry-after": "0"},
            )
        elif model == "unauthorized":
            await ex.json(
                401,
                _error(
                    "invalid_api_key", "invalid_request_error", f"Incorrect API key provided: {credential}", anthropic
                ),
            )
        elif model == "forbidden":
            await ex.json(403, _error(None, "permission_error", SECRET_MESSAGE, anthropic))
        elif model == "error-in-200":
            err = _error("server_overloaded", "overloaded_error", SECRET_MESSAGE, anthropic)
            if ex.body.get("stream"):
                await ex.start_stream()
                await ex.event("error" if anthropic else None, err)
                await ex.end_stream()
            else:
                await ex.json(200, err)
        elif model == "not-json":
            await ex.send(
                200, f"<html><body>{SECRET_MESSAGE}</body></html>".encode(), {"Content-Type": "application/json"}
            )
        elif model == "garbage":
            await ex.raw(f"\x00\x01garbage {SECRET_MESSAGE} {credential}\r\n\r\n")
        elif model == "close":
            return
        else:
            if model == "slow-headers":
                await asyncio.sleep(self.slow_seconds)
            if ex.body.get("stream"):
                try:
                    await self._stream(ex, model, anthropic)
                except (ConnectionError, OSError):  # the client hung up before the stall began: a hang-up all the same
                    if model == "stall":
                        self.disconnects += 1
                    raise
            elif model == "stall":
                answer = json.dumps(self._answer(model, anthropic)).encode()
                await ex.raw(
                    f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(answer)}\r\n"
                    "Connection: close\r\n\r\n".encode()
                    + answer[: len(answer) // 2]
                )
                await ex.wait_for_hangup()
            elif ex.path.rstrip("/").endswith("/embeddings"):
                await ex.json(
                    200,
                    {
                        "object": "list",
                        "model": model,
                        "usage": {"prompt_tokens": 3, "total_tokens": 3},
                        "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
                    },
                )
            else:
                await ex.json(200, self._answer(model, anthropic))

    def _usage(self, model: str) -> dict:
        if model == "usage-float":
            return {"prompt_tokens": 12.5, "completion_tokens": 5.25, "total_tokens": 17.75}
        if model == "usage-cached-over":
            return {**USAGE, "prompt_tokens_details": {"cached_tokens": 50}}
        return dict(USAGE)

    def _anthropic_usage(self, model: str) -> dict:
        if model == "usage-float":
            return {"input_tokens": 12.5, "output_tokens": 5.25}
        if model == "usage-cached-over":
            return {"input_tokens": 12, "cache_read_input_tokens": 50, "output_tokens": 5}
        return {"input_tokens": 12, "output_tokens": 5}

    def _answer(self, model: str, anthropic: bool) -> dict:
        text = " ".join(TEXT_WORDS)
        if anthropic:
            return {
                "id": "msg_hostile",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "usage": self._anthropic_usage(model),
            }
        return {
            "id": "chatcmpl-hostile",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": self._usage(model),
        }

    async def _stream(self, ex: "Exchange", model: str, anthropic: bool) -> None:
        words = TEXT_WORDS * (self.drip_chunks // len(TEXT_WORDS) + 1)
        words = words[: self.drip_chunks] if model == "drip" else TEXT_WORDS
        await ex.start_stream()
        if anthropic:
            usage = self._anthropic_usage(model)
            await ex.event(
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": "msg_hostile",
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [],
                        "usage": {"input_tokens": usage["input_tokens"], "output_tokens": 0},
                    },
                },
            )
        for i, word in enumerate(words):
            if model == "stall" and i == 2:
                await ex.wait_for_hangup()
                return
            if model == "drip" and i:
                await asyncio.sleep(self.drip_interval)
            if anthropic:
                await ex.event(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word + " "}},
                )
            else:
                await ex.event(
                    None,
                    {
                        "id": "chatcmpl-hostile",
                        "object": "chat.completion.chunk",
                        "model": model,
                        "choices": [{"index": 0, "delta": {"content": word + " "}, "finish_reason": None}],
                    },
                )
        if anthropic:
            await ex.event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn"},
                    "usage": {"output_tokens": self._anthropic_usage(model)["output_tokens"]},
                },
            )
            await ex.event("message_stop", {"type": "message_stop"})
        else:
            base = {"id": "chatcmpl-hostile", "object": "chat.completion.chunk", "model": model}
            await ex.event(None, {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            await ex.event(None, {**base, "choices": [], "usage": self._usage(model)})
            await ex.chunk(b"data: [DONE]\n\n")
        await ex.end_stream()


def _error(code: str | None, type_: str, message: str, anthropic: bool) -> dict:
    if anthropic:
        return {"type": "error", "error": {"type": type_, "message": message}}
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


class Exchange:
    """Writes one answer on a raw connection."""

    def __init__(
        self,
        server: HostileUpstream,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        path: str,
        headers: dict[str, str],
        body: dict,
    ) -> None:
        self.server, self.reader, self.writer = server, reader, writer
        self.path, self.headers, self.body = path, headers, body

    async def raw(self, data: str | bytes) -> None:
        self.writer.write(data.encode("latin-1", errors="replace") if isinstance(data, str) else data)
        await self.writer.drain()

    async def send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
        reason = {
            200: "OK",
            302: "Found",
            401: "Unauthorized",
            403: "Forbidden",
            429: "Too Many Requests",
            500: "Internal Server Error",
        }.get(status, "Status")
        head = f"HTTP/1.1 {status} {reason}\r\n"
        for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
            head += f"{name}: {value}\r\n"
        head += f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
        await self.raw(head.encode("latin-1") + payload)

    async def json(self, status: int, obj: dict, headers: dict[str, str] | None = None) -> None:
        await self.send(status, json.dumps(obj).encode(), headers)

    async def start_stream(self) -> None:
        await self.raw(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )

    async def chunk(self, data: bytes) -> None:
        await self.raw(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    async def event(self, name: str | None, obj: dict) -> None:
        await self.chunk((f"event: {name}\n" if name else "").encode() + b"data: " + json.dumps(obj).encode() + b"\n\n")

    async def end_stream(self) -> None:
        await self.raw(b"0\r\n\r\n")

    async def wait_for_hangup(self) -> None:
        """Send nothing more; return when the client closes the connection."""
        await self.reader.read()
        self.server.disconnects += 1
