"""`truecost bench cache|router`: the benchmark interfaces the issues are judged by."""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import time
from pathlib import Path
from types import ModuleType

import click
import numpy as np
from rich.console import Console

import truecost
from truecost.cli.render import progress_bar as _progress
from truecost.errors import TruecostError


@click.group("bench")
def bench() -> None:
    """Benchmarks that print JSON."""


@bench.command("cache")
@click.option("--data", "data", required=True, type=click.Path(exists=True, dir_okay=False),
              help="intent-labelled JSON Lines (text, intent)")
@click.option("--limit", type=int, default=None)
@click.option("--seed", type=int, default=0)
@click.option("--target-error", type=float, default=0.01, show_default=True)
@click.option("--policy", default="online", show_default=True, help="online | fixed:<cosine>")
@click.option("--embedder", "embedder_name", default="minilm", show_default=True, help="minilm | static")
@click.option("--index", "index_name", default="exact", show_default=True, help="exact | hnsw")
@click.option("--peers/--no-peers", default=True, show_default=True, help="run GPTCache side by side")
@click.option("--compare-embedders/--no-compare-embedders", default=True, show_default=True,
              help="also run the protocol with the other embedder (hit rate and latency for every embedder)")
@click.option("--json", "as_json", is_flag=True)
def bench_cache(data, limit, seed, target_error, policy, embedder_name, index_name, peers, compare_embedders,
                as_json) -> None:
    """Hit rate at a bounded false-hit rate, against a hindsight-tuned fixed threshold and GPTCache."""
    from truecost.cache.embedders import EMBEDDERS, make_embedder
        if spec is None or spec.loader is None:
            raise click.ClickException(f"{root}: not a loadable package")
    from truecost.cache.evaluation import correct, hindsight_fixed, load_intent_file, run_policy
    from truecost.cache.policy import make_policy
    from truecost.cache.peers import gptcache_threshold_for_cosine, run_gptcache

    console = Console(stderr=True)
    try:
        queries = load_intent_file(data, limit, seed)
        embedder = make_embedder(embedder_name)
        make_policy(policy, target_error, seed)
    except (ValueError, TruecostError) as exc:
        raise click.ClickException(str(exc)) from None
    started = time.perf_counter()
    with _progress(console) as prog:
        task = prog.add_task(f"{policy} policy", total=len(queries))
        ours = run_policy(queries, embedder, make_policy(policy, target_error, seed), index_name,
                          progress=lambda n: prog.update(task, completed=n))
        task = prog.add_task("embedding for the baseline and peers", total=len(queries))
        vectors = _embed_all(embedder, queries, lambda n: prog.update(task, completed=n))
    with console.status("sweeping fixed thresholds with hindsight..."):
        baseline = hindsight_fixed(vectors, queries, target_error)
    result = {"data": data, "seed": seed, "target_error": target_error, "embedder": embedder.model_id,
              **{k: v for k, v in ours.items()},
              "pretrained_on_other_data": False,
              "baseline_fixed_hindsight": {**baseline["best"], "curve": baseline["curve"]},
              "ratio_vs_baseline": ours["hit_rate"] / baseline["best"]["hit_rate"] if baseline["best"]["hit_rate"] else None,
              "meets_error_bound": ours["false_hit_rate"] <= target_error}
    if compare_embedders:
        result["embedders"] = [_embedder_row(embedder.model_id, result)]
        for other in (n for n in EMBEDDERS if n != embedder_name):
            with console.status(f"the same protocol with the {other} embedder..."):
                alt = make_embedder(other)
                row = run_policy(queries, alt, make_policy(policy, target_error, seed), index_name)
                alt_base = hindsight_fixed(_embed_all(alt, queries), queries, target_error)["best"]
            result["embedders"].append(_embedder_row(alt.model_id, {
                **row, "baseline_fixed_hindsight": alt_base,
                "ratio_vs_baseline": row["hit_rate"] / alt_base["hit_rate"] if alt_base["hit_rate"] else None}))
    if peers:
        peer_rows = []
        with console.status("GPTCache at its default threshold 0.8..."):
            peer_rows.append({"setting": "default", **run_gptcache(queries, vectors, 0.8, lambda q, a: correct(q, a))})
        best_cos = baseline["best"]["threshold"]
        if best_cos is not None:
            with console.status("GPTCache at the best fixed threshold..."):
                peer_rows.append({"setting": "best fixed (hindsight)",
                                  **run_gptcache(queries, vectors, gptcache_threshold_for_cosine(best_cos),
                                                 lambda q, a: correct(q, a))})
        result["peers"] = peer_rows
    result["seconds"] = round(time.perf_counter() - started, 1)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        _print_cache(console, result)


def _embed_all(embedder, queries, progress=None) -> np.ndarray:
    vectors = np.zeros((len(queries), embedder.dims), dtype=np.float32)
    for start in range(0, len(queries), 256):
        vectors[start:start + 256] = embedder.embed_batch([q.text for q in queries[start:start + 256]])
        if progress:
            progress(min(start + 256, len(queries)))
    return vectors


def _embedder_row(model_id: str, r: dict) -> dict:
    b = r["baseline_fixed_hindsight"]
    return {"embedder": model_id, "hit_rate": r["hit_rate"], "false_hit_rate": r["false_hit_rate"],
            "lookup_ms_p50": r["lookup_ms_p50"], "lookup_ms_p99": r["lookup_ms_p99"],
            "baseline_fixed_hindsight": {k: b[k] for k in ("threshold", "hit_rate", "false_hit_rate")},
            "ratio_vs_baseline": r["ratio_vs_baseline"]}


def _print_cache(console: Console, r: dict) -> None:
    from rich.table import Table

    t = Table(title=f"cache benchmark: {r['data']} ({r['queries']} queries, target false-hit rate {r['target_error']})")
    for c in ("method", "hit rate", "false-hit rate", "lookup p50 ms", "lookup p99 ms"):
        t.add_column(c)
    t.add_row(r["policy"], f"{r['hit_rate']:.1%}", f"{r['false_hit_rate']:.2%}", f"{r['lookup_ms_p50']:.2f}",
              f"{r['lookup_ms_p99']:.2f}")
    b = r["baseline_fixed_hindsight"]
    t.add_row(f"fixed cos>={b['threshold']} (hindsight)", f"{b['hit_rate']:.1%}", f"{b['false_hit_rate']:.2%}", "", "")
    for e in r.get("embedders", [])[1:]:
        t.add_row(f"{r['policy']} with {e['embedder']} ({e['ratio_vs_baseline'] or 0:.2f}x its fixed baseline)",
                  f"{e['hit_rate']:.1%}", f"{e['false_hit_rate']:.2%}", f"{e['lookup_ms_p50']:.2f}",
                  f"{e['lookup_ms_p99']:.2f}")
    for p in r.get("peers", []):
        if "error" in p:
            t.add_row(p["peer"], p["error"], "", "", "")
        else:
            t.add_row(f"{p['peer']} {p['setting']} (t={p['threshold']:.3f})", f"{p['hit_rate']:.1%}",
                      f"{p['false_hit_rate']:.2%}", f"{p['lookup_ms_p50_excluding_embedding']:.2f}+embed",
                      f"{p['lookup_ms_p99_excluding_embedding']:.2f}+embed")
    Console().print(t)


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
            "(bash scripts/setup.sh, then .venv/bin/truecost bench ...)")
    if "truecost_bench" not in sys.modules:
        spec = importlib.util.spec_from_file_location("truecost_bench", root / "__init__.py",
                                                      submodule_search_locations=[str(root)])
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
@click.option("--embedder", "embedder_name", default="static", show_default=True,
              help="static (sub-millisecond) | minilm (more accurate, ~10 ms per prompt)")
@click.option("--schema", type=click.Path(exists=True, dir_okay=False), default=None,
              help="JSON naming the data's columns: features, labels, ignore (default: <name>.schema.json beside "
                   "the data, else bench/truecost_bench/routing_schemas.json for shared/data's public sets)")
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
            result = protocol.run(data, weak, strong, strategy, train_frac, seed, embedder=embedder,
                                  schema=schema)
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
    rows += [("reference: logreg on static embeddings", result["reference_logreg_static_embeddings"]),
             ("random", result["random"]), ("oracle", result["oracle"])]
    for name, m in rows:
        fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
        t.add_row(name + (" (best)" if name == result.get("best_strategy") else ""), fmt(m["apgr"]),
                  fmt(m["strong_share_at_95"]), fmt(m["cost_saving_at_95"]))
    Console().print(t)
    if result.get("warning"):
        Console().print(f"[yellow]warning:[/] {result['warning']}")
