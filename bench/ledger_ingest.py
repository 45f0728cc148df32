"""Ledger ingest through the BatchWriter into SQLite, beside a naive insert-and-commit per event.

Prints JSON: events/s for both, and their ratio. Target: >= 50,000 events/s (batch writer).
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, make_events  # noqa: E402

from truecost.ledger import BatchWriter  # noqa: E402
from truecost.ledger.sqlite import SQLiteLedgerStore, _row  # noqa: E402


def batch_writer_rate(events, folder: Path) -> float:
    store = SQLiteLedgerStore(folder / "batch.db")
    writer = BatchWriter(store, batch_size=5_000, interval=0.05)
    t0 = time.perf_counter()
    for e in events:
        writer.submit(e)
    assert writer.flush(timeout=600)
    elapsed = time.perf_counter() - t0
    writer.close()
    assert store.count() == len(events)
    store.close()
    return len(events) / elapsed


def naive_rate(events, folder: Path) -> float:
    store = SQLiteLedgerStore(folder / "naive.db")
    store.close()
    conn = sqlite3.connect(folder / "naive.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    cols = len(_row(events[0]))
    sql = f"INSERT INTO cost_events VALUES ({','.join('?' * cols)})"
    t0 = time.perf_counter()
    for e in events:
        conn.execute("BEGIN")
        conn.execute(sql, _row(e))
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    conn.close()
    return len(events) / elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--naive-events", type=int, default=20_000)
    args = ap.parse_args()
    events = make_events(args.events)
    with tempfile.TemporaryDirectory() as d:
        batch = batch_writer_rate(events, Path(d))
        naive = naive_rate(events[: args.naive_events], Path(d))
    emit(
        {
            "benchmark": "ledger_ingest",
            "events": args.events,
            "batch_writer_events_per_s": round(batch),
            "naive_commit_per_event_events_per_s": round(naive),
            "ratio_batch_vs_naive": round(batch / naive, 2),
            "target_events_per_s": 50_000,
            "meets_target": batch >= 50_000,
        }
    )


if __name__ == "__main__":
    main()
