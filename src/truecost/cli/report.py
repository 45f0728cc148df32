"""`truecost report`: where the money went, per request and per step.

Totals by step, by cost center and by source (where each event was recorded: gateway, sdk,
otlp, litellm, langchain, llamaindex; "unknown" for rows from before events had a source).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import click
from rich.console import Console

from truecost.cli.render import aggregate_table, request_table, row_json, usd
from truecost.ledger.events import GENERATION_STEPS
from truecost.ledger.queries import request_breakdown, summary
from truecost.ledger.serialize import event_to_dict
from truecost.ledger.store import GROUP_FIELDS, LedgerFilter, LedgerStore, rollup

DEFAULT_DB = ".truecost/ledger.db"


def parse_time(value: str | None, option: str) -> datetime | None:
    if not value:
        return None
    try:
        d = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO date or time like 2026-11-01 or 2026-11-01T12:00", param_hint=option
        ) from None
    return d if d.tzinfo else d.replace(tzinfo=timezone.utc)


def build_report(store: LedgerStore, filter: LedgerFilter, group_bys: list[list[str]]) -> dict:
    """Everything in one scan of the ledger: the finest grouping, rolled up in Python."""
    dims = list(dict.fromkeys(d for g in group_bys for d in g))
    fine = store.aggregate(dims, filter, count_requests=False)
    tables = {",".join(g): rollup(fine, dims, g) for g in group_bys}
    by_step = rollup(fine, dims, ["step"])
    s = summary(store, filter, by_step=by_step)
    per_request = [{"step": r.keys[0], "cost_usd": str(r.cost / s.requests) if s.requests else None} for r in by_step]
    return {
        "total_usd": str(s.total),
        "requests": s.requests,
        "events": s.events,
        "cost_per_request_usd": str(s.cost_per_request) if s.cost_per_request is not None else None,
        "generation_usd": str(s.generation),
        "generation_share": s.generation_share,
        "avoided_usd": str(s.avoided),
        "unknown_price_events": s.unknown,
        "per_request_by_step": per_request,
        "totals": {name: [row_json(r, name.split(",")) for r in rows] for name, rows in tables.items()},
        "_tables": tables,
    }


@click.command("report")
@click.option("--db", default=DEFAULT_DB, show_default=True, help="ledger: a SQLite path or 'memory:'")
@click.option("--request", "request_id", help="show one request's steps")
@click.option(
    "--by", "group_by", multiple=True, help=f"extra grouping, comma-separated from: {', '.join(GROUP_FIELDS)}"
)
@click.option("--since", help="ISO date/time, inclusive")
@click.option("--until", help="ISO date/time, exclusive")
@click.option(
    "--source", help="only events recorded by this source (gateway, sdk, otlp, litellm, langchain, llamaindex)"
)
@click.option("--json", "as_json", is_flag=True)
def report(db, request_id, group_by, since, until, source, as_json) -> None:
    """Cost per request by step, and totals by step, cost center and source."""
    from truecost.ledger import open_store

    if db != "memory:" and not Path(db).exists():
        raise click.ClickException(f"no ledger at {db}; run `truecost demo` or pass --db")
    store = open_store(db)
    try:
        flt = LedgerFilter(
            since=parse_time(since, "--since"), until=parse_time(until, "--until"), source=source or None
        )
        groups = [["step"], ["cost_center"], ["source"]] + [g.split(",") for g in group_by]
        for g in groups:
            bad = [x for x in g if x not in GROUP_FIELDS]
            if bad:
                raise click.BadParameter(f"cannot group by {', '.join(bad)}", param_hint="--by")
        data = build_report(store, flt, groups)
        tables = data.pop("_tables")
        one = request_breakdown(store, request_id) if request_id else None
        if one is not None and not one.events:
            raise click.ClickException(f"no events for request {request_id}")
        if as_json:
            if one:
                data["request"] = {
                    "request_id": request_id,
                    "total_usd": str(one.total),
                    "events": [event_to_dict(e) for e in one.events],
                }
            click.echo(json.dumps(data, indent=2, default=str))
            return
        _print(Console(), data, tables, one)
    finally:
        store.close()


def _print(console: Console, data: dict, tables: dict, one) -> None:
    from decimal import Decimal

    if one:
        sources = ", ".join(sorted({e.source for e in one.events}))
        console.print(request_table(one.events, f"request {one.request_id} (source: {sources})"))
    console.print(
        f"[bold]{data['requests']:,} requests, {data['events']:,} events, total {usd(Decimal(data['total_usd']), 4)}"
        f"[/bold]; per request {usd(Decimal(data['cost_per_request_usd']), 6) if data['cost_per_request_usd'] else '-'}"
    )
    if data["generation_share"] is not None:
        console.print(
            f"generation ({', '.join(sorted(GENERATION_STEPS))}) is "
            f"[bold]{data['generation_share'] * 100:.1f}%[/bold] of the known cost; "
            f"everything else {100 - data['generation_share'] * 100:.1f}%"
        )
    if data["unknown_price_events"]:
        console.print(
            f"[red]{data['unknown_price_events']:,} events have an unknown price[/red] and are not in the totals"
        )
    if Decimal(data["avoided_usd"]):
        console.print(f"avoided by cache and routing: {usd(Decimal(data['avoided_usd']), 4)}")
    for name, rows in tables.items():
        console.print(aggregate_table(rows, name.split(","), "totals by " + name.replace(",", ", ")))
