"""The write-ahead log: a killed writer process loses nothing it accepted."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timezone
from decimal import Decimal

from truecost.ledger import BatchWriter, CostEvent
from truecost.ledger.sqlite import SQLiteLedgerStore

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)


def ev(i):
    return CostEvent(id=f"w{i}", request_id=f"r{i}", ts=T0, step="generate", cost=Decimal("0.001"))


def test_kill_9_loses_nothing_the_writer_accepted(tmp_path):
    db, wal, acked = tmp_path / "l.db", tmp_path / "wal", tmp_path / "acked.txt"
    # a child accepts events as fast as it can (into a store that is slow to write), prints each id once
    # submit() returned, and is killed with SIGKILL mid-stream
    code = textwrap.dedent(f"""
        import sys, time
        from datetime import datetime, timezone
        from decimal import Decimal
        from truecost.ledger import BatchWriter, CostEvent
        from truecost.ledger.sqlite import SQLiteLedgerStore
        class Slow(SQLiteLedgerStore):
            def append(self, events):
                time.sleep(0.2)
                super().append(events)
        w = BatchWriter(Slow({str(db)!r}), batch_size=50, interval=0.05, wal_dir={str(wal)!r})
        out = open({str(acked)!r}, "a")
        for i in range(100000):
            w.submit(CostEvent(id=f"k{{i}}", request_id=f"r{{i}}", ts=datetime(2026, 11, 1, tzinfo=timezone.utc),
                               step="generate", cost=Decimal("0.001")))
            out.write(f"k{{i}}\\n"); out.flush()
            time.sleep(0.0005)
    """)
    child = subprocess.Popen([sys.executable, "-c", code])
    time.sleep(2.0)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    accepted = set(acked.read_text().split())
    store = SQLiteLedgerStore(db)
    stored_before = {e.id for e in store.query()}
    assert len(accepted) > len(stored_before)  # the kill did leave accepted events unstored
    # the next process on the same folder replays the log
    w = BatchWriter(store, batch_size=50, interval=0.05, wal_dir=wal)
    deadline = time.time() + 20
    while w.replayed == 0 and time.time() < deadline:
        time.sleep(0.05)
    w.close()
    ids = [e.id for e in store.query()]
    assert accepted <= set(ids)  # every acknowledged event is in the ledger
    assert len(ids) == len(set(ids))  # and none twice
    assert not list(wal.glob("wal-*.jsonl"))  # a clean close leaves no log behind
    store.close()


def test_segments_are_dropped_once_stored(tmp_path):
    store = SQLiteLedgerStore(tmp_path / "l.db")
    w = BatchWriter(store, batch_size=10, interval=0.01, wal_dir=tmp_path / "wal")
    w._wal.segment_events = 25
    w.submit_many([ev(i) for i in range(200)])
    assert w.flush(10)
    w.submit(ev(999))  # a success after the flush lets the writer drop the filled segments
    assert w.flush(10)
    time.sleep(0.1)
    assert len(list((tmp_path / "wal").glob("wal-*.jsonl"))) <= 2
    w.close()
    assert store.aggregate([])[0].events == 201
    store.close()


def test_a_replay_appends_new_events_in_bulk_around_stored_ones(tmp_path):
    import json as _json
    from datetime import datetime, timezone
    from decimal import Decimal

    from truecost.ledger import CostEvent
    from truecost.ledger.serialize import event_to_dict
    from truecost.ledger.writer import replay_spool

    class Counting(SQLiteLedgerStore):
        calls = 0

        def append(self, events):
            Counting.calls += 1
            super().append(events)

    events = [
        CostEvent(
            id=f"e{i}",
            request_id=f"r{i}",
            ts=datetime(2026, 11, 1, tzinfo=timezone.utc),
            step="generate",
            cost=Decimal("0.001"),
        )
        for i in range(2000)
    ]
    store = Counting(tmp_path / "l.db")
    store.append(events[:300])  # a crash had stored the first batches of the file
    store.append(events[900:950])
    spool = tmp_path / "wal-1.jsonl"
    spool.write_text("".join(_json.dumps(event_to_dict(e)) + "\n" for e in events))
    Counting.calls = 0
    assert replay_spool(spool, store) == 2000 - 350
    ids = [e.id for e in store.query()]
    assert sorted(ids) == sorted(e.id for e in events) and len(ids) == len(set(ids))
    # was one commit per event (2,000) once a duplicate was met; now new events go in halves, and only the
    # stored ones are narrowed down to single appends
    assert Counting.calls < 2 * 350 + 2 * 11 * 3
    store.close()
