"""The SQLite ledger's schema: append-only named migrations (applied in order, each once)."""

from __future__ import annotations

import sqlite3

_SOURCE_OK = "length({v}) BETWEEN 1 AND 64 AND {v} GLOB '[a-z0-9]*' AND {v} NOT GLOB '*[^a-z0-9_.-]*'".format(
    v="json_extract(details, '$.source')"
)  # events.check_source's rule, in SQL

MIGRATIONS: list[tuple[str, str]] = [
    (
        "001_cost_events",
        """
        CREATE TABLE cost_events (
            id TEXT NOT NULL PRIMARY KEY, request_id TEXT, ts_us INTEGER NOT NULL, step TEXT NOT NULL,
            provider TEXT, service TEXT, region TEXT, quantity TEXT NOT NULL, unit TEXT NOT NULL,
            unit_price TEXT, cost TEXT, cost_e10 INTEGER, currency TEXT NOT NULL,
            cost_center TEXT, team TEXT, feature TEXT, tenant TEXT, environment TEXT, user_id TEXT,
            tags TEXT NOT NULL DEFAULT '{}', trace_id TEXT, span_id TEXT, parent_span_id TEXT, name TEXT,
            latency_ms REAL, outcome TEXT NOT NULL, avoided TEXT, avoided_e10 INTEGER,
            details TEXT NOT NULL DEFAULT '{}'
        ) WITHOUT ROWID;
    """,
    ),
    (
        "002_indexes",
        """
        CREATE INDEX ix_cost_events_request ON cost_events(request_id);
        CREATE INDEX ix_cost_events_ts ON cost_events(ts_us);
    """,
    ),
    # Hourly pre-aggregates, updated by append() in the inserting transaction (a batch is
    # all or nothing, so its rollup is exact): dashboards and reports over large ledgers read
    # these instead of scanning every event. NULL keys are stored as '' (a primary key cannot
    # hold NULL) and read back as NULL.
    (
        "003_hourly_rollup",
        """
        CREATE TABLE rollup_hourly (
            hour INTEGER NOT NULL, cost_center TEXT NOT NULL, feature TEXT NOT NULL, tenant TEXT NOT NULL,
            step TEXT NOT NULL, service TEXT NOT NULL, outcome TEXT NOT NULL,
            cost_e10 INTEGER NOT NULL DEFAULT 0, avoided_e10 INTEGER NOT NULL DEFAULT 0,
            events INTEGER NOT NULL DEFAULT 0, unknown INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (hour, cost_center, feature, tenant, step, service, outcome)
        ) WITHOUT ROWID;
        INSERT INTO rollup_hourly SELECT ts_us / 3600000000, IFNULL(cost_center, ''), IFNULL(feature, ''),
            IFNULL(tenant, ''), step, IFNULL(service, ''), outcome, IFNULL(SUM(cost_e10), 0),
            IFNULL(SUM(avoided_e10), 0), COUNT(*), SUM(cost_e10 IS NULL)
            FROM cost_events GROUP BY 1, 2, 3, 4, 5, 6, 7;
        CREATE INDEX ix_cost_events_request_cost ON cost_events(request_id, cost_e10);
    """,
    ),
    # Where each event was recorded. Rows written before this migration read "unknown", except
    # those whose details name a source (the integrations put it there): that is back-filled.
    # The rollup gains the source as a key, so reports grouped or filtered by source stay fast;
    # it is rebuilt from the events in this transaction, so it stays exact.
    (
        "004_source",
        f"""
        ALTER TABLE cost_events ADD COLUMN source TEXT NOT NULL DEFAULT 'unknown';
        UPDATE cost_events SET source = json_extract(details, '$.source')
            WHERE details LIKE '%"source"%' AND json_type(details, '$.source') = 'text' AND {_SOURCE_OK};
        DROP TABLE rollup_hourly;
        CREATE TABLE rollup_hourly (
            hour INTEGER NOT NULL, cost_center TEXT NOT NULL, feature TEXT NOT NULL, tenant TEXT NOT NULL,
            step TEXT NOT NULL, service TEXT NOT NULL, outcome TEXT NOT NULL, source TEXT NOT NULL,
            cost_e10 INTEGER NOT NULL DEFAULT 0, avoided_e10 INTEGER NOT NULL DEFAULT 0,
            events INTEGER NOT NULL DEFAULT 0, unknown INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (hour, cost_center, feature, tenant, step, service, outcome, source)
        ) WITHOUT ROWID;
        INSERT INTO rollup_hourly SELECT ts_us / 3600000000, IFNULL(cost_center, ''), IFNULL(feature, ''),
            IFNULL(tenant, ''), step, IFNULL(service, ''), outcome, source, IFNULL(SUM(cost_e10), 0),
            IFNULL(SUM(avoided_e10), 0), COUNT(*), SUM(cost_e10 IS NULL)
            FROM cost_events GROUP BY 1, 2, 3, 4, 5, 6, 7, 8;
    """,
    ),
    # Per-request pre-aggregates (see ledger.request_rollup): the most expensive requests and distinct
    # request counts without a scan of every event. Added to by append() in the inserting transaction,
    # as rollup_hourly is; back-filled here from the events. A missing request id or attribute is ''
    # with its bit in ``nulls`` (1 request id, 2 cost center, 4 feature, 8 tenant). Hours are floored.
    (
        "005_request_rollup",
        """
        CREATE TABLE request_rollup (
            request_id TEXT NOT NULL, hour INTEGER NOT NULL, source TEXT NOT NULL, cost_center TEXT NOT NULL,
            feature TEXT NOT NULL, tenant TEXT NOT NULL, nulls INTEGER NOT NULL,
            cost_e10 INTEGER NOT NULL DEFAULT 0, avoided_e10 INTEGER NOT NULL DEFAULT 0,
            events INTEGER NOT NULL DEFAULT 0, unknown INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (request_id, hour, source, cost_center, feature, tenant, nulls)
        ) WITHOUT ROWID;
        INSERT INTO request_rollup SELECT IFNULL(request_id, ''),
            (ts_us - (ts_us % 3600000000 + 3600000000) % 3600000000) / 3600000000, source,
            IFNULL(cost_center, ''), IFNULL(feature, ''), IFNULL(tenant, ''),
            (request_id IS NULL) + 2 * (cost_center IS NULL) + 4 * (feature IS NULL) + 8 * (tenant IS NULL),
            IFNULL(SUM(cost_e10), 0), IFNULL(SUM(avoided_e10), 0), COUNT(*), SUM(cost_e10 IS NULL)
            FROM cost_events GROUP BY 1, 2, 3, 4, 5, 6, 7;
    """,
    ),
]


def statements(script: str) -> list[str]:
    """Split a migration into statements; a trigger body's inner ';' does not end its statement."""
    out, buf = [], ""
    for piece in script.split(";"):
        buf += piece + ";"
        if sqlite3.complete_statement(buf):
            if buf.strip(" \n;"):
                out.append(buf.strip())
            buf = ""
    if buf.strip(" \n;"):
        out.append(buf.strip())
    return out
