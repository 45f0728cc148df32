"""`truecost audit cache|routing|costs`, `truecost whatif`, `truecost reconcile`, `truecost export focus`.

Thin shells: parse flags, call ``truecost.audit``, write the JSON + HTML report, print a
short summary (or the JSON with ``--json``).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from functools import wraps
from pathlib import Path

import click
from rich.console import Console

from truecost.cli.render import progress_bar
from truecost.errors import TruecostError

DEFAULT_OUT = ".truecost/reports"


def _clean_errors(fn):
    """Bad input becomes one clear line and exit code 2, never a traceback."""

    @wraps(fn)
    def inner(*a, **kw):
        try:
            return fn(*a, **kw)
        except (TruecostError, ValueError, OSError) as exc:
            raise click.ClickException(str(exc)) from None

    return inner


def _emit(result: dict, paths, as_json: bool, lines: list[str]) -> None:
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
        return
    console = Console()
    for line in lines:
        console.print(line)
    console.print(f"report: [bold]{paths[1]}[/bold]  (data: {paths[0]})")


def _open_ledger(path: str):
    from truecost.ledger.sqlite import SQLiteLedgerStore

    if not Path(path).exists():
        raise click.ClickException(f"{path}: no such ledger")
    return SQLiteLedgerStore(path)


@click.group("audit")
def audit() -> None:
    """Would a cache or a router pay, and where does the money go? Reports with charts."""


@audit.command("cache")
@click.argument("queries", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv", "text", "ledger"]), help="default: by file suffix")
@click.option("--text-field", default="text", show_default=True, help="the query column / JSON field")
@click.option("--label-field", default=None, help="intent labels (e.g. 'intent'): reports false hits per threshold")
@click.option(
    "--threshold", "thresholds", multiple=True, type=float, help="cosine thresholds (default 0.85); repeat for several"
)
@click.option("--embedder", "embedder_name", default="static", show_default=True, help="static | minilm")
@click.option("--limit", type=int, default=None, help="only the first N queries")
@click.option("--model", default="gpt-4o-mini", show_default=True, help="the model whose calls a hit saves")
@click.option("--requests-per-day", default=10_000, show_default=True)
@click.option(
    "--input-tokens", type=int, default=None, help="tokens per request in (default: the log's mean query length)"
)
@click.option("--output-tokens", default=300, show_default=True)
@click.option(
    "--embedding-model", default=None, help="price lookups with this catalog embedding model (default: local, free)"
)
@click.option("--out", "out_dir", default=DEFAULT_OUT, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print the JSON instead of a summary")
@_clean_errors
def audit_cache(
    queries,
    fmt,
    text_field,
    label_field,
    thresholds,
    embedder_name,
    limit,
    model,
    requests_per_day,
    input_tokens,
    output_tokens,
    embedding_model,
    out_dir,
    as_json,
) -> None:
    """Cluster a query log and project the hit rate and savings of a semantic cache."""
    from truecost.audit.cache_report import SavingsInputs, run_cache_audit, write_cache_report
    from truecost.audit.sources import read_queries
    from truecost.cache.embedders import make_embedder

    thresholds = tuple(thresholds) or (0.85,)
    if any(not 0 < t < 1 for t in thresholds):
        raise click.BadParameter(
            "thresholds are cosine similarities strictly between 0 and 1", param_hint="--threshold"
        )
    rows, stats = read_queries(queries, text_field, label_field, fmt)
    rows = rows[:limit] if limit else rows
    embedder = make_embedder(embedder_name)
    console = Console(stderr=True)
    with progress_bar(console) as prog:
        task = prog.add_task(f"embedding + nearest neighbours ({embedder_name})", total=len(rows))
        r = run_cache_audit(
            rows,
            stats,
            embedder.embed_batch,
            embedder.model_id,
            thresholds,
            SavingsInputs(model, requests_per_day, input_tokens, output_tokens, embedding_model),
            progress=lambda n, total: prog.update(task, completed=n),
            out_dir=out_dir,
            source=str(queries),
        )
    paths = write_cache_report(r, out_dir)
    h = r["thresholds"][0]
    fh = "" if h["false_hit_rate"] is None else f", false hits {h['false_hit_rate']:.2%}"
    _emit(
        r,
        paths,
        as_json,
        [
            f"[bold]{r['recommendation']['recommendation']}[/bold]",
            r["recommendation"]["rule"],
            f"projected hit rate {h['hit_rate']:.1%} at cos >= {h['threshold']:g}{fh}; net savings "
            f"${r['savings']['monthly_net_savings_usd']}/month at {requests_per_day:,} requests/day on {model}",
        ],
    )


@audit.command("routing")
@click.argument("sample_file", type=click.Path(dir_okay=False))
@click.option("-n", "--sample", "n", default=500, show_default=True, help="how many queries to draw")
@click.option("--seed", default=0, show_default=True)
@click.option("--text-field", default=None, help="default: 'text', or 'prompt' for routing files")
@click.option("--labels", "labels_csv", type=click.Path(dir_okay=False), help="CSV of human labels (id or text, label)")
@click.option(
    "--label-with",
    type=click.Choice(["csv", "interactive", "rules", "judge", "quality"]),
    default=None,
    help="default: csv when --labels is given, else rules",
)
@click.option(
    "--label-file",
    default=".truecost/routing_labels.csv",
    show_default=True,
    help="where interactive labels are kept (resumable)",
)
@click.option("--judge-url", default=None, help="OpenAI-compatible base URL of the judge model")
@click.option("--judge-model", default=None)
@click.option("--weak", default=None, help="routing files: the weak model whose quality labels 'small'")
@click.option("--strong", default=None, help="routing files: the strong model")
@click.option("--small-model", default="gpt-4o-mini", show_default=True)
@click.option("--large-model", default="gpt-4o", show_default=True)
@click.option("--input-tokens", type=int, default=None, help="default: the sample's mean prompt length")
@click.option("--output-tokens", default=300, show_default=True)
@click.option("--requests-per-day", default=10_000, show_default=True)
@click.option("--out", "out_dir", default=DEFAULT_OUT, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@_clean_errors
def audit_routing(**flags) -> None:
    """Share of traffic a small model could serve, with a confidence interval, and each strategy's cost."""
    from truecost.audit import routing_audit as ra
    from truecost.audit.cache_report import estimate_tokens
    from truecost.audit.sources import read_queries

    o = RoutingAuditOptions(**flags)
    field = o.text_field or ("prompt" if o.routing_file else "text")
    rows, _ = read_queries(
        o.sample_file,
        field,
        None,
        "jsonl" if o.routing_file else None,
        id_field="prompt_id" if o.routing_file else "id",
    )
    sample = ra.draw_sample(rows, o.n, o.seed)
    labels = _routing_labels(ra, sample, o)
    prices = ra.Prices(
        o.small_model, o.large_model, o.input_tokens or estimate_tokens(sample), o.output_tokens, o.requests_per_day
    )
    r = ra.run_routing_audit(sample, labels, prices, o.mode, source=str(o.sample_file))
    paths = ra.write_routing_report(r, o.out_dir)
    st = {s["strategy"]: s for s in r["strategies"]}
    lines = [f"[bold]{r['recommendation']['recommendation']}[/bold]", r["recommendation"]["rule"]]
    lines += [
        f"{name}: ${s['monthly_usd']:,}/month, saves {s['saving_vs_large']:.1%} vs always large, "
        f"misroutes {s['misrouted_share']:.1%}"
        for name, s in st.items()
        if name in ("rules router", "ideal router")
    ]
    _emit(r, paths, o.as_json, lines)


@dataclass(frozen=True)
class RoutingAuditOptions:
    """The flags of `truecost audit routing`, as one value."""

    sample_file: str
    n: int
    seed: int
    text_field: str | None
    labels_csv: str | None
    label_with: str | None
    label_file: str
    judge_url: str | None
    judge_model: str | None
    weak: str | None
    strong: str | None
    small_model: str
    large_model: str
    input_tokens: int | None
    output_tokens: int
    requests_per_day: int
    out_dir: str
    as_json: bool

    @property
    def routing_file(self) -> bool:
        """A routing file (per-model quality) rather than plain queries."""
        return self.label_with == "quality" or (self.weak is not None and self.strong is not None)

    @property
    def mode(self) -> str:
        return self.label_with or ("csv" if self.labels_csv else "quality" if self.routing_file else "rules")


def _routing_labels(ra, sample, o: RoutingAuditOptions) -> dict[str, str]:
    """small / large / skip per sampled query, from the label source the flags name."""
    if o.mode == "csv":
        if not o.labels_csv:
            raise click.UsageError("--label-with csv needs --labels FILE")
        return ra.labels_from_csv(o.labels_csv, sample)
    if o.mode == "rules":
        return ra.labels_from_rules(sample, ra.RulesRouter(o.small_model, o.large_model))
    if o.mode == "quality":
        if not (o.weak and o.strong):
            raise click.UsageError("--label-with quality needs --weak and --strong")
        return ra.labels_from_quality(o.sample_file, o.weak, o.strong, sample)
    if o.mode == "judge":
        if not (o.judge_url and o.judge_model):
            raise click.UsageError("--label-with judge needs --judge-url and --judge-model")
        with progress_bar(Console(stderr=True)) as prog:
            task = prog.add_task("asking the judge", total=len(sample))
            return ra.labels_from_judge(
                sample,
                ra.openai_judge(o.judge_url, o.judge_model),
                progress=lambda i, t: prog.update(task, completed=i),
            )
    return _label_interactively(ra, sample, o.label_file)


def _label_interactively(ra, sample, label_file):
    import click as _click

    console = Console()
    console.print("[bold]label: s = small model is enough, l = needs the large model, k = skip, q = stop (resumable)")

    def show(i, total, row):
        console.rule(f"{i}/{total}")
        console.print(row.text[:2000])

    def read_key():
        return _click.getchar() if sys.stdin.isatty() else (sys.stdin.readline().strip()[:1] or "q")

    return ra.label_interactively(sample, ra.LabelFile(label_file), read_key, show)


@audit.command("costs")
@click.argument("source", type=click.Path(dir_okay=False), default=".truecost/demo.db")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["ledger", "otel", "litellm"]),
    default=None,
    help="default: .json = OpenTelemetry export, .csv = LiteLLM spend log, else a truecost ledger",
)
@click.option("--since", default=None, help="ISO date/time, inclusive")
@click.option("--until", default=None, help="ISO date/time, exclusive")
@click.option("--out", "out_dir", default=DEFAULT_OUT, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@_clean_errors
def audit_costs(source, fmt, since, until, out_dir, as_json) -> None:
    """Per-step, per-model, per-cost-center breakdown from a ledger or imported traces."""
    from truecost.audit.costs import load_source, run_cost_audit, write_costs_report
    from truecost.cli.report import parse_time
    from truecost.ledger.store import LedgerFilter
    from truecost.pricing.catalog import PriceCatalog

    store, info = load_source(source, fmt, PriceCatalog.bundled(), _open_ledger)
    flt = LedgerFilter(since=parse_time(since, "--since"), until=parse_time(until, "--until"))
    r = run_cost_audit(store, flt, source=str(source))
    r["input"] = info
    paths = write_costs_report(r, out_dir)
    gs = r["generation_share"]
    _emit(
        r,
        paths,
        as_json,
        [
            f"total ${r['total_usd']:.6f} over {r['requests']:,} requests; generation "
            f"{'n/a' if gs is None else f'{gs:.1%}'} of it; {r['unknown_requests']} requests with unknown prices",
            "by category: "
            + ", ".join(f"{c['category']} {c['share']:.1%}" for c in r["categories"] if c["share"] is not None),
        ],
    )


@click.command("whatif")
@click.argument("scenario", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", default=DEFAULT_OUT, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@_clean_errors
def whatif(scenario, out_dir, as_json) -> None:
    """Monthly cost stack of a pipeline scenario, and which knob moves the bill most."""
    from truecost.audit.whatif import load_scenario, run_whatif, write_whatif_report

    r = run_whatif(load_scenario(scenario), source=str(scenario))
    paths = write_whatif_report(r, out_dir)
    top = r["sensitivity"][0] if r["sensitivity"] else None
    _emit(
        r,
        paths,
        as_json,
        [
            f"[bold]${r['monthly_total_usd']:,}/month[/bold] (${r['cost_per_request_usd']:.6f}/request); "
            f"generation {r['generation_share']:.1%}",
            "stack: " + ", ".join(f"{s['step']} ${s['monthly_usd']:,}" for s in r["stack"]),
            f"biggest lever: {top['knob']} (swing ${top['swing_usd']:,})" if top else "",
        ],
    )


@click.command("reconcile")
@click.argument("bill", type=click.Path(dir_okay=False, exists=True))
@click.option("--db", default=".truecost/demo.db", show_default=True, help="the ledger to compare with")
@click.option("--out", "out_dir", default=DEFAULT_OUT, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@_clean_errors
def reconcile_cmd(bill, db, out_dir, as_json) -> None:
    """Compare a FOCUS billing export with the ledger: matched, unattributed, over-attributed."""
    from truecost.audit.focus import read_bill, reconcile, write_reconcile_report

    lines = read_bill(bill)
    r = reconcile(lines, _open_ledger(db))
    r["source"] = str(bill)
    paths = write_reconcile_report(r, out_dir)
    t = r["totals"]
    _emit(
        r,
        paths,
        as_json,
        [
            f"bill ${t['billed']:,.2f} vs ledger ${t['ledger']:,.2f}: matched ${t['matched']:,.2f}, "
            f"unattributed ${t['unattributed']:,.2f}, over-attributed ${t['over_attributed']:,.2f}"
        ],
    )


@click.group("export")
def export() -> None:
    """Export the ledger."""


@export.command("focus")
@click.option("--db", default=".truecost/demo.db", show_default=True)
@click.option("--out", "out_path", default=".truecost/focus.csv", show_default=True, help=".csv or .parquet")
@click.option("--since", default=None)
@click.option("--until", default=None)
@_clean_errors
def export_focus(db, out_path, since, until) -> None:
    """The ledger as FOCUS 1.2 line items (CSV, or Parquet with pyarrow)."""
    from truecost.audit.focus import write_export
    from truecost.cli.report import parse_time
    from truecost.ledger.store import LedgerFilter

    n = write_export(
        _open_ledger(db), out_path, LedgerFilter(since=parse_time(since, "--since"), until=parse_time(until, "--until"))
    )
    click.echo(f"wrote {n} FOCUS rows to {out_path}")
