"""BatchWriter: takes events off the hot path and appends them to a store in batches.

Like OpenTelemetry's batch span processor: a bounded buffer, a background thread that
flushes on size and on interval, and a final flush on close. A failing store never loses
events: the batch is retried with backoff, and whatever is still unstored at close is
spooled to a JSON Lines file that ``replay_spool`` appends later.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Iterable

from truecost.errors import LedgerError
from truecost.ledger.events import CostEvent
from truecost.ledger.serialize import event_from_dict, event_to_dict
from truecost.ledger.store import LedgerStore
from truecost.ledger.wal import WriteAheadLog


class BatchWriter:
    def __init__(
        self,
        store: LedgerStore,
        *,
        batch_size: int = 2_000,
        interval: float = 0.25,
        max_queue: int = 200_000,
        spool_path: str | Path | None = None,
        max_backoff: float = 5.0,
        wal_dir: str | Path | None = None,
    ) -> None:
        self.store = store
        self.batch_size = batch_size
        self.interval = interval
        self.max_queue = max_queue
        self.spool_path = Path(spool_path) if spool_path else None
        self.max_backoff = max_backoff
        self._buf: deque[CostEvent] = deque()
        self._cond = threading.Condition()
        self._submitted = 0
        self._settled = 0  # written or spooled
        self.written = 0
        self.spooled = 0
        self.failures = 0
        self.lost = 0
        self.replayed = 0  # spooled events appended after the store came back
        self._spool_pending = bool(self.spool_path and self.spool_path.exists())
        self.last_error: str | None = None
        self._stopping = False
        self._wal = WriteAheadLog(wal_dir) if wal_dir else None
        self._submit_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="truecost-ledger-writer", daemon=True)
        self._thread.start()

    # -- producer side (hot path) ------------------------------------------------------
    def submit(self, event: CostEvent) -> None:
        if self._stopping:
            raise LedgerError("BatchWriter is closed")
        buf = self._buf
        if len(buf) >= self.max_queue:
            with self._cond:  # backpressure, never a silent drop
                self._cond.notify_all()
                while len(buf) >= self.max_queue and not self._stopping:
                    self._cond.wait(0.05)
        if self._wal is not None:
            with self._submit_lock:  # the log's order is the queue's order
                self._wal.append(event)
                buf.append(event)
                self._submitted += 1
        else:
            buf.append(event)
            self._submitted += 1
        if len(buf) == self.batch_size:
            with self._cond:
                self._cond.notify_all()

    def submit_many(self, events: Iterable[CostEvent]) -> None:
        for e in events:
            self.submit(e)

    __call__ = submit

    # -- control ----------------------------------------------------------------------
    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until everything submitted so far is stored (or spooled). True on success."""
        target = self._submitted
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._cond.notify_all()
            while self._settled < target:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(min(remaining or 0.05, 0.05))
                self._cond.notify_all()
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Store what is buffered (one last attempt), spool what the store refuses, stop."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)
        if self._wal is not None:
            self._wal.close(delete=self._settled >= self._submitted)

    @property
    def pending(self) -> int:
        return self._submitted - self._settled

    # -- consumer side ----------------------------------------------------------------
    def _take(self) -> list[CostEvent]:
        buf = self._buf
        batch: list[CostEvent] = []
        while buf and len(batch) < self.batch_size:
            batch.append(buf.popleft())
        return batch

    def _run(self) -> None:
        backoff = 0.0
        retry: list[CostEvent] = []
        if self._spool_pending or (self._wal is not None and self._wal.leftovers()):
            self._replay()  # a spool or a write-ahead log left by a crash or an outage: replay it first
        while True:
            with self._cond:
                if not retry and len(self._buf) < self.batch_size and not self._stopping:
                    self._cond.wait(self.interval if backoff == 0 else backoff)
                stopping = self._stopping
            batch = retry or self._take()
            if not batch:
                if stopping:
                    return
                continue
            try:
                self.store.append(batch)
            except Exception as exc:  # the store failed: make the batch durable (spool) or keep it, back off
                self.failures += 1
                self.last_error = str(exc)
                if stopping:
                    self._spool(batch + self._take_all())
                    retry = []
                    continue
                if self.spool_path is not None:
                    self._spool(batch)  # on disk now; replayed once the store answers again
                    retry = []
                else:
                    retry = batch
                backoff = min(max(backoff * 2, 0.05), self.max_backoff)
                continue
            retry, backoff = [], 0.0
            self.written += len(batch)
            with self._cond:
                self._settled += len(batch)
                self._cond.notify_all()
            if self._wal is not None:
                self._wal.settled(self._settled)
            if self._spool_pending or (self._wal is not None and self._wal.leftovers()):
                self._replay()

    def _replay(self) -> None:
        """The store answers: append what was spooled or logged but not stored (duplicates skipped)."""
        try:
            if self._wal is not None:
                for path in self._wal.leftovers():
                    self.replayed += replay_spool(path, self.store)
                    self._wal.replayed(path)
            if self._spool_pending and self.spool_path is not None:
                self.replayed += replay_spool(self.spool_path, self.store)
                self._spool_pending = False
        except Exception as exc:  # still failing: the files stay on disk, tried again after the next success
            self.last_error = str(exc)

    def _take_all(self) -> list[CostEvent]:
        out = []
        while self._buf:
            out.append(self._buf.popleft())
        return out

    def _spool(self, events: list[CostEvent]) -> None:
        if not events:
            return
        if self.spool_path is None:
            self.lost += len(events)
            self.last_error = f"{self.last_error}; {len(events)} events NOT stored and no spool_path configured"
            print(f"truecost: ledger writer: {self.last_error}", file=sys.stderr)
            with self._cond:
                self._settled += len(events)
                self._cond.notify_all()
            return
        self.spool_path.parent.mkdir(parents=True, exist_ok=True)
        self._spool_pending = True
        with open(self.spool_path, "a", encoding="utf-8") as fh:
            for e in events:
                fh.write(json.dumps(event_to_dict(e)) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.spooled += len(events)
        with self._cond:
            self._settled += len(events)
            self._cond.notify_all()


def replay_spool(path: str | Path, store: LedgerStore) -> int:
    """Append a spool file's events to ``store`` (skipping ids already there) and remove it."""
    p = Path(path)
    if not p.exists():
        return 0
    lines = [line for line in p.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    events = []
    for n, line in enumerate(lines):
        try:
            events.append(event_from_dict(json.loads(line)))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            if n != len(lines) - 1:
                raise LedgerError(f"{p}: line {n + 1} is not an event; the file is kept for inspection") from None
            # the last line of a file whose writer was killed mid-write: that event was never acknowledged
    stored = _append_new(store, events)
    p.unlink()
    return stored


def _append_new(store: LedgerStore, events: list[CostEvent]) -> int:
    """Append, skipping events already stored (a replay after a crash that had stored part of the file).

    A refused append writes nothing, so on a duplicate the batch is halved and each half tried again: new
    events go in large appends, and only stored ones are narrowed down to single appends (about two per
    stored event, plus log n per run), instead of one commit per event of the file."""
    if not events:
        return 0
    try:
        store.append(events)
        return len(events)
    except LedgerError as exc:
        if len(events) == 1:
            if "duplicate" in str(exc).lower() or "unique" in str(exc).lower():
                return 0
            raise
    mid = len(events) // 2
    return _append_new(store, events[:mid]) + _append_new(store, events[mid:])
