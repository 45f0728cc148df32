"""The OTLP/HTTP trace receiver: ``POST /v1/traces`` (protobuf or JSON), priced into the ledger.

    from truecost.integrations.otlp_receiver import otlp_routes
    routes += otlp_routes(tracker, config, authorize=check_key)   # on any Starlette app

Events go to the tracker's sinks (the gateway's and ``truecost collect``'s BatchWriter, with
its spool and write-ahead log). A payload is decoded and mapped whole before any of it is
handed on, so a malformed payload gets a 400 (an OTLP ``Status`` in the request's encoding)
and changes nothing; spans that cannot be steps are reported in ``partial_success``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

from truecost.errors import LedgerError, MissingExtraError
from truecost.integrations.otlp_config import IngestGrant, IngestLimited, OTLPConfig
from truecost.integrations.otlp_decode import JSON, PROTOBUF, OTLPPayloadError, decode, decompress
from truecost.integrations.otlp_map import MapStats, SpanMapper
from truecost.types import Attribution

MAX_BODY_BYTES = 16 * 1024 * 1024
INLINE_BYTES = 32 * 1024  # bigger payloads are decoded off the event loop
_INVALID_ARGUMENT, _UNAUTHENTICATED, _UNAVAILABLE, _RESOURCE_EXHAUSTED = 3, 16, 14, 8

Authorize = Callable[[Any], "Attribution | IngestGrant | None | Awaitable[Attribution | IngestGrant | None]"]


@dataclass(slots=True)
class ExportResult:
    accepted: int
    rejected: int
    message: str
    batch: MapStats


class PayloadJournal:
    """The receiver's write-ahead log: each accepted export body on disk until its events are stored.

    One file per payload (a JSON header line, then the body as received), written before the
    exporter is answered and deleted once the ledger writer has stored or spooled everything
    handed to it up to that payload, so ``kill -9`` after a 200 loses nothing: the next receiver
    on the same folder replays what is left (event ids are deterministic, so nothing counts
    twice). One write per payload instead of one per event keeps the hot path cheap.
    """

    def __init__(self, folder: str | Path, fsync: bool = False) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self._pending: deque[tuple[tuple[int, ...], Path]] = deque()  # (writer marks, file), in order
        self._lock = threading.Lock()

    def leftovers(self) -> list[Path]:
        return sorted(self.folder.glob("otlp-*.bin"))

    def write(self, body: bytes, content_type: str | None, encoding: str | None, grant: IngestGrant | None) -> Path:
        header = {"content_type": content_type, "content_encoding": encoding, "pinned": None}
        if grant is not None:
            header.update(grant.as_dict())
        path = self.folder / f"otlp-{time.time_ns():020d}-{os.getpid()}-{threading.get_ident()}.bin"
        with open(path, "wb") as fh:
            fh.write(json.dumps(header).encode() + b"\n" + body)
            fh.flush()
            if self.fsync:
                os.fsync(fh.fileno())
        return path

    @staticmethod
    def read(path: Path) -> tuple[bytes, str | None, str | None, IngestGrant | None]:
        raw = path.read_bytes()
        head, _, body = raw.partition(b"\n")
        h = json.loads(head)
        return body, h.get("content_type"), h.get("content_encoding"), IngestGrant.from_dict(h)

    def handed_on(self, path: Path, marks: tuple[int, ...]) -> None:
        """The payload's events are with the writers; ``marks``: each writer's submitted count to wait for
        (empty: the sinks store synchronously, so it is stored already)."""
        if not marks:
            path.unlink(missing_ok=True)
            return
        with self._lock:
            self._pending.append((marks, path))

    def settle(self, settled: tuple[int, ...]) -> None:
        with self._lock:
            while self._pending and all(s >= m for s, m in zip(settled, self._pending[0][0])):
                _, path = self._pending.popleft()
                path.unlink(missing_ok=True)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)


def _writer_counts(sink: Any) -> tuple[int, int] | None:
    """(settled, submitted) of a BatchWriter-like sink, read so that submitted is never underestimated."""
    if not all(hasattr(sink, a) for a in ("pending", "written", "spooled", "lost")):
        return None
    pending = sink.pending
    settled = sink.written + sink.spooled + sink.lost
    return settled, settled + pending


class OTLPReceiver:
    """Decode, de-duplicate, map and hand on. Safe to call from several threads."""

    def __init__(
        self,
        tracker: Any,
        config: OTLPConfig | None = None,
        *,
        dedupe_window: int = 200_000,
        journal_dir: str | Path | None = None,
    ) -> None:
        self.tracker = tracker
        self.journal = PayloadJournal(journal_dir) if journal_dir else None
        self.mapper = SpanMapper(tracker, config)
        self.totals = MapStats()
        self.payloads = 0
        self.bad_payloads = 0
        self._seen: dict[str, None] = {}
        self._window = dedupe_window
        self._lock = threading.Lock()

    def ingest(
        self,
        body: bytes,
        content_type: str | None,
        content_encoding: str | None = None,
        pinned: Attribution | IngestGrant | None = None,
        *,
        journal: bool = True,
    ) -> ExportResult:
        """One export request from the sender ``pinned`` describes (an Attribution: its set fields are
        pinned). Raises OTLPPayloadError (nothing stored) or LedgerError (writer closed)."""
        grant = IngestGrant.of(pinned)
        sender = grant.principal + "\0" if grant is not None else ""
        try:
            spans = decode(decompress(body, content_encoding), content_type)
        except OTLPPayloadError:
            with self._lock:
                self.bad_payloads += 1
            raise
        if journal and grant is not None and grant.admit is not None:
            grant.admit(len(spans))  # IngestLimited: nothing journaled, nothing written
        entry = self.journal.write(body, content_type, content_encoding, grant) if journal and self.journal else None
        batch = MapStats()
        batch.spans = len(spans)
        problems: dict[str, int] = {}
        fresh, keys = [], []
        with self._lock:
            seen = self._seen
            for s in spans:
                problem = s.problem()
                if problem is not None:
                    problems[problem] = problems.get(problem, 0) + 1
                    continue
                key = sender + s.trace_id + s.span_id
                if key in seen:
                    batch.duplicates += 1
                    continue
                seen[key] = None  # claimed now, released below if the hand-off fails
                keys.append(key)
                fresh.append(s)
        batch.rejected = sum(problems.values())
        try:
            events = self.mapper.map(fresh, grant, batch)
            self._emit(events)
        except BaseException:
            with self._lock:
                for key in keys:
                    self._seen.pop(key, None)
            if entry is not None:
                entry.unlink(missing_ok=True)  # not acknowledged: the exporter retries it
            raise
        if entry is not None:
            self._journaled(entry)
        with self._lock:
            while len(self._seen) > self._window:
                self._seen.pop(next(iter(self._seen)))
            self.payloads += 1
            self.totals.add(batch)
        message = "; ".join(f"{n} span(s): {p}" for p, n in problems.items())
        return ExportResult(accepted=len(events), rejected=batch.rejected, message=message, batch=batch)

    def _counts(self) -> list[tuple[int, int]]:
        return [c for c in (_writer_counts(s) for s in self.tracker.sinks) if c is not None]

    def _journaled(self, entry: Path) -> None:
        if self.journal is None:  # entries come from the journal: without one there are none
            raise RuntimeError(f"journal entry {entry} but this receiver keeps no journal")
        self.journal.handed_on(entry, tuple(submitted for _, submitted in self._counts()))
        self.settle_journal()

    def settle_journal(self) -> None:
        if self.journal is not None:
            self.journal.settle(tuple(settled for settled, _ in self._counts()))

    def replay_journal(self) -> int:
        """Ingest the payloads a previous receiver accepted but may not have stored; returns how many."""
        if self.journal is None:
            return 0
        n = 0
        for path in self.journal.leftovers():
            try:
                body, ctype, encoding, pinned = PayloadJournal.read(path)
                self.ingest(body, ctype, encoding, pinned, journal=False)
            except (OTLPPayloadError, ValueError, OSError):
                path.rename(path.with_suffix(".bad"))  # kept for inspection, not replayed again
                continue
            self._journaled(path)
            n += 1
        return n

    def _emit(self, events: list) -> None:
        for sink in self.tracker.sinks:  # a sink is a callable of one event (BatchWriter's submit_many loops too)
            for e in events:
                sink(e)

    def stats(self) -> dict[str, Any]:
        self.settle_journal()
        with self._lock:
            out = {"payloads": self.payloads, "bad_payloads": self.bad_payloads, **self.totals.as_dict()}
        if self.journal is not None:
            out["journal_pending"] = self.journal.pending
        return out


# -- wire encodings of the answers ---------------------------------------------------------
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def status_body(code: int, message: str, as_json: bool) -> bytes:
    """A google.rpc.Status (what OTLP/HTTP servers answer errors with), in the request's encoding."""
    if as_json:
        return json.dumps({"code": code, "message": message}).encode()
    text = message.encode("utf-8")
    return b"\x08" + _varint(code) + b"\x12" + _varint(len(text)) + text


def success_body(result: ExportResult, as_json: bool) -> bytes:
    """An ExportTraceServiceResponse, with partial_success when some spans were rejected."""
    if as_json:
        if not result.rejected:
            return b"{}"
        return json.dumps(
            {"partialSuccess": {"rejectedSpans": str(result.rejected), "errorMessage": result.message}}
        ).encode()
    if not result.rejected:
        return b""
    text = result.message.encode("utf-8")
    inner = b"\x08" + _varint(result.rejected) + b"\x12" + _varint(len(text)) + text
    return b"\x0a" + _varint(len(inner)) + inner


# -- Starlette ------------------------------------------------------------------------------
async def _read_body(request: Any, limit: int) -> bytes | None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def _authorized(authorize: Authorize | None, request: Any) -> tuple[bool, Attribution | IngestGrant | None]:
    if authorize is None:
        return True, None
    result = authorize(request)
    if inspect.isawaitable(result):
        result = await result
    return result is not None, result


def make_endpoint(
    receiver: OTLPReceiver, *, authorize: Authorize | None = None, max_body_bytes: int = MAX_BODY_BYTES
) -> Callable:
    from starlette.responses import Response

    async def traces(request: Any) -> Any:
        ctype = request.headers.get("content-type") or ""
        as_json = ctype.split(";", 1)[0].strip().lower() == JSON
        media = JSON if as_json else PROTOBUF

        def answer(status: int, code: int, message: str, headers: dict[str, str] | None = None) -> Any:
            if status == 401:
                headers = {"www-authenticate": "Bearer"}
            return Response(status_body(code, message, as_json), status_code=status, media_type=media, headers=headers)

        ok, pinned = await _authorized(authorize, request)
        if not ok:
            return answer(401, _UNAUTHENTICATED, "a valid ingest key is needed (Authorization: Bearer ...)")
        body = await _read_body(request, max_body_bytes)
        if body is None:
            return answer(413, _INVALID_ARGUMENT, f"payload larger than {max_body_bytes} bytes; export smaller batches")
        encoding = request.headers.get("content-encoding")
        try:
            if len(body) > INLINE_BYTES:
                result = await asyncio.to_thread(receiver.ingest, body, ctype, encoding, pinned or None)
            else:
                result = receiver.ingest(body, ctype, encoding, pinned or None)
        except OTLPPayloadError as exc:
            return answer(exc.status, _INVALID_ARGUMENT, str(exc))
        except IngestLimited as exc:
            if exc.retry_after is None:  # more spans in one export than a minute allows: retrying cannot help
                return answer(400, _INVALID_ARGUMENT, f"{exc}; export smaller batches")
            return answer(429, _RESOURCE_EXHAUSTED, str(exc), {"retry-after": exc.retry_after})
        except MissingExtraError as exc:
            return answer(415, _INVALID_ARGUMENT, f"{exc}; or send {JSON}")
        except LedgerError as exc:
            return answer(503, _UNAVAILABLE, f"the ledger writer is not accepting events ({exc}); retry later")
        return Response(success_body(result, as_json), status_code=200, media_type=media)

    traces.receiver = receiver  # type: ignore[attr-defined]
    return traces


def otlp_routes(
    tracker: Any,
    config: OTLPConfig | None = None,
    *,
    authorize: Authorize | None = None,
    path: str = "/v1/traces",
    max_body_bytes: int = MAX_BODY_BYTES,
    receiver: OTLPReceiver | None = None,
    journal_dir: str | Path | None = None,
) -> list:
    """``[Route(path, POST)]`` for a Starlette app. ``authorize(request)`` returns the sender's IngestGrant
    (which attribution fields spans may state, and who sent them) or an Attribution to pin (fields the
    sender cannot override), or None to refuse with 401; omit it for no check.
    ``journal_dir``: keep each payload on disk until stored (not needed when the tracker's
    BatchWriter has its own write-ahead log, as the gateway's does)."""
    from starlette.routing import Route

    if receiver is None:
        receiver = OTLPReceiver(tracker, config, journal_dir=journal_dir)
        receiver.replay_journal()
    endpoint = make_endpoint(receiver, authorize=authorize, max_body_bytes=max_body_bytes)
    return [Route(path, endpoint, methods=["POST"])]


def otlp_app(
    tracker: Any,
    config: OTLPConfig | None = None,
    *,
    authorize: Authorize | None = None,
    on_shutdown: tuple[Callable, ...] = (),
    max_body_bytes: int = MAX_BODY_BYTES,
    journal_dir: str | Path | None = None,
) -> Any:
    """The receiver as its own app (``truecost collect``): POST /v1/traces, GET /healthz, GET /stats.
    With ``journal_dir``, payloads a killed receiver left unstored are replayed first."""
    import contextlib

    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    receiver = OTLPReceiver(tracker, config, journal_dir=journal_dir)
    receiver.replay_journal()

    async def stats(request: Any) -> Any:
        ok, _ = await _authorized(authorize, request)
        if not ok:
            return JSONResponse({"error": "a valid ingest key is needed"}, status_code=401)
        writer = tracker.sinks[0] if tracker.sinks else None
        out = receiver.stats()
        for attr in ("written", "spooled", "pending", "failures", "lost"):
            if hasattr(writer, attr):
                out.setdefault("ledger", {})[attr] = getattr(writer, attr)
        return JSONResponse(out)

    async def healthz(request: Any) -> Any:
        return JSONResponse({"status": "ok"})

    @contextlib.asynccontextmanager
    async def lifespan(app: Any):
        yield
        for fn in on_shutdown:
            fn()
        receiver.settle_journal()

    routes = otlp_routes(tracker, config, authorize=authorize, receiver=receiver, max_body_bytes=max_body_bytes)
    app = Starlette(
        routes=[*routes, Route("/stats", stats, methods=["GET"]), Route("/healthz", healthz, methods=["GET"])],
        lifespan=lifespan,
    )
    app.state.receiver = receiver
    return app
