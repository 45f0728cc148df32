"""`truecost prices list|show|update|check`.

Layers, lowest first: genai-prices (bundled with the package, or the newest snapshot that
`truecost prices update` saved in the prices folder), truecost's own data, a LiteLLM JSON
(--litellm-file), the user's files (--prices-file). TRUECOST_PRICES_DIR moves the prices folder;
TRUECOST_GENAI_SNAPSHOT=bundled pins the package's own data, or names a snapshot file.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from truecost.errors import PriceFileError, UnknownModelError
from truecost.pricing.catalog import PriceCatalog

DEFAULT_DIR = ".truecost/prices"


def _prices_dir(value: str | None) -> Path:
    return Path(value or os.environ.get("TRUECOST_PRICES_DIR") or DEFAULT_DIR)


def genai_snapshot(prices_dir: str | None = None, pin: str | None = None) -> Path | None:
    """The genai-prices snapshot a catalog should use: pinned, else the newest saved, else bundled (None)."""
    from truecost.pricing.snapshots import latest

    pin = pin or os.environ.get("TRUECOST_GENAI_SNAPSHOT")
    if pin == "bundled":
        return None
    if pin:
        return Path(pin)
    return latest(_prices_dir(prices_dir))


def _catalog(
    files: tuple[str, ...], litellm: tuple[str, ...] = (), prices_dir: str | None = None, pin: str | None = None
) -> PriceCatalog:
    catalog = PriceCatalog.load(*files, genai_snapshot=genai_snapshot(prices_dir, pin))
    for f in litellm:
        from truecost.pricing.litellm_import import import_litellm

        result = import_litellm(f)
        catalog.add(result.entries)
        if result.unmapped:
            catalog.notes.append(
                f"{f}: {len(result.unmapped)} models carry price keys truecost does not map "
                f"(e.g. {next(iter(result.unmapped.items()))})"
            )
    return catalog  # (the litellm layer sits beneath the user's files whatever the order added)


def _at(value: str | None) -> datetime:
    if not value:
        return datetime.now(timezone.utc)
    try:
        d = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date like 2026-11-01") from None
    return d if d.tzinfo else d.replace(tzinfo=timezone.utc)


_layer_options = [
    click.option("--prices-file", "files", multiple=True, type=click.Path(exists=True), help="user price file(s)"),
    click.option(
        "--litellm-file",
        "litellm",
        multiple=True,
        type=click.Path(exists=True),
        help="LiteLLM model_prices_and_context_window.json to layer over the bundled data (from today)",
    ),
    click.option("--prices-dir", default=None, help=f"folder of saved genai-prices snapshots (default {DEFAULT_DIR})"),
    click.option(
        "--genai-snapshot",
        "pin",
        default=None,
        help="'bundled' to pin the package's data, or a snapshot file (default: newest saved, else bundled)",
    ),
]


def layer_options(f):
    for opt in reversed(_layer_options):
        f = opt(f)
    return f


@click.group("prices")
def prices() -> None:
    """The dated price catalog."""


@prices.command("list")
@click.option("--kind", help="chat, embedding, vector_db, egress, storage, log_ingest, compute, cache_service")
@click.option("--provider")
@click.option("--at", "at_", help="date the prices must be in force (default: now)")
@layer_options
@click.option("--json", "as_json", is_flag=True)
def list_prices(kind, provider, at_, files, litellm, prices_dir, pin, as_json) -> None:
    """Every priced resource with the rates in force."""
    catalog, at = _catalog(files, litellm, prices_dir, pin), _at(at_)
    rows: list[dict[str, Any]] = []
    for e in sorted(
        catalog.entries(kind, provider), key=lambda e: (e.resource.kind, e.resource.provider, e.resource.name)
    ):
        v = catalog.price_for(e.resource, at)
        rows.append(
            {
                "kind": e.resource.kind,
                "provider": e.resource.provider,
                "name": e.resource.name,
                "rates": {k: str(r) for k, r in v.rates.items()} if v else None,
                "unit": next(iter(v.units.values())).label if v else None,
                "effective_from": None if v is None or v.undated else v.effective_from.date().isoformat(),
                "layer": v.origin if v else None,
                "source": v.source if v else None,
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    t = Table(title=f"prices in force at {at.date()}", title_justify="left")
    for c in ("kind", "provider", "name", "rates (USD per unit)", "unit", "since", "layer"):
        t.add_column(c)
    for r in rows:
        rates = ", ".join(f"{k} {v}" for k, v in r["rates"].items()) if r["rates"] else "[red]none in force[/red]"
        t.add_row(
            r["kind"],
            r["provider"],
            r["name"],
            rates,
            r["unit"] or "",
            r["effective_from"] or "undated",
            r["layer"] or "",
        )
    Console().print(t)


def _version_dict(v) -> dict:
    def rates(m):
        return {k: str(r) for k, r in m.items()}

    return {
        "effective_from": None if v.undated else v.effective_from.isoformat(),
        "effective_to": v.effective_to.isoformat() if v.effective_to else None,
        "layer": v.origin,
        "rates": rates(v.rates),
        "units": {k: u.label for k, u in v.units.items()},
        "tiers": [{"above_prompt_tokens": t.above_prompt_tokens, "rates": rates(t.rates)} for t in v.tiers],
        "variants": [
            {
                "when": dict(x.when),
                "rates": rates(x.rates),
                "tiers": [{"above_prompt_tokens": t.above_prompt_tokens, "rates": rates(t.rates)} for t in x.tiers],
                "multiplier": str(x.multiplier) if x.multiplier is not None else None,
                "source": x.source,
            }
            for x in v.variants
        ],
        "free_per_month": str(v.free_per_month) if v.free_per_month is not None else None,
        "source": v.source,
        "undated": v.undated,
        "rate_sources": dict(v.attributes.get("rate_sources") or {}),  # rates a truecost rule supplied
        "not_offered": dict(v.attributes.get("unavailable") or {}),
    }


@prices.command("show")
@click.argument("name")
@layer_options
@click.option("--json", "as_json", is_flag=True)
def show_price(name, files, litellm, prices_dir, pin, as_json) -> None:
    """All dated versions of one model or resource: which layer each came from, and its source."""
    catalog = _catalog(files, litellm, prices_dir, pin)
    try:
        entry = catalog.resolve(name)
    except UnknownModelError as exc:
        raise click.ClickException(str(exc)) from None
    now = datetime.now(timezone.utc)
    in_force = next((v for v in reversed(entry.versions) if v.in_force(now)), None)
    versions = [_version_dict(v) for v in entry.versions]
    doc = {
        "query": name,
        "resource": entry.resource.key,
        "aliases": list(entry.aliases),
        "layer_in_force": in_force.origin if in_force else None,
        "layers": entry.layers,
        "versions": versions,
    }
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    console = Console()
    console.print(
        f"[bold]{entry.resource.key}[/bold]"
        + (f"  (from {name!r})" if name != entry.resource.name else "")
        + (f"  aliases: {', '.join(entry.aliases)}" if entry.aliases else "")
    )
    console.print(
        f"layer in force now: {doc['layer_in_force'] or 'none'}; layers with versions: {', '.join(entry.layers)}"
    )
    for v in versions:
        since = "undated (the source records no start)" if v["undated"] else v["effective_from"][:10]
        console.print(
            f"\n  \\[{v['layer']}] from {since}" + (f" to {v['effective_to'][:10]}" if v["effective_to"] else "")
        )
        for k, r in v["rates"].items():
            console.print(f"    {k:<18} ${r} per {v['units'][k]}")
        for t in v["tiers"]:
            console.print(
                f"    above {t['above_prompt_tokens']:,} prompt tokens: "
                + ", ".join(f"{k} ${r}" for k, r in t["rates"].items())
            )
        for x in v["variants"]:
            what = ", ".join(f"{k} ${r}" for k, r in x["rates"].items()) or ""
            if x["multiplier"]:
                what += (", " if what else "") + f"x{x['multiplier']} otherwise"
            console.print(
                f"    when {', '.join(f'{k}={val}' for k, val in x['when'].items())}: {what}"
                + (f" [dim]({x['source']})[/dim]" if x["source"] else "")
            )
        for k, src in v["rate_sources"].items():
            console.print(f"    [dim]{k}: supplied by truecost's rules ({src})[/dim]")
        for k, src in v["not_offered"].items():
            console.print(f"    not offered: {k} [dim]({src})[/dim]")
        if v["free_per_month"]:
            console.print(f"    free per month: {v['free_per_month']}")
        console.print(f"    [dim]source: {v['source']}[/dim]")


@prices.command("update")
@click.option("--url", default=None, help="where to fetch genai-prices data (default: genai-prices' own published URL)")
@click.option("--prices-dir", default=None, help=f"folder for dated snapshots (default {DEFAULT_DIR})")
@click.option("--json", "as_json", is_flag=True)
def update_prices(url, prices_dir, as_json) -> None:
    """Fetch a newer genai-prices snapshot into the prices folder, dated, and print what changed.

    The only command that reaches the network. Catalogs built by the CLI use the newest saved
    snapshot from then on; pin the package's data with --genai-snapshot bundled.
    """
    from truecost.pricing.catalog import bundled_documents
    from truecost.pricing.snapshots import update

    _own, releases = bundled_documents()
    try:
        result = update(_prices_dir(prices_dir), url, releases=releases)
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"no update: {exc}") from None
    if as_json:
        click.echo(
            json.dumps(
                {
                    "saved": str(result.path),
                    "models": result.models,
                    "changes": [
                        {
                            "model": c.model,
                            "what": c.what,
                            "old": str(c.old) if c.old is not None else None,
                            "new": str(c.new) if c.new is not None else None,
                        }
                        for c in result.changes
                    ],
                },
                indent=2,
            )
        )
        return
    click.echo(f"saved {result.path} ({result.models} models); {len(result.changes)} changes against the data in use:")
    for c in result.changes[:200]:
        click.echo(f"  {c}")
    if len(result.changes) > 200:
        click.echo(f"  ... and {len(result.changes) - 200} more (--json for all)")


def _ledger_records(path: str):
    from truecost.ledger import open_store
    from truecost.pricing.check import UsageRecord
    from truecost.types import TokenUsage
    from truecost.pricing.usage import CallUsage

    store = open_store(path)
    for e in store.query():
        tokens = e.details.get("tokens") if isinstance(e.details, dict) else None
        if not tokens or not e.service:
            continue
        base = {k: int(v) for k, v in tokens.items() if k in TokenUsage.__dataclass_fields__}
        extra = {k: int(v) for k, v in tokens.items() if k not in base}
        model = f"{e.provider}/{e.service}" if e.provider else e.service
        yield UsageRecord(
            model, CallUsage(TokenUsage(**base), extra), spend=e.cost, at=e.ts, batch=bool(e.details.get("batch"))
        )


def _spend_log_rows(path: Path):
    text = path.read_text(encoding="utf-8")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return doc if isinstance(doc, list) else doc.get("data") or doc.get("logs") or [doc]


def _spend_log_records(path: str):
    """LiteLLM spend logs (the LiteLLM_SpendLogs rows as JSON or JSON lines)."""
    from truecost.pricing.check import UsageRecord

    for row in _spend_log_rows(Path(path)):
        meta = row.get("metadata") or {}
        if isinstance(meta, str):
            try:
                meta = json.loads(meta)
            except json.JSONDecodeError:
                meta = {}
        usage = meta.get("usage_object") or {k: row[k] for k in ("prompt_tokens", "completion_tokens") if k in row}
        model = row.get("model") or row.get("model_group")
        provider = row.get("custom_llm_provider")
        if provider and model and "/" not in model:
            model = f"{provider}/{model}"
        spend = row.get("spend")
        at = row.get("startTime")
        try:
            when = datetime.fromisoformat(str(at).replace("Z", "+00:00")) if at else None
        except ValueError:
            when = None
        yield UsageRecord(model, usage or None, spend=Decimal(str(spend)) if spend is not None else None, at=when)


@prices.command("check")
@click.argument("log", type=click.Path(exists=True, dir_okay=False))
@layer_options
@click.option("--json", "as_json", is_flag=True)
def check_prices(log, files, litellm, prices_dir, pin, as_json) -> None:
    """Which models and usage fields in a ledger (SQLite .db) or a LiteLLM spend log the catalog cannot price."""
    from truecost.pricing.check import check

    catalog = _catalog(files, litellm, prices_dir, pin)
    is_sqlite = Path(log).read_bytes()[:16] == b"SQLite format 3\x00"
    try:
        records = list(_ledger_records(log) if is_sqlite else _spend_log_records(log))
    except (ValueError, AttributeError, PriceFileError) as exc:
        raise click.ClickException(f"cannot read {log}: {exc}") from None
    report = check(catalog, records)
    report["source"] = log
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(
        f"{report['rows']} usage rows, {report['priced']} priced, {report['unpriced']} not "
        f"(log spend ${report['spend_in_log']}, of it on unpriced rows ${report['spend_unpriced']})"
    )
    for g in report["gaps"]:
        fields = f" [fields: {', '.join(g['usage_fields'])}]" if g["usage_fields"] else ""
        click.echo(f"  {g['model']}: {g['rows']} rows, ${g['spend']}, {g['tokens']:,} tokens — {g['reason']}{fields}")


__all__ = ["prices", "genai_snapshot"]
