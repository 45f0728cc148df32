"""`truecost prices list|show`."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import click
from rich.console import Console
from rich.table import Table

from truecost.errors import UnknownModelError
from truecost.pricing.catalog import PriceCatalog


def _catalog(files: tuple[str, ...], litellm: tuple[str, ...] = ()) -> PriceCatalog:
    catalog = PriceCatalog.load(*files)
    for f in litellm:
        from truecost.pricing.litellm_import import import_litellm_prices

        entries, _skipped = import_litellm_prices(f)
        catalog.add(entries)
    return catalog


def _at(value: str | None) -> datetime:
    if not value:
        return datetime.now(timezone.utc)
    try:
        d = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date like 2026-11-01") from None
    return d if d.tzinfo else d.replace(tzinfo=timezone.utc)


@click.group("prices")
def prices() -> None:
    """The dated price catalog."""


@prices.command("list")
@click.option("--kind", help="chat, embedding, vector_db, egress, storage, log_ingest, compute, cache_service")
@click.option("--provider")
@click.option("--at", "at_", help="date the prices must be in force (default: now)")
@click.option("--prices-file", "files", multiple=True, type=click.Path(exists=True), help="user price file(s)")
@click.option("--litellm-file", "litellm", multiple=True, type=click.Path(exists=True),
              help="LiteLLM model_prices_and_context_window.json to layer on top (in force from today)")
@click.option("--json", "as_json", is_flag=True)
def list_prices(kind, provider, at_, files, litellm, as_json) -> None:
    """Every priced resource with the rates in force."""
    catalog, at = _catalog(files, litellm), _at(at_)
    rows = []
    for e in sorted(catalog.entries(kind, provider), key=lambda e: (e.resource.kind, e.resource.provider, e.resource.name)):
        v = catalog.price_for(e.resource, at)
        rows.append({"kind": e.resource.kind, "provider": e.resource.provider, "name": e.resource.name,
                     "rates": {k: str(r) for k, r in v.rates.items()} if v else None,
                     "unit": next(iter(v.units.values())).label if v else None,
                     "effective_from": v.effective_from.date().isoformat() if v else None,
                     "source": v.source if v else None})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    t = Table(title=f"prices in force at {at.date()}", title_justify="left")
    for c in ("kind", "provider", "name", "rates (USD per unit)", "unit", "since"):
        t.add_column(c)
    for r in rows:
        rates = ", ".join(f"{k} {v}" for k, v in r["rates"].items()) if r["rates"] else "[red]none in force[/red]"
        t.add_row(r["kind"], r["provider"], r["name"], rates, r["unit"] or "", r["effective_from"] or "")
    Console().print(t)


@prices.command("show")
@click.argument("name")
@click.option("--prices-file", "files", multiple=True, type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True)
def show_price(name, files, as_json) -> None:
    """All dated versions of one model or resource, with sources."""
    try:
        entry = _catalog(files).resolve(name)
    except UnknownModelError as exc:
        raise click.ClickException(str(exc)) from None
    versions = [{"effective_from": v.effective_from.isoformat(), "effective_to": v.effective_to.isoformat()
                 if v.effective_to else None, "rates": {k: str(r) for k, r in v.rates.items()},
                 "units": {k: u.label for k, u in v.units.items()},
                 "tiers": [{"above_prompt_tokens": t.above_prompt_tokens, "rates": {k: str(r) for k, r in t.rates.items()}}
                           for t in v.tiers],
                 "batch_multiplier": str(v.batch_multiplier) if v.batch_multiplier is not None else None,
                 "free_per_month": str(v.free_per_month) if v.free_per_month is not None else None,
                 "source": v.source, "origin": v.origin} for v in entry.versions]
    if as_json:
        click.echo(json.dumps({"resource": entry.resource.key, "aliases": list(entry.aliases), "versions": versions},
                              indent=2))
        return
    console = Console()
    console.print(f"[bold]{entry.resource.key}[/bold]" + (f"  aliases: {', '.join(entry.aliases)}" if entry.aliases else ""))
    for v in versions:
        console.print(f"\n  from {v['effective_from'][:10]}" + (f" to {v['effective_to'][:10]}" if v["effective_to"] else ""))
        for k, r in v["rates"].items():
            console.print(f"    {k:<16} ${r} per {v['units'][k]}")
        for t in v["tiers"]:
            console.print(f"    above {t['above_prompt_tokens']:,} prompt tokens: " + ", ".join(f"{k} ${r}" for k, r in t["rates"].items()))
        if v["batch_multiplier"]:
            console.print(f"    batch: x{v['batch_multiplier']}")
        if v["free_per_month"]:
            console.print(f"    free per month: {v['free_per_month']}")
        console.print(f"    [dim]source: {v['source']}[/dim]")
