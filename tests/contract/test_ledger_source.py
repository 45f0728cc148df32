"""Where each event was recorded (``CostEvent.source``): stored, filtered and grouped by every store,
added to ledgers written before it existed (back-filled from ``details["source"]``), and kept by the
spool and write-ahead log, old lines included."""

import json
import sqlite3
from datetime import timedelta
from decimal import Decimal

import pytest

from tests.contract.test_ledger_store import T0, ev, store  # noqa: F401  (the fixture runs every store)
from truecost.ledger import CostEvent, LedgerFilter, MemoryLedgerStore
from truecost.ledger.serialize import event_from_dict, event_to_dict
from truecost.ledger.sqlite import SQLiteLedgerStore
from truecost.ledger.writer import replay_spool


def _mixed():
    return [
        ev(1, "r1", cost="0.5", source="gateway"),
        ev(2, "r1", cost="0.25", step="embed", source="sdk"),
        ev(3, "r2", cost="0.125", source="litellm"),
        ev(4, "r3", cost=None, source="otlp", minutes=90),
        ev(5, "r4", cost="1", source="my-batch.job_2"),
    ]


def test_source_roundtrips_filters_and_groups(store):
    store.append(_mixed())
    assert {e.id: e.source for e in store.query()} == {
        "e1": "gateway",
        "e2": "sdk",
        "e3": "litellm",
        "e4": "otlp",
        "e5": "my-batch.job_2",
    }
    assert [e.id for e in store.query(LedgerFilter(source="sdk"))] == ["e2"]
    by = {r.keys[0]: (r.cost, r.events, r.unknown, r.request_count) for r in store.aggregate(["source"])}
    assert by == {
        "gateway": (Decimal("0.5"), 1, 0, 1),
        "sdk": (Decimal("0.25"), 1, 0, 1),
        "litellm": (Decimal("0.125"), 1, 0, 1),
        "otlp": (Decimal(0), 1, 1, 1),
        "my-batch.job_2": (Decimal(1), 1, 0, 1),
    }
    (only,) = store.aggregate(["step"], LedgerFilter(source="gateway"), count_requests=False)
    assert only.keys == ("generate",) and only.cost == Decimal("0.5")
    if hasattr(store, "request_stats"):  # the dashboard's top requests name their sources
        top, unknown = store.request_stats(LedgerFilter(), 2)
        assert [r.keys for r in top] == [("r4", ("my-batch.job_2",)), ("r1", ("gateway", "sdk"))] and unknown == 1


def test_requests_by_source_count_a_request_under_each_of_its_sources(store):
    from truecost.audit.overview import requests_by  # the store's own one-scan answer, else two aggregates

    store.append(_mixed())
    head, per = requests_by(store, LedgerFilter(), "source", ["gateway", "litellm", "my-batch.job_2", "otlp", "sdk"])
    assert (head.request_count, head.events, head.unknown, head.cost) == (4, 5, 1, Decimal("1.875"))
    assert per == {"gateway": 1, "litellm": 1, "my-batch.job_2": 1, "otlp": 1, "sdk": 1}
    head, per = requests_by(store, LedgerFilter(request_id="r1"), "source", ["gateway", "sdk"])
    assert head.request_count == 1 and per == {"gateway": 1, "sdk": 1}
    head, per = requests_by(store, LedgerFilter(source="otlp"), "source", ["otlp"])
    assert head.request_count == 1 and head.unknown == 1 and per == {"otlp": 1}


def test_an_event_without_a_source_says_unknown_and_a_bad_one_is_refused():
    assert ev(1).source == "unknown"
    for bad in ("Gateway", "two words", "", "x" * 65, None, 3, "a,b"):
        with pytest.raises(ValueError, match="bad event source"):
            ev(1, source=bad)


@pytest.mark.parametrize("group_by", [["source"], ["day", "source", "step"]])
def test_sqlite_rollup_by_source_answers_what_the_events_say(tmp_path, group_by):
    events = [ev(i, f"r{i}", cost=str(i), minutes=37 * i, source=("gateway", "sdk", "otlp")[i % 3]) for i in range(60)]
    mem, sql = MemoryLedgerStore(), SQLiteLedgerStore(tmp_path / "l.db")
    for s in (mem, sql):
        s.append(events)
    for f in (LedgerFilter(), LedgerFilter(source="otlp"), LedgerFilter(source="sdk", since=T0 + timedelta(hours=3))):

        def norm(rows):
            return sorted((repr(r.keys), r.cost, r.events, r.unknown) for r in rows)

        assert norm(sql.aggregate(group_by, f, count_requests=False)) == norm(
            mem.aggregate(group_by, f, count_requests=False)
        )
    sql.close()


_OLD_SCHEMA = """
CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL);
INSERT INTO _migrations VALUES ('001_cost_events', '2026-11-01'), ('002_indexes', '2026-11-01'),
    ('003_hourly_rollup', '2026-11-01');
CREATE TABLE cost_events (
    id TEXT NOT NULL PRIMARY KEY, request_id TEXT, ts_us INTEGER NOT NULL, step TEXT NOT NULL,
    provider TEXT, service TEXT, region TEXT, quantity TEXT NOT NULL, unit TEXT NOT NULL,
    unit_price TEXT, cost TEXT, cost_e10 INTEGER, currency TEXT NOT NULL,
    cost_center TEXT, team TEXT, feature TEXT, tenant TEXT, environment TEXT, user_id TEXT,
    tags TEXT NOT NULL DEFAULT '{}', trace_id TEXT, span_id TEXT, parent_span_id TEXT, name TEXT,
    latency_ms REAL, outcome TEXT NOT NULL, avoided TEXT, avoided_e10 INTEGER,
    details TEXT NOT NULL DEFAULT '{}'
) WITHOUT ROWID;
CREATE INDEX ix_cost_events_request ON cost_events(request_id);
CREATE INDEX ix_cost_events_ts ON cost_events(ts_us);
CREATE TABLE rollup_hourly (
    hour INTEGER NOT NULL, cost_center TEXT NOT NULL, feature TEXT NOT NULL, tenant TEXT NOT NULL,
    step TEXT NOT NULL, service TEXT NOT NULL, outcome TEXT NOT NULL,
    cost_e10 INTEGER NOT NULL DEFAULT 0, avoided_e10 INTEGER NOT NULL DEFAULT 0,
    events INTEGER NOT NULL DEFAULT 0, unknown INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (hour, cost_center, feature, tenant, step, service, outcome)
) WITHOUT ROWID;
CREATE INDEX ix_cost_events_request_cost ON cost_events(request_id, cost_e10);
"""
_OLD_ROWS = [  # (id, request, cost_e10, details): what an older truecost wrote
    ("o1", "ra", 5_000_000_000, {"source": "litellm", "call_type": "completion"}),
    ("o2", "ra", 2_500_000_000, {}),
    ("o3", "rb", 1_000_000_000, {"source": "Not A Source!"}),  # a caller's own detail, not a source name
    ("o4", "rc", None, {"source": "otlp", "unknown_reason": "no price"}),
]


def _old_ledger(path):
    con = sqlite3.connect(path)
    con.executescript(_OLD_SCHEMA)
    ts = int(T0.timestamp() * 1_000_000)
    for i, rid, e10, details in _OLD_ROWS:
        cost = None if e10 is None else str(Decimal(e10) / 10**10)
        con.execute(
            "INSERT INTO cost_events (id, request_id, ts_us, step, service, quantity, unit, cost, cost_e10, "
            "currency, tenant, outcome, details) VALUES (?, ?, ?, 'generate', 'gpt-6-luna', '100', 'tokens', "
            "?, ?, 'USD', 'acme', 'ok', ?)",
            (i, rid, ts, cost, e10, json.dumps(details)),
        )
    con.execute(
        "INSERT INTO rollup_hourly SELECT ts_us / 3600000000, IFNULL(cost_center, ''), IFNULL(feature, ''), "
        "IFNULL(tenant, ''), step, IFNULL(service, ''), outcome, IFNULL(SUM(cost_e10), 0), "
        "IFNULL(SUM(avoided_e10), 0), COUNT(*), SUM(cost_e10 IS NULL) FROM cost_events GROUP BY 1, 2, 3, 4, 5, 6, 7"
    )
    con.commit()
    con.close()


def test_sqlite_ledger_from_before_sources_opens_backfills_and_keeps_working(tmp_path):
    path = tmp_path / "old.db"
    _old_ledger(path)
    s = SQLiteLedgerStore(path)
    assert s.migrations()[-2:] == ["004_source", "005_request_rollup"]
    assert {e.id: e.source for e in s.query()} == {"o1": "litellm", "o2": "unknown", "o3": "unknown", "o4": "otlp"}
    assert s.query(LedgerFilter(request_id="rb"))[0].details == {
        "source": "Not A Source!"
    }  # details are left as they were
    s.append([ev("n1", "rd", cost="0.125", source="gateway"), ev("n2", "ra", cost="0.25", source="litellm")])
    hourly = {r.keys[0]: (r.cost, r.events, r.unknown) for r in s.aggregate(["source"], count_requests=False)}  # rollup
    scanned = {  # with request counts: the request rollup, back-filled from the events
        r.keys[0]: (r.cost, r.events, r.unknown, r.request_count) for r in s.aggregate(["source"])
    }
    assert (
        hourly
        == {k: v[:3] for k, v in scanned.items()}
        == {
            "litellm": (Decimal("0.75"), 2, 0),
            "unknown": (Decimal("0.35"), 2, 0),
            "otlp": (Decimal(0), 1, 1),
            "gateway": (Decimal("0.125"), 1, 0),
        }
    )
    assert scanned["litellm"][3] == 1 and scanned["unknown"][3] == 2
    s.close()
    again = SQLiteLedgerStore(path)  # applied once: a second open changes nothing
    assert again.migrations().count("004_source") == 1 and again.count() == 6
    again.close()


def test_postgres_ledger_from_before_sources_is_backfilled(postgres_server):
    import psycopg

    from tests.support.servers import fresh_name
    from truecost.ledger.postgres import PostgresLedgerStore
    from truecost.ledger.postgres_schema import MIGRATIONS

    schema = fresh_name()
    with psycopg.connect(postgres_server.uri, autocommit=True) as con:  # a schema an older truecost made
        con.execute(f'CREATE SCHEMA "{schema}"')
        con.execute(f'SET search_path TO "{schema}"')
        con.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL)")
        for name, sql in MIGRATIONS[:2]:
            assert "source" not in sql
            for stmt in filter(str.strip, sql.split(";")):
                con.execute(stmt)
            con.execute("INSERT INTO _migrations VALUES (%s, now())", (name,))
        for i, rid, e10, details in _OLD_ROWS:
            con.execute(
                "INSERT INTO cost_events (id, request_id, ts, step, quantity, unit, cost, currency, outcome, "
                "details) VALUES (%s, %s, %s, 'generate', 100, 'tokens', %s, 'USD', 'ok', %s)",
                (i, rid, T0, None if e10 is None else Decimal(e10) / 10**10, json.dumps(details)),
            )
    s = PostgresLedgerStore(postgres_server.uri, schema=schema)
    assert s.migrations() == ["001_cost_events", "002_indexes", "003_source", "004_request_rollup"]
    assert {e.id: e.source for e in s.query()} == {"o1": "litellm", "o2": "unknown", "o3": "unknown", "o4": "otlp"}
    s.append([ev("n1", "rd", cost="0.125", source="gateway")])
    assert {r.keys[0]: r.events for r in s.aggregate(["source"])} == {
        "litellm": 1,
        "unknown": 2,
        "otlp": 1,
        "gateway": 1,
    }
    s.close()


def test_spool_lines_keep_their_source_and_old_lines_read_it_from_details(tmp_path):
    new = ev(1, source="langchain")
    assert event_from_dict(json.loads(json.dumps(event_to_dict(new)))) == new
    old = {k: v for k, v in event_to_dict(ev(2, details={"source": "otlp"})).items() if k != "source"}
    odd = {k: v for k, v in event_to_dict(ev(3, details={"source": {"not": "a name"}})).items() if k != "source"}
    plain = {k: v for k, v in event_to_dict(ev(4)).items() if k != "source"}
    spool = tmp_path / "ledger.spool.jsonl"
    spool.write_text("".join(json.dumps(d) + "\n" for d in (event_to_dict(new), old, odd, plain)))
    s = SQLiteLedgerStore(tmp_path / "l.db")
    assert replay_spool(spool, s) == 4
    assert {e.id: e.source for e in s.query()} == {"e1": "langchain", "e2": "otlp", "e3": "unknown", "e4": "unknown"}
    s.close()


def test_cost_event_keeps_source_last_so_positional_construction_is_unchanged():
    e = CostEvent("x", "r", T0, "generate", "openai", "gpt-6-luna")
    assert (e.provider, e.service, e.source) == ("openai", "gpt-6-luna", "unknown")
