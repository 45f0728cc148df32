import threading
from datetime import datetime, timezone
from decimal import Decimal

from truecost.errors import LedgerError
from truecost.ledger import BatchWriter, CostEvent, MemoryLedgerStore, replay_spool
from truecost.ledger.sqlite import SQLiteLedgerStore

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)


def ev(i):
    return CostEvent(id=f"e{i}", request_id=f"r{hash(i) % 7}", ts=T0, step="generate", cost=Decimal("0.001"))


class FlakyStore(MemoryLedgerStore):
    """Fails the first ``failures`` appends, like a locked file or a store outage."""

    def __init__(self, failures):
        super().__init__()
        self.failures = failures

    def append(self, events):
        if self.failures > 0:
            self.failures -= 1
            raise LedgerError("database is locked")
        super().append(events)


def test_flush_stores_everything_submitted(tmp_path):
    store = SQLiteLedgerStore(tmp_path / "l.db")
    w = BatchWriter(store, batch_size=100, interval=0.01)
    for i in range(1_050):
        w.submit(ev(i))
    assert w.flush(timeout=10)
    assert store.count() == 1_050
    w.close()


def test_a_failing_store_is_retried_and_nothing_is_lost():
    store = FlakyStore(failures=3)
    w = BatchWriter(store, batch_size=10, interval=0.01)
    for i in range(25):
        w.submit(ev(i))
    assert w.flush(timeout=10)
    w.close()
    assert w.failures == 3 and len(store.query()) == 25


def test_close_spools_what_the_store_refuses_and_replay_restores_it(tmp_path):
    store = FlakyStore(failures=10**9)
    spool = tmp_path / "spool.jsonl"
    w = BatchWriter(store, batch_size=10, interval=0.01, spool_path=spool)
    for i in range(15):
        w.submit(ev(i))
    w.close(timeout=5)
    assert w.spooled == 15 and store.query() == []
    healthy = MemoryLedgerStore()
    assert replay_spool(spool, healthy) == 15
    assert sorted(e.id for e in healthy.query()) == sorted(f"e{i}" for i in range(15))
    assert not spool.exists()


def test_replay_twice_does_not_double(tmp_path):
    spool = tmp_path / "spool.jsonl"
    w = BatchWriter(FlakyStore(failures=10**9), batch_size=5, spool_path=spool)
    for i in range(5):
        w.submit(ev(i))
    w.close(timeout=5)
    target = MemoryLedgerStore()
    target.append([ev(0), ev(1)])  # a crash after a partial replay
    assert replay_spool(spool, target) == 3
    assert len(target.query()) == 5


def test_concurrent_producers():
    store = MemoryLedgerStore()
    w = BatchWriter(store, batch_size=64, interval=0.01, max_queue=100)

    def work(t):
        for i in range(500):
            w.submit(ev(f"{t}-{i}"))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    w.close()
    assert len(store.query()) == 2_000
