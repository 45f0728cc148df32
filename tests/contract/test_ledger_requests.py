"""The two questions the dashboard asks of every request -- the most expensive requests, and how many
distinct requests there are -- answered by every store exactly as the memory reference answers them.

SQLite and PostgreSQL keep a per-request rollup, written in the transaction that appends the events it
sums, and answer from it whenever a filter allows (cost center, feature, tenant, source, whole hours);
any other filter is answered from the events. Either way the answer is the reference's: costs exact,
unknown costs counted (never priced at 0), a request whose attribution changes counted under each
attribution it had, events without a request id in the totals but never a request.
"""

import threading
from datetime import timedelta
from decimal import Decimal

import pytest

from tests.contract.test_ledger_store import T0, _random_events, ev, store  # noqa: F401  (every store)
from truecost.errors import LedgerError
from truecost.ledger import LedgerFilter, MemoryLedgerStore
from truecost.ledger.sqlite import SQLiteLedgerStore
from truecost.types import Attribution

SOURCES = ["gateway", "sdk", "otlp", "unknown", "absent"]
_A, _B = Attribution(cost_center="a", tenant="t1"), Attribution(cost_center="b", tenant="t1")
FILTERS = {  # the request rollup answers these ...
    "all": LedgerFilter(),
    "cost_center": LedgerFilter(attribution=(("cost_center", "a"),)),
    "scope": LedgerFilter(attribution=(("tenant", "t1"), ("cost_center", "b"))),
    "empty_cost_center": LedgerFilter(attribution=(("cost_center", ""),)),
    "feature_and_source": LedgerFilter(source="gateway", attribution=(("feature", "x"),)),
    "whole_hours": LedgerFilter(since=T0 - timedelta(hours=7), until=T0 + timedelta(hours=1)),
    # ... and the events answer these
    "not_on_the_hour": LedgerFilter(since=T0 + timedelta(minutes=30)),
    "model": LedgerFilter(service="m1"),
    "team": LedgerFilter(attribution=(("team", "k"),)),
    "steps": LedgerFilter(steps=("generate",), attribution=(("cost_center", "a"),)),
}
ROLLUP_ANSWERS = ("all", "cost_center", "scope", "empty_cost_center", "feature_and_source", "whole_hours")


def _crafted():
    return [
        ev("u1", "all-unknown", cost=None, attribution=_A, source="gateway"),
        ev("u2", "all-unknown", cost=None, step="embed", attribution=_A, source="gateway"),
        ev("m1", "moved", cost="0.3", attribution=_A, source="sdk"),  # its attribution changes ...
        ev("m2", "moved", cost="0.4", attribution=_B, source="gateway", minutes=70),  # ... and its hour
        ev("m3", "moved", cost=None, attribution=_B, source="gateway", minutes=71),
        ev("t1", "tie-B", cost="0.2", attribution=_A),  # equal costs: by request id, code point order
        ev("t2", "tie-a", cost="0.2", attribution=_A),
        ev("n1", None, cost="9", attribution=_A, source="otlp"),  # no request: in the totals, never a request
        ev("n2", None, cost=None, attribution=_B, source="otlp"),
        ev("x1", "", cost="0.05", attribution=Attribution(cost_center="", tenant="t1")),  # empty, not missing
        ev("x2", "no-cost-center", cost="0.06", attribution=Attribution(tenant="t1")),
    ]


def _mix():
    return _random_events(600, seed=11) + _crafted()


def _norm(rows):
    return sorted((repr(r.keys), r.cost, r.avoided_cost, r.events, r.unknown, r.request_count) for r in rows)


def _answers(s, f):
    """Everything the per-request questions can ask under filter ``f``, in a comparable form."""
    top, unknown = s.request_stats(f, 1000)
    head, per_source = s.requests_by("source", SOURCES, f)
    _, per_cost_center = s.requests_by("cost_center", ["a", "b", "", None, "zz"], f)
    return {
        "top": [(r.keys, r.cost, r.avoided_cost, r.events, r.unknown, r.request_count) for r in top],
        "top3": [r.keys for r in s.request_stats(f, 3)[0]],
        "unknown_requests": unknown,
        "head": (head.cost, head.avoided_cost, head.events, head.unknown, head.request_count),
        "per_source": per_source,
        "per_cost_center": per_cost_center,
        "total": _norm(s.aggregate([], f)),
        "by_day_cost_center_source": _norm(s.aggregate(["day", "cost_center", "source"], f)),
        "by_tenant": _norm(s.aggregate(["tenant"], f)),
    }


def _reference(events):
    ref = MemoryLedgerStore()
    ref.append(events)
    return ref


def _assert_agrees(s, ref):
    for name, f in FILTERS.items():
        got, want = _answers(s, f), _answers(ref, f)
        assert got == want, name


def test_the_request_questions_agree_with_the_reference_filtered_or_not(store):
    events = _mix()
    store.append(events[:300])  # a request's events arrive in two batches
    store.append(events[300:])
    ref = _reference(events)
    _assert_agrees(store, ref)
    top, unknown = store.request_stats(FILTERS["cost_center"], 1000)
    by_id = {r.keys[0]: r for r in top}
    assert by_id["moved"].cost == Decimal("0.3") and by_id["moved"].keys[1] == ("sdk",)  # its events under 'a' only
    assert (by_id["all-unknown"].cost, by_id["all-unknown"].unknown) == (Decimal(0), 2) and unknown > 0
    assert [r.keys[0] for r in top if r.keys[0].startswith("tie-")] == ["tie-B", "tie-a"]
    head, per = store.requests_by("cost_center", ["", None], LedgerFilter())
    assert per[""] >= 1 and per[None] >= 1 and head.request_count == len({e.request_id for e in events} - {None})


def test_a_refused_batch_changes_no_answer(store):
    events = _mix()
    store.append(events[:400])
    with pytest.raises(LedgerError):
        store.append([*events[400:], events[0]])  # a duplicate at the end: the whole batch is refused
    _assert_agrees(store, _reference(events[:400]))


def test_concurrent_appends_to_the_same_requests_stay_exact(store):
    events = _mix()
    chunks = [events[i::4] for i in range(4)]  # each thread writes events of every request

    def work(part):
        for i in range(0, len(part), 20):
            store.append(part[i : i + 20])

    threads = [threading.Thread(target=work, args=(c,)) for c in chunks]
    [t.start() for t in threads]
    [t.join() for t in threads]
    _assert_agrees(store, _reference(events))


# -- SQLite and PostgreSQL: the rollup is what answers, it is back-filled, replicas keep it exact ------------


@pytest.fixture(params=["sqlite", "postgres"])
def sql_ledger(request, tmp_path):
    """(open a store on one ledger, run SQL on that ledger behind the store's back, the migration's name)."""
    if request.param == "sqlite":
        path = tmp_path / "ledger.db"

        def raw(s, sql):
            s._conn.executescript(sql)

        yield (lambda: SQLiteLedgerStore(path)), raw, "005_request_rollup"
    else:
        from tests.support.servers import fresh_name
        from truecost.ledger.postgres import PostgresLedgerStore

        uri, schema = request.getfixturevalue("postgres_server").uri, fresh_name()

        def raw(s, sql):
            s._run(lambda c: [c.execute(x) for x in sql.split(";") if x.strip()])

        yield (lambda: PostgresLedgerStore(uri, schema=schema)), raw, "004_request_rollup"


def test_answerable_questions_are_answered_from_the_request_rollup(sql_ledger):
    open_store, raw, _ = sql_ledger
    s = open_store()
    s.append(_mix())
    before = {name: _answers(s, f) for name, f in FILTERS.items()}
    raw(s, "DELETE FROM cost_events")  # behind the store's back: only the rollups still know the requests
    for name, f in FILTERS.items():
        after = _answers(s, f)
        if name in ROLLUP_ANSWERS:
            assert after == before[name], name
        else:  # answered from the (now empty) events
            assert (after["top"], after["unknown_requests"], after["head"][4]) == ([], 0, 0), name
    s.close()


def test_the_request_rollup_is_back_filled_for_an_older_ledger(sql_ledger):
    open_store, raw, migration = sql_ledger
    events = _mix()
    s = open_store()
    s.append(events[:500])
    raw(s, f"DROP TABLE request_rollup; DELETE FROM _migrations WHERE name = '{migration}'")  # written before it
    s.close()
    s = open_store()
    assert s.migrations()[-1] == migration
    _assert_agrees(s, _reference(events[:500]))
    s.append(events[500:])
    _assert_agrees(s, _reference(events))
    s.close()


def test_postgres_replicas_appending_the_same_requests_at_once_stay_exact(postgres_server):
    """Replicas upsert the same rollup rows concurrently, in opposite orders: none deadlocks, none is lost."""
    from tests.support.servers import fresh_name
    from truecost.ledger.postgres import PostgresLedgerStore

    schema = fresh_name()
    replicas = [PostgresLedgerStore(postgres_server.uri, schema=schema) for _ in range(3)]
    events = [
        ev(f"{k}-{b}-{i}", f"r{i if k % 2 else 19 - i}", cost=None if (b + i) % 7 == 0 else "0.001")
        for k in range(3)
        for b in range(30)
        for i in range(20)
    ]
    errors = []

    def work(k):
        try:
            for b in range(30):
                replicas[k].append(events[(k * 30 + b) * 20 : (k * 30 + b + 1) * 20])
        except LedgerError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert errors == []
    _assert_agrees(replicas[0], _reference(events))
    [r.close() for r in replicas]
