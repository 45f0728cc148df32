"""A write-ahead log for the batch writer: what a killed process must not lose.

Every event is written to a local segment file (``write`` + ``flush``: in the kernel's
hands) before it is queued for the store, so ``kill -9`` between "response sent" and "batch
stored" loses nothing; the next process on the same folder replays the leftover segments
(ids already stored are skipped). With ``fsync=True`` a power cut loses nothing either, at
the price of a disk sync per event. A segment is deleted once every event in it is stored
or spooled.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from truecost.ledger.events import CostEvent
from truecost.ledger.serialize import event_to_dict


class WriteAheadLog:
    def __init__(self, folder: str | Path, segment_events: int = 20_000, fsync: bool = False) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.segment_events, self.fsync = segment_events, fsync
        self._leftovers = sorted(self.folder.glob("wal-*.jsonl"))  # from a process that did not close cleanly
        self._closed: list[tuple[Path, int]] = []  # (segment, sequence number of its last event + 1)
        self._seq = 0
        self._open()

    def _open(self) -> None:
        self._path = self.folder / f"wal-{time.time_ns()}-{os.getpid()}.jsonl"
        self._fh = open(self._path, "a", encoding="utf-8")
        self._in_segment = 0

    def leftovers(self) -> list[Path]:
        return list(self._leftovers)

    def append(self, event: CostEvent) -> None:
        """Call under the submitter's lock, in submission order."""
        self._fh.write(json.dumps(event_to_dict(event)) + "\n")
        self._fh.flush()
        if self.fsync:
            os.fsync(self._fh.fileno())
        self._seq += 1
        self._in_segment += 1
        if self._in_segment >= self.segment_events:
            self._fh.close()
            self._closed.append((self._path, self._seq))
            self._open()

    def settled(self, settled: int) -> None:
        """Events up to sequence ``settled`` are stored or spooled: drop the segments they fill."""
        while self._closed and self._closed[0][1] <= settled:
            path, _ = self._closed.pop(0)
            path.unlink(missing_ok=True)

    def replayed(self, path: Path) -> None:
        if path in self._leftovers:
            self._leftovers.remove(path)

    def close(self, delete: bool) -> None:
        self._fh.close()
        if delete:
            for path, _ in self._closed:
                path.unlink(missing_ok=True)
            self._path.unlink(missing_ok=True)
