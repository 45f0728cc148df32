"""The PostgreSQL ledger's schema: append-only named migrations (applied in order, each once)."""

from __future__ import annotations

from truecost.ledger.events import SOURCE_NAME_SQL

MIGRATIONS: list[tuple[str, str]] = [
    (
        "001_cost_events",
        """
        CREATE TABLE cost_events (
            id TEXT PRIMARY KEY, request_id TEXT, ts TIMESTAMPTZ NOT NULL, step TEXT NOT NULL,
            provider TEXT, service TEXT, region TEXT, quantity NUMERIC NOT NULL, unit TEXT NOT NULL,
            unit_price NUMERIC, cost NUMERIC, currency TEXT NOT NULL,
            cost_center TEXT, team TEXT, feature TEXT, tenant TEXT, environment TEXT, user_id TEXT,
            tags JSONB NOT NULL DEFAULT '{}', trace_id TEXT, span_id TEXT, parent_span_id TEXT, name TEXT,
            latency_ms DOUBLE PRECISION, outcome TEXT NOT NULL, avoided NUMERIC, details JSONB NOT NULL DEFAULT '{}'
        )
    """,
    ),
    (
        "002_indexes",
        """
        CREATE INDEX ix_cost_events_request ON cost_events (request_id, cost);
        CREATE INDEX ix_cost_events_ts ON cost_events (ts)
    """,
    ),
    # Where each event was recorded. Rows written before this read "unknown", except those whose
    # details name a source (the integrations put it there): that is back-filled.
    (
        "003_source",
        f"""
        ALTER TABLE cost_events ADD COLUMN source TEXT NOT NULL DEFAULT 'unknown';
        UPDATE cost_events SET source = details->>'source'
            WHERE jsonb_typeof(details->'source') = 'string' AND details->>'source' ~ '{SOURCE_NAME_SQL}'
    """,
    ),
    # Per-request pre-aggregates (see ledger.request_rollup): the most expensive requests and distinct
    # request counts without a scan of every event. Added to by append() in the inserting transaction;
    # back-filled here from the events. A missing request id or attribute is '' with its bit in ``nulls``
    # (1 request id, 2 cost center, 4 feature, 8 tenant); ``hour`` counts whole hours since the epoch.
    (
        "004_request_rollup",
        """
        CREATE TABLE request_rollup (
            request_id TEXT NOT NULL, hour BIGINT NOT NULL, source TEXT NOT NULL, cost_center TEXT NOT NULL,
            feature TEXT NOT NULL, tenant TEXT NOT NULL, nulls INTEGER NOT NULL,
            cost NUMERIC NOT NULL DEFAULT 0, avoided NUMERIC NOT NULL DEFAULT 0,
            events BIGINT NOT NULL DEFAULT 0, unknown BIGINT NOT NULL DEFAULT 0,
            PRIMARY KEY (request_id, hour, source, cost_center, feature, tenant, nulls)
        );
        INSERT INTO request_rollup SELECT COALESCE(request_id, ''), floor(extract(epoch FROM ts) / 3600)::bigint,
            source, COALESCE(cost_center, ''), COALESCE(feature, ''), COALESCE(tenant, ''),
            (request_id IS NULL)::int + 2 * (cost_center IS NULL)::int + 4 * (feature IS NULL)::int
                + 8 * (tenant IS NULL)::int,
            COALESCE(SUM(cost), 0), COALESCE(SUM(avoided), 0), COUNT(*), COUNT(*) FILTER (WHERE cost IS NULL)
            FROM cost_events GROUP BY 1, 2, 3, 4, 5, 6, 7
    """,
    ),
]
