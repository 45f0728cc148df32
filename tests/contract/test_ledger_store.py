"""The LedgerStore contract, run against every store."""

import sqlite3
import threading
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from truecost.errors import LedgerError
from truecost.ledger import CostEvent, LedgerFilter, MemoryLedgerStore
from truecost.ledger.sqlite import SQLiteLedgerStore
from truecost.types import Attribution

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request, tmp_path):
    if request.param == "memory":
        s = MemoryLedgerStore()
    elif request.param == "sqlite":
        s = SQLiteLedgerStore(tmp_path / "ledger.db")
    else:
        from tests.support.servers import fresh_name
        from truecost.ledger.postgres import PostgresLedgerStore

        s = PostgresLedgerStore(request.getfixturevalue("postgres_server").uri, schema=fresh_name())
    yield s
    s.close()


def ev(i, request_id="r1", step="generate", cost="0.001", minutes=0, **kw):
    return CostEvent(
        id=f"e{i}",
        request_id=request_id,
        ts=T0 + timedelta(minutes=minutes),
        step=step,
        service=kw.pop("service", "gpt-6-luna"),
        quantity=Decimal(100),
        unit="tokens",
        cost=None if cost is None else Decimal(cost),
        **kw,
    )


def test_roundtrip_keeps_every_field_exactly(store):
    e = CostEvent(
        id="x1",
        request_id="r9",
        ts=T0 + timedelta(microseconds=123456),
        step="egress",
        provider="aws",
        service="inter_region",
        region="us-east-1->eu-west-1",
        quantity=Decimal("0.000050000"),
        unit="GB",
        unit_price=Decimal("0.02"),
        cost=Decimal("0.0000000012345678901234"),
        attribution=Attribution(
            cost_center="cc-7",
            team="search",
            feature="rag",
            tenant="acme",
            environment="prod",
            user="u1",
            tags={"exp": "b", "région": "ü"},
        ),
        trace_id="t",
        span_id="s",
        parent_span_id="p",
        name="to eu",
        latency_ms=1.5,
        outcome="ok",
        avoided_cost=Decimal("0.5"),
        details={"bytes": 50000},
        source="langchain",
    )
    store.append([e])
    (got,) = store.query(LedgerFilter(request_id="r9"))
    assert got == e


def test_unknown_cost_is_kept_as_none_and_counted(store):
    store.append([ev(1, cost=None), ev(2, cost="0.25")])
    (row,) = store.aggregate([])
    assert row.cost == Decimal("0.25") and row.unknown == 1 and row.events == 2
    assert [e.cost for e in store.query()] == [None, Decimal("0.25")]


def test_aggregate_by_step_and_attribution(store):
    a, b = Attribution(cost_center="A"), Attribution(cost_center="B")
    store.append(
        [
            ev(1, step="generate", cost="0.3", attribution=a),
            ev(2, step="embed", cost="0.1", attribution=a),
            ev(3, request_id="r2", step="generate", cost="0.2", attribution=b),
        ]
    )
    by = {r.keys: (r.cost, r.request_count) for r in store.aggregate(["cost_center", "step"])}
    assert by == {
        ("A", "generate"): (Decimal("0.3"), 1),
        ("A", "embed"): (Decimal("0.1"), 1),
        ("B", "generate"): (Decimal("0.2"), 1),
    }
    (only_a,) = store.aggregate([], LedgerFilter(attribution=(("cost_center", "A"),)))
    assert only_a.cost == Decimal("0.4") and only_a.request_count == 1


def test_time_buckets_and_range_filter(store):
    store.append([ev(1, minutes=0), ev(2, minutes=61), ev(3, minutes=62)])
    hours = {r.keys[0]: r.events for r in store.aggregate(["hour"])}
    assert hours == {"2026-11-01T12:00": 1, "2026-11-01T13:00": 2}
    inside = store.query(LedgerFilter(since=T0 + timedelta(minutes=1), until=T0 + timedelta(minutes=62)))
    assert [e.id for e in inside] == ["e2"]


def test_sums_are_exact_decimal(store):
    store.append([ev(i, cost="0.1") for i in range(10)])
    (row,) = store.aggregate([])
    assert row.cost == Decimal("1")  # 10 x 0.1 as floats would be 0.9999999999999999


def test_duplicate_id_rejects_the_whole_batch(store):
    store.append([ev(1)])
    with pytest.raises(LedgerError):
        store.append([ev(2), ev(1)])
    assert [e.id for e in store.query()] == ["e1"]


def test_concurrent_appends_lose_nothing(store):
    def work(t):
        store.append([ev(f"{t}-{i}", request_id=f"r{t}") for i in range(200)])

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    (row,) = store.aggregate([])
    assert row.events == 800 and row.request_count == 4


def test_empty_store_aggregates_to_nothing(store):
    assert store.aggregate([]) == []
    assert store.query() == []


def test_bad_group_by_is_refused(store):
    with pytest.raises(ValueError):
        store.aggregate(["cost; DROP TABLE cost_events"])


def test_sqlite_locked_file_gives_clear_error_and_no_partial_rows(tmp_path):
    path = tmp_path / "ledger.db"
    store = SQLiteLedgerStore(path, timeout=0.05)
    store.append([ev(1)])
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    with pytest.raises(LedgerError, match="nothing from this batch was stored"):
        store.append([ev(2), ev(3)])
    other.execute("ROLLBACK")
    other.close()
    assert [e.id for e in store.query()] == ["e1"]
    store.append([ev(2), ev(3)])
    assert store.aggregate([])[0].events == 3


def test_sqlite_migrations_are_named_and_applied_once(tmp_path):
    s1 = SQLiteLedgerStore(tmp_path / "l.db")
    s1.append([ev(1)])
    s1.close()
    s2 = SQLiteLedgerStore(tmp_path / "l.db")
    assert s2.migrations() == [
        "001_cost_events",
        "002_indexes",
        "003_hourly_rollup",
        "004_source",
        "005_request_rollup",
    ]
    assert s2.aggregate([])[0].events == 1


def test_sqlite_not_a_database_is_a_clear_error(tmp_path):
    p = tmp_path / "junk.db"
    p.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(LedgerError, match="cannot open ledger"):
        SQLiteLedgerStore(p)


def test_sqlite_full_file_gives_clear_error_and_keeps_what_was_stored(tmp_path):
    store = SQLiteLedgerStore(tmp_path / "full.db")
    store.append([ev(1)])
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages + 1}")  # the disk is now 'full'
    big = [ev(f"big{i}", details={"blob": "x" * 2000}) for i in range(200)]
    with pytest.raises(LedgerError, match="full"):
        store.append(big)
    assert [e.id for e in store.query()] == ["e1"]


def _random_events(n, seed):
    import random

    rnd = random.Random(seed)
    t0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
    out = []
    for i in range(n):
        cost = None if rnd.random() < 0.05 else Decimal(rnd.randint(0, 10**6)) / Decimal(10**9)
        a = Attribution(
            cost_center=rnd.choice([None, "a", "b"]),
            feature=rnd.choice([None, "x", "y"]),
            tenant=rnd.choice(["t1", "t2"]),
            team=rnd.choice([None, "k"]),
        )
        out.append(
            CostEvent(
                id=f"e{seed}-{i}",
                request_id=f"r{i // 3}",
                ts=t0 + timedelta(minutes=rnd.randint(0, 60 * 72)),
                step=rnd.choice(["generate", "embed", "cache_lookup"]),
                service=rnd.choice([None, "m1", "m2"]),
                outcome=rnd.choice(["ok", "cache_hit", "routed"]),
                cost=cost,
                attribution=a,
                avoided_cost=Decimal("0.001") if rnd.random() < 0.2 else None,
                source=rnd.choice(["gateway", "sdk", "otlp"]),
            )
        )
    return out


@pytest.mark.parametrize(
    "group_by",
    [
        [],
        ["step"],
        ["hour", "cost_center"],
        ["day", "feature", "step", "service", "outcome"],
        ["month", "tenant"],
        ["team"],
        ["source", "step"],
    ],
)
def test_sqlite_rollup_answers_exactly_what_the_events_say(tmp_path, group_by):
    events = _random_events(600, 1)
    mem, sql = MemoryLedgerStore(), SQLiteLedgerStore(tmp_path / "l.db")
    for store in (mem, sql):
        store.append(events[:300])
        store.append(events[300:])
    t0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
    filters = [
        LedgerFilter(),
        LedgerFilter(since=t0 + timedelta(hours=5), until=t0 + timedelta(hours=30)),
        LedgerFilter(since=t0 + timedelta(minutes=90)),  # not hour-aligned: answered from the events
        LedgerFilter(service="m1", attribution=(("tenant", "t1"), ("cost_center", "a"))),
        LedgerFilter(steps=("generate",), outcome="routed"),
        LedgerFilter(source="sdk", attribution=(("tenant", "t2"),)),
    ]
    for f in filters:

        def norm(rows):
            return sorted(((repr(r.keys), r.cost, r.avoided_cost, r.events, r.unknown) for r in rows))

        assert norm(sql.aggregate(group_by, f, count_requests=False)) == norm(
            mem.aggregate(group_by, f, count_requests=False)
        )
    sql.close()


def test_sqlite_rollup_is_backfilled_for_an_older_ledger(tmp_path):
    path = tmp_path / "old.db"
    s = SQLiteLedgerStore(path)
    s.append(_random_events(50, 2))
    s.close()
    con = sqlite3.connect(path)  # turn it into a ledger written before migration 003 (and those after it)
    con.executescript(
        "DROP TABLE rollup_hourly; DROP TABLE request_rollup; DROP INDEX ix_cost_events_request_cost; "
        "ALTER TABLE cost_events DROP COLUMN source; "
        "DELETE FROM _migrations WHERE name IN ('003_hourly_rollup', '004_source', '005_request_rollup');"
    )
    con.close()
    new = SQLiteLedgerStore(path)
    mem = MemoryLedgerStore()
    mem.append(_random_events(50, 2))
    assert (
        new.aggregate(["step"], count_requests=False)[0].cost == mem.aggregate(["step"], count_requests=False)[0].cost
    )
    new.append([ev(999)])
    assert new.aggregate([], count_requests=False)[0].events == 51
    new.close()


def test_sqlite_request_stats(tmp_path):
    s = SQLiteLedgerStore(tmp_path / "l.db")
    s.append([ev(1, "r1", cost="0.5"), ev(2, "r1", cost=None), ev(3, "r2", cost="0.7"), ev(4, "r3", cost="0.1")])
    top, unknown = s.request_stats(top=2)
    assert [r.keys[0] for r in top] == ["r2", "r1"] and top[1].unknown == 1 and unknown == 1
    s.close()


def test_postgres_outage_spools_durably_and_replays_none_lost_none_doubled(postgres_server, tmp_path):
    import time as _time

    from tests.support.servers import fresh_name
    from truecost.ledger import BatchWriter
    from truecost.ledger.postgres import PostgresLedgerStore

    store = PostgresLedgerStore(postgres_server.uri, schema=fresh_name())
    spool = tmp_path / "spool.jsonl"
    writer = BatchWriter(store, batch_size=50, interval=0.02, spool_path=spool, max_backoff=0.2)
    try:
        writer.submit_many([ev(f"a{i}", request_id=f"ra{i}") for i in range(200)])
        assert writer.flush(10)
        postgres_server.stop()  # the outage
        with pytest.raises(LedgerError, match="server went away|cannot connect"):
            store.append([ev("probe")])
        writer.submit_many([ev(f"b{i}", request_id=f"rb{i}") for i in range(300)])
        assert writer.flush(10)
        assert writer.spooled >= 300 and spool.exists()  # durable on disk while the store is down
        postgres_server.start()
        writer.submit_many([ev(f"c{i}", request_id=f"rc{i}") for i in range(100)])
        deadline = _time.time() + 20
        while (spool.exists() or writer.pending) and _time.time() < deadline:
            _time.sleep(0.05)
        assert not spool.exists()
    finally:
        writer.close()
    ids = [e.id for e in store.query()]
    assert len(ids) == len(set(ids)) == 600  # none lost, none doubled
    assert writer.replayed >= 300
    store.close()


def test_postgres_migrations_are_named_and_applied_once(postgres_server):
    from tests.support.servers import fresh_name
    from truecost.ledger.postgres import PostgresLedgerStore

    schema = fresh_name()
    s1 = PostgresLedgerStore(postgres_server.uri, schema=schema)
    s1.append([ev(1)])
    s1.close()
    s2 = PostgresLedgerStore(postgres_server.uri, schema=schema)
    assert s2.migrations() == ["001_cost_events", "002_indexes", "003_source", "004_request_rollup"]
    assert s2.aggregate([])[0].events == 1
    s2.close()


def test_request_stats_and_requests_by_agree_with_the_reference_answer(store):
    """Every store answers the two overview questions itself (declared in the LedgerStore protocol, never
    probed), and agrees with the answer computed from ``aggregate`` alone."""
    from truecost.ledger.store import request_stats_of, requests_by_of

    store.append(_random_events(600, seed=5))
    flt = LedgerFilter(attribution=(("tenant", "t1"),))
    for f in (LedgerFilter(), flt):
        top, unknown = store.request_stats(f, 7)
        ref_top, ref_unknown = request_stats_of(store, f, 7)
        assert unknown == ref_unknown > 0
        assert [(r.keys, r.cost, r.events, r.unknown) for r in top] == [
            (r.keys, r.cost, r.events, r.unknown) for r in ref_top
        ]
        head, per = store.requests_by("source", ["gateway", "sdk", "otlp", "absent"], f)
        ref_head, ref_per = requests_by_of(store, "source", ["gateway", "sdk", "otlp", "absent"], f)
        assert (head.cost, head.request_count) == (ref_head.cost, ref_head.request_count) and per == ref_per
        assert per["absent"] == 0 and 0 < per["sdk"] <= head.request_count


def test_sqlite_two_processes_opening_an_older_ledger_at_once_both_open_and_count_once(tmp_path, monkeypatch):
    # a gateway and a dashboard (or two workers) start on a ledger written before 005: both read the list of
    # applied migrations, one applies it; the other then ran it again ("table request_rollup already exists")
    import truecost.ledger.sqlite as sqlite_module

    path = tmp_path / "old.db"
    s = SQLiteLedgerStore(path)
    s.append([ev(1, "r1", cost="0.5")])
    s.close()
    con = sqlite3.connect(path)
    con.executescript("DROP TABLE request_rollup; DELETE FROM _migrations WHERE name = '005_request_rollup';")
    con.close()
    applied = list(sqlite_module.MIGRATIONS)
    others: list = []

    class Racing(list):
        def __iter__(self):
            for name, sql in applied:
                if name == "005_request_rollup" and not others:
                    others.append(None)
                    others[0] = SQLiteLedgerStore(path)  # the other process opens (and migrates) meanwhile
                yield name, sql

    monkeypatch.setattr(sqlite_module, "MIGRATIONS", Racing(applied))
    mine = SQLiteLedgerStore(path)
    for store in (mine, others[0]):
        assert store.migrations()[-1] == "005_request_rollup"
        top, _ = store.request_stats()
        assert [(r.keys[0], r.cost, r.events) for r in top] == [("r1", Decimal("0.5"), 1)]
        store.close()


@pytest.mark.parametrize("amount", ["1e30", "1e999999"])
def test_sqlite_an_amount_it_cannot_hold_refuses_that_batch_only(tmp_path, amount):
    # an SDK span's reported cost reaches the ledger as it is (finite, not negative): $1e30 is past what an
    # INTEGER of 1e-10 USD holds. That batch was refused with a raw OverflowError and its transaction left open,
    # so the next, innocent batch was refused too ("cannot start a transaction within a transaction")
    s = SQLiteLedgerStore(tmp_path / "l.db")
    with pytest.raises(LedgerError, match="nothing from this batch was stored"):
        s.append([ev(1, "r1", cost="0.5"), ev(2, "r1", cost=amount)])
    s.append([ev(3, "r2", cost="0.25")])
    assert [e.id for e in s.query()] == ["e3"]
    top, _ = s.request_stats()
    assert [(r.keys[0], r.cost) for r in top] == [("r2", Decimal("0.25"))]
    s.close()
