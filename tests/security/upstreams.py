"""A hostile OpenAI-compatible upstream on raw sockets (127.0.0.1 only), for the security suite.

The model name the gateway sends upstream (a candidate's ``upstream_model``) picks the behaviour;
anything not listed answers normally. Every request is recorded (path, headers, body text) so a test
can count the upstream calls that carry its own marker, and see the credentials the gateway sent.

Well-formed answers:
  ``ok`` (default)    a completion ``"answer #<n> from <model>"`` with usage 120 prompt (20 cached) / 30 out;
                      streams send one word per chunk, then the usage chunk when ``include_usage`` is asked
  ``refuse``          a refusal written as plain text
  ``slow``            answers after 1.5 s
  ``drip``            a stream of 60 chunks, 0.2 s apart (a client hangs up on it)
  ``drip-long``       10 chunks 0.4 s apart (4 s in all: longer than the first-byte timeout, no idle gap)
  ``stall``           2 chunks, then a 4 s silence (longer than the idle timeout), then the rest
  ``echo-usage``      bills what the request could cost at most: prompt tokens = characters of its messages,
                      tools, functions and response_format / 4; completion tokens = max_tokens (or
                      max_completion_tokens, else 16) x n
  ``usage-float``     usage with fractional token counts
  ``usage-cached-gt`` cached_tokens (500) greater than prompt_tokens (120)
  ``usage-negative``  completion_tokens -30
  ``usage-string``    prompt_tokens "lots"
Hostile answers (also on ``/embeddings``; each echoes the Authorization header it received, an org id, an internal host and path,
and ``MARKER`` -- none of which may reach a client, the ledger, the logs, the dashboard or the metrics):
  ``echo-500``, ``echo-401``, ``echo-403``, ``echo-429``  that status with an OpenAI-shaped error body
  ``error-in-200``    status 200 with an error object and no choices
  ``redirect-loop``   302 to ``/loop/<n>``, which redirects again, forever (a followed redirect shows as a
                      recorded request whose path starts with ``/loop``)
  ``bad-status``      a status line that is not HTTP (``HTTP/1.1 2OO <key>``)
  ``garbage-status``  a first line that is not a status line at all
  ``header-space``    a header name with a space in it (``Bad Header: <key>``)
  ``truncated``       Content-Length 5000, 40 bytes sent, connection closed
  ``invalid-json``    status 200, a body that is not JSON (and holds the key)
  ``bad-chunked``     Transfer-Encoding: chunked with an invalid chunk size
  ``close``           closes the connection without answering
  ``stream-garbage``  one good chunk, then a data line that is not JSON
  ``stream-error``    one good chunk, then an SSE error object
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading
import time

USAGE = {
    "prompt_tokens": 120,
    "completion_tokens": 30,
    "total_tokens": 150,
    "prompt_tokens_details": {"cached_tokens": 20},
}
ORG = "org-CanaryOrg7Qx2"
INTERNAL = "http://10.23.45.67:8443/internal/v2 at /srv/openai-proxy/app/handlers.py line 88"
MARKER = "UPSTREAM-BODY-MARKER-c0ffee"
REFUSAL = "I'm sorry, but I can't help with that request."


# on /embeddings these models answer as they do on /chat/completions; any other model gets embeddings
_HOSTILE_EMBED = frozenset(
    {
        "echo-500",
        "echo-401",
        "echo-403",
        "echo-429",
        "error-in-200",
        "redirect-loop",
        "bad-status",
        "garbage-status",
        "header-space",
        "truncated",
        "invalid-json",
        "bad-chunked",
        "close",
    }
)


class _Handler(socketserver.BaseRequestHandler):
    server: "_Server"

    def handle(self) -> None:
        sock = self.request
        sock.settimeout(20)
        try:
            head, body = self._read_request(sock)
        except (OSError, ValueError):
            return
        lines = head.split("\r\n")
        method, path = (lines[0].split(" ") + ["", ""])[:2]
        headers = {}
        for ln in lines[1:]:
            if ":" in ln:
                k, v = ln.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        text = body.decode("utf-8", "replace")
        try:
            doc = json.loads(text) if text else {}
        except ValueError:
            doc = {}
        rec = {
            "method": method,
            "path": path,
            "headers": headers,
            "body": text,
            "model": doc.get("model", "") if isinstance(doc, dict) else "",
            "cancelled": False,
        }
        up = self.server.owner
        with up.lock:
            up.requests.append(rec)
            n = len(up.requests)
        try:
            if path.startswith("/loop"):  # a followed redirect: keep looping
                port = sock.getsockname()[1]
                return self._send(sock, "302 Found", b"", extra=f"Location: http://127.0.0.1:{port}/loop/{n}\r\n")
            if path.endswith("/embeddings") and (not isinstance(doc, dict) or doc.get("model") not in _HOSTILE_EMBED):
                self._embeddings(sock, doc)
            else:
                self._chat(sock, doc if isinstance(doc, dict) else {}, headers, n, rec)
        except OSError:  # the gateway hung up on us
            rec["cancelled"] = True

    # -- reading ------------------------------------------------------------------------------------
    @staticmethod
    def _read_request(sock) -> tuple[str, bytes]:
        buf = b""
        while b"\r\n\r\n" not in buf:
            part = sock.recv(65536)
            if not part:
                raise ValueError("closed before the headers ended")
            buf += part
            if len(buf) > 1 << 20:
                raise ValueError("headers too large")
        head, _, rest = buf.partition(b"\r\n\r\n")
        head_text = head.decode("latin-1")
        length = 0
        chunked = False
        for ln in head_text.split("\r\n")[1:]:
            k, _, v = ln.partition(":")
            if k.strip().lower() == "content-length":
                length = int(v.strip())
            if k.strip().lower() == "transfer-encoding" and "chunked" in v.lower():
                chunked = True
        if chunked:
            while not rest.endswith(b"0\r\n\r\n"):
                part = sock.recv(65536)
                if not part:
                    break
                rest += part
            body, data = b"", rest
            while data:
                size_line, _, data = data.partition(b"\r\n")
                size = int(size_line.split(b";")[0] or b"0", 16)
                if size == 0:
                    break
                body += data[:size]
                data = data[size + 2 :]
            return head_text, body
        while len(rest) < length:
            part = sock.recv(65536)
            if not part:
                break
            rest += part
        return head_text, rest[:length]

    # -- writing ------------------------------------------------------------------------------------
    @staticmethod
    def _send(sock, status: str, body: bytes, ctype: str = "application/json", extra: str = "") -> None:
        sock.sendall(
            (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                f"{extra}Connection: close\r\n\r\n"
            ).encode("latin-1")
            + body
        )

    def _hostile_error(self, auth: str, status: int) -> bytes:
        return json.dumps(
            {
                "error": {
                    "message": f"{MARKER}: Incorrect API key provided: {auth}. Organization {ORG}. Upstream {INTERNAL}",
                    "type": "invalid_request_error" if status < 500 else "server_error",
                    "code": "invalid_api_key" if status in (401, 403) else None,
                    "param": None,
                }
            }
        ).encode()

    def _embeddings(self, sock, doc) -> None:
        inp = doc.get("input") if isinstance(doc, dict) else None
        items = inp if isinstance(inp, list) else [inp]
        body = {
            "object": "list",
            "model": doc.get("model"),
            "data": [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]} for i in range(len(items))],
            "usage": {"prompt_tokens": 8 * len(items), "total_tokens": 8 * len(items)},
        }
        self._send(sock, "200 OK", json.dumps(body).encode())

    def _chat(self, sock, doc: dict, headers: dict, n: int, rec: dict) -> None:
        model = str(doc.get("model", ""))
        auth = headers.get("authorization", "") or headers.get("x-api-key", "")
        hostile = {"echo-500": 500, "echo-401": 401, "echo-403": 403, "echo-429": 429}
        if model in hostile:
            st = hostile[model]
            reason = {500: "Internal Server Error", 401: "Unauthorized", 403: "Forbidden", 429: "Too Many Requests"}[st]
            extra = f"X-Debug-Auth: {auth}\r\nX-Org: {ORG}\r\n" + ("Retry-After: 0\r\n" if st == 429 else "")
            return self._send(sock, f"{st} {reason}", self._hostile_error(auth, st), extra=extra)
        if model == "error-in-200":
            return self._send(sock, "200 OK", self._hostile_error(auth, 500))
        if model == "redirect-loop":
            port = sock.getsockname()[1]
            return self._send(sock, "302 Found", b"", extra=f"Location: http://127.0.0.1:{port}/loop/{n}\r\n")
        if model == "bad-status":
            return sock.sendall(f"HTTP/1.1 2OO {auth}\r\nContent-Length: 2\r\n\r\n{{}}".encode())
        if model == "garbage-status":
            return sock.sendall(f"HELLO {auth} {ORG}\r\n\r\n".encode())
        if model == "header-space":
            body = self._completion(model, n)
            return sock.sendall(
                (
                    f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nBad Header: {auth}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                ).encode()
                + body
            )
        if model == "truncated":
            return sock.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n"
                + b'{"id": "x", "choices": [{"index": 0, "me'
            )
        if model == "invalid-json":
            return self._send(sock, "200 OK", f"<html>{MARKER} not json {auth} {INTERNAL}</html>".encode())
        if model == "bad-chunked":
            return sock.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                + f"zz-{auth}\r\nhello\r\n".encode()
            )
        if model == "close":
            return None
        if model == "slow":
            time.sleep(1.5)
        if doc.get("stream"):
            return self._stream(sock, doc, model, n, auth)
        return self._send(sock, "200 OK", self._completion(model, n, doc))

    @staticmethod
    def _usage(model: str, doc: dict | None = None) -> dict:
        if model == "echo-usage" and doc is not None:
            prompt = (
                len(json.dumps({k: doc[k] for k in ("messages", "tools", "functions", "response_format") if k in doc}))
                // 4
            )
            out = int(doc.get("max_tokens") or doc.get("max_completion_tokens") or 16) * int(doc.get("n") or 1)
            return {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out}
        if model == "usage-float":
            return {"prompt_tokens": 120.5, "completion_tokens": 30.25, "total_tokens": 150.75}
        if model == "usage-cached-gt":
            return {
                "prompt_tokens": 120,
                "completion_tokens": 30,
                "total_tokens": 150,
                "prompt_tokens_details": {"cached_tokens": 500},
            }
        if model == "usage-negative":
            return {"prompt_tokens": 120, "completion_tokens": -30, "total_tokens": 90}
        if model == "usage-string":
            return {"prompt_tokens": "lots", "completion_tokens": 30, "total_tokens": 150}
        return USAGE

    def _text(self, model: str, n: int) -> str:
        return REFUSAL if model == "refuse" else f"answer #{n} from {model}"

    def _completion(self, model: str, n: int, doc: dict | None = None) -> bytes:
        return json.dumps(
            {
                "id": f"cmpl-{n}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": self._text(model, n)},
                        "finish_reason": "stop",
                    }
                ],
                "usage": self._usage(model, doc),
            }
        ).encode()

    def _stream(self, sock, doc: dict, model: str, n: int, auth: str) -> None:
        sock.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Connection: close\r\n\r\n"
        )
        base = {"id": f"cmpl-{n}", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}

        def chunk(text: str | None, finish: str | None = None) -> bytes:
            delta = {"content": text} if text is not None else {}
            return f"data: {json.dumps({**base, 'choices': [{'index': 0, 'delta': delta, 'finish_reason': finish}]})}\n\n".encode()

        if model == "drip":
            words, gap = [f"w{i} " for i in range(60)], 0.2
        elif model == "drip-long":
            words, gap = [f"w{i} " for i in range(10)], 0.4
        else:
            words, gap = [w + " " for w in self._text(model, n).split(" ")], 0.0
        for i, w in enumerate(words):
            if model == "stall" and i == 2:
                time.sleep(4.0)
            if model == "stream-garbage" and i == 1:
                sock.sendall(f"data: {{not json {auth} {MARKER}\n\n".encode())
                return
            if model == "stream-error" and i == 1:
                sock.sendall(b"data: " + self._hostile_error(auth, 500) + b"\n\n")
                return
            if gap:
                time.sleep(gap)
            sock.sendall(chunk(w))
        sock.sendall(chunk(None, "stop"))
        if (doc.get("stream_options") or {}).get("include_usage"):
            sock.sendall(f"data: {json.dumps({**base, 'choices': [], 'usage': self._usage(model, doc)})}\n\n".encode())
        sock.sendall(b"data: [DONE]\n\n")


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256
    owner: "HostileUpstream"


class HostileUpstream:
    """``with HostileUpstream() as up: up.url`` -- the base URL to put in the gateway's config is ``up.url + "/v1"``."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "HostileUpstream":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def calls(self, marker: str | None = None, model: str | None = None) -> list[dict]:
        """The recorded requests whose body holds ``marker`` and/or whose model is ``model``."""
        with self.lock:
            return [
                r
                for r in self.requests
                if (marker is None or marker in r["body"]) and (model is None or r["model"] == model)
            ]


def refusing_socket() -> socket.socket:
    """A loopback socket bound and never listening: connections to its port are refused while it stays open."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s
