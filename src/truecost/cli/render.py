"""Rich tables shared by the CLI commands."""

from __future__ import annotations

from decimal import Decimal
from typing import Sequence

from rich.console import Console, JustifyMethod
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from truecost.ledger.events import CostEvent
from truecost.ledger.store import AggregateRow


def usd(d: Decimal | None, places: int = 8) -> str:
    if d is None:
        return "unknown"
    return f"${d:,.{places}f}"


def share(part: Decimal, total: Decimal) -> str:
    return f"{float(part / total) * 100:5.1f}%" if total else "-"


def request_table(events: Sequence[CostEvent], title: str) -> Table:
    t = Table(title=title, title_justify="left")
    columns: list[tuple[str, JustifyMethod]] = [
        ("step", "left"),
        ("what", "left"),
        ("quantity", "right"),
        ("unit", "left"),
        ("unit price", "right"),
        ("cost", "right"),
        ("ms", "right"),
    ]
    for col, just in columns:
        t.add_column(col, justify=just)
    total = sum((e.cost for e in events if e.cost is not None), Decimal(0))
    for e in events:
        what = " / ".join(x for x in (e.name, e.service) if x and x != e.name) or e.name or e.service or ""
        qty = f"{e.quantity:.6g}" if e.quantity is not None else ""
        t.add_row(
            e.step,
            what,
            qty,
            e.unit,
            usd(e.unit_price, 10) if e.unit_price is not None else "",
            usd(e.cost) if e.cost is not None else f"[red]unknown[/red] ({e.details.get('unknown_reason', '')})",
            f"{e.latency_ms:.2f}" if e.latency_ms is not None else "",
        )
    t.add_section()
    t.add_row("total", "", "", "", "", usd(total), "")
    return t


def aggregate_table(rows: Sequence[AggregateRow], columns: Sequence[str], title: str) -> Table:
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c)
    for c in ("cost", "share", "events", "requests", "unknown price", "avoided"):
        t.add_column(c, justify="right")
    total = sum((r.cost for r in rows), Decimal(0))
    for r in rows:
        t.add_row(
            *[str(k) if k is not None else "-" for k in r.keys],
            usd(r.cost, 6),
            share(r.cost, total),
            f"{r.events:,}",
            f"{r.request_count:,}" if r.request_count is not None else "",
            f"{r.unknown:,}" if r.unknown else "",
            usd(r.avoided_cost, 6) if r.avoided_cost else "",
        )
    return t


def row_json(r: AggregateRow, columns: Sequence[str]) -> dict:
    return {
        **dict(zip(columns, r.keys)),
        "cost_usd": str(r.cost),
        "avoided_usd": str(r.avoided_cost),
        "events": r.events,
        "requests": r.request_count,
        "unknown_price_events": r.unknown,
    }


def progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
