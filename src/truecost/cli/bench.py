"""`truecost bench cache|router`: the benchmark interfaces the issues are judged by."""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import click
from rich.console import Console

import truecost
from truecost.cli.bench_cache import bench_cache
from truecost.errors import TruecostError


@click.group("bench")
def bench() -> None:
    """Benchmarks that print JSON."""


bench.add_command(bench_cache)


def bench_dir() -> Path:
    """The repository's bench/ folder (benchmark protocols live there, outside the installed package)."""
    return Path(truecost.__file__).resolve().parents[2] / "bench"


def load_bench_module(name: str) -> ModuleType:
    """``truecost_bench.<name>`` from the repository's bench/ folder; a clear error from an install without it."""
    root = bench_dir() / "truecost_bench"
    if not (root / f"{name}.py").is_file():
        raise click.ClickException(
            f"this benchmark runs the protocol in the repository's bench/ folder, and there is none at {root.parent}: "
            "an installed truecost does not ship its benchmarks. Run it from a clone of the repository "
            "(bash scripts/setup.sh, then .venv/bin/truecost bench ...)"
        )
    if "truecost_bench" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "truecost_bench", root / "__init__.py", submodule_search_locations=[str(root)]
        )
        if spec is None or spec.loader is None:
            raise click.ClickException(f"{root}: not a loadable package")
        package = importlib.util.module_from_spec(spec)
        sys.modules["truecost_bench"] = package
        spec.loader.exec_module(package)
    return importlib.import_module(f"truecost_bench.{name}")


@bench.command("router")
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False), help="routing JSON Lines")
@click.option("--weak", required=True, help="the cheap model (as named in the file)")
@click.option("--strong", required=True, help="the strong model (as named in the file)")
@click.option("--strategy", default="all", show_default=True, help="rules | trained | cascade | all")
@click.option("--train-frac", type=float, default=0.5, show_default=True)
@click.option("--seed", type=int, default=0)
@click.option(
    "--embedder",
    "embedder_name",
    default="static",
    show_default=True,
    help="static (sub-millisecond) | minilm (more accurate, ~10 ms per prompt)",
)
@click.option(
    "--schema",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="JSON naming the data's columns: features, labels, ignore (default: <name>.schema.json beside "
    "the data, else bench/truecost_bench/routing_schemas.json for shared/data's public sets)",
)
@click.option("--json", "as_json", is_flag=True)
def bench_router(data, weak, strong, strategy, train_frac, seed, embedder_name, schema, as_json) -> None:
    """APGR, strong share and cost saving at 95% of strong quality, beside random and the oracle."""
    from truecost.cache.embedders import make_embedder

    protocol = load_bench_module("routing")
    if not 0.05 <= train_frac <= 0.95:
        raise click.BadParameter("train-frac must be between 0.05 and 0.95")
    try:
        embedder = make_embedder(embedder_name)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--embedder") from None
    console = Console(stderr=True)
    with console.status("training and evaluating routers..."):
        try:
            result = protocol.run(data, weak, strong, strategy, train_frac, seed, embedder=embedder, schema=schema)
        except (ValueError, TruecostError) as exc:
            raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    from rich.table import Table

    t = Table(title=f"routing: {data} ({result['test']} test prompts; {weak} -> {strong})")
    for c in ("strategy", "APGR", "strong share @95%", "cost saving @95%"):
        t.add_column(c)
    rows = [(k, v) for k, v in result["strategies"].items() if v.get("apgr") is not None]
    rows += [
        ("reference: logreg on static embeddings", result["reference_logreg_static_embeddings"]),
        ("random", result["random"]),
        ("oracle", result["oracle"]),
    ]
    for name, m in rows:
        fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
        t.add_row(
            name + (" (best)" if name == result.get("best_strategy") else ""),
            fmt(m["apgr"]),
            fmt(m["strong_share_at_95"]),
            fmt(m["cost_saving_at_95"]),
        )
    Console().print(t)
    if result.get("warning"):
        Console().print(f"[yellow]warning:[/] {result['warning']}")
