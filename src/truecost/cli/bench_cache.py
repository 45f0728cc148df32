"""`truecost bench cache`: hit rate at a bounded false-hit rate, per feedback mode, beside a hindsight baseline.

The protocol lives in the repository's bench/ folder (``truecost_bench.cache``), loaded by
``truecost.cli.bench.load_bench_module``.
"""

from __future__ import annotations

import json
import os
import time

import click
from rich.console import Console

from truecost.cli.render import progress_bar
from truecost.errors import TruecostError

TARGETS = {
    "verifier": {"max_false_hit_rate": 0.01, "min_ratio_vs_baseline": 1.5},
    "label": {"max_false_hit_rate": 0.01, "min_ratio_vs_baseline": 2.0},
}


def _modes(value: str) -> list[str]:
    modes = [m.strip() for m in value.split(",") if m.strip()]
    known = ("verifier", "label", "none", "judge")
    bad = [m for m in modes if m not in known]
    if bad or not modes:
        raise click.BadParameter(f"one or more of {', '.join(known)} (comma-separated); got {value!r}")
    return modes


@click.command("cache")
@click.option(
    "--data",
    "data",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="intent-labelled JSON Lines (text, intent)",
)
@click.option("--limit", type=int, default=None)
@click.option("--seed", type=int, default=0)
@click.option("--target-error", type=float, default=0.01, show_default=True)
@click.option(
    "--feedback",
    "feedback",
    default="verifier,label,none,judge",
    show_default=True,
    help="what the policy learns from: verifier (the shipped query-pair verifier; never the intent) | "
    "label (answers are the intent's canonical text: the label in disguise) | none (no feedback: "
    "the verifier's opinion alone) | judge (an LLM judge: not configured unless --judge-url and --judge-model)",
)
@click.option(
    "--judge-url", default=None, help="OpenAI-compatible base URL of an LLM judge (e.g. http://127.0.0.1:8080/v1)"
)
@click.option("--judge-model", default=None, help="the judge's model name at that URL")
@click.option("--judge-api-key-env", default=None, help="environment variable holding the judge's API key")
@click.option(
    "--judge-max-calls", type=int, default=500, show_default=True, help="judge calls per feedback row at most"
)
@click.option(
    "--judge-pairs",
    type=int,
    default=100,
    show_default=True,
    help="also measure the judge on this many balanced same/different-intent pairs (0: skip)",
)
@click.option("--embedder", "embedder_name", default="minilm", show_default=True, help="minilm | static")
@click.option("--index", "index_name", default="exact", show_default=True, help="exact | hnsw")
@click.option("--peers/--no-peers", default=True, show_default=True, help="run GPTCache side by side")
@click.option(
    "--compare-embedders/--no-compare-embedders",
    default=True,
    show_default=True,
    help="also run every mode with the other embedder",
)
@click.option("--json", "as_json", is_flag=True)
def bench_cache(
    data,
    limit,
    seed,
    target_error,
    feedback,
    judge_url,
    judge_model,
    judge_api_key_env,
    judge_max_calls,
    judge_pairs,
    embedder_name,
    index_name,
    peers,
    compare_embedders,
    as_json,
) -> None:
    """Hit rate and false-hit rate per feedback mode, against a hindsight-tuned fixed threshold and GPTCache."""
    from truecost.cache.embedders import EMBEDDERS, make_embedder
    from truecost.cli.bench import load_bench_module

    protocol = load_bench_module("cache")
    modes = _modes(feedback)
    if bool(judge_url) != bool(judge_model):
        raise click.UsageError("--judge-url and --judge-model go together")
    judge = _judge_factory(protocol, judge_url, judge_model, judge_api_key_env, judge_max_calls)
    console = Console(stderr=True)
    try:
        queries = protocol.load_intent_file(data, limit, seed)
        embedders = [make_embedder(embedder_name)]
        embedders[0].embed_batch(["warm-up"])  # the chosen embedder must load; the others may fail row by row
    except (ValueError, TruecostError) as exc:
        raise click.ClickException(str(exc)) from None
    others = [n for n in EMBEDDERS if n != embedder_name] if compare_embedders else []
    started = time.perf_counter()
    run = (modes, target_error, seed, index_name, console, judge)
    rows = [_run_embedder(protocol, queries, embedders[0], *run)]
    for name in others:
        try:
            rows.append(_run_embedder(protocol, queries, make_embedder(name), *run))
        except TruecostError as exc:  # e.g. a distilled table not built on this machine
            rows.append({"embedder": name, "error": str(exc)})
    result = _result(data, seed, target_error, queries, rows)
    first = rows[0]
    if judge is not None and judge_pairs > 0:
        with console.status(f"asking the judge about {judge_pairs} same/different-intent pairs..."):
            result["judge_agreement"] = {
                "url": judge_url,
                "model": judge_model,
                **protocol.judge_agreement(queries, judge().inner.judge, judge_pairs, seed),
            }
    if peers:
        result["peers"] = _peers(protocol, queries, first["vectors"], first["baseline_fixed_hindsight"], console)
    result["seconds"] = round(time.perf_counter() - started, 1)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        _print(result)


def _result(data, seed, target_error, queries, rows) -> dict:
    """The JSON of a run: the chosen embedder's rows first, the others' without their vectors."""
    first = rows[0]
    primary: dict = next((r for r in first["feedback"] if "hit_rate" in r), {})
    result = {
        "data": data,
        "seed": seed,
        "target_error": target_error,
        "queries": len(queries),
        "embedder": first["embedder"],
        "primary_feedback": primary.get("feedback"),
        **{
            k: primary.get(k)
            for k in (
                "hit_rate",
                "false_hit_rate",
                "lookup_ms_p50",
                "lookup_ms_p99",
                "policy",
                "ratio_vs_baseline",
                "meets_error_bound",
            )
        },
        "baseline_fixed_hindsight": first["baseline_fixed_hindsight"],
        "feedback": first["feedback"],
        "embedders": [{k: v for k, v in r.items() if k != "vectors"} for r in rows],
        "targets": TARGETS,
        "verifier_artifact": _artifact_summary(),
    }
    for r in result["embedders"]:
        if "error" in r:
            continue
        r["baseline_fixed_hindsight"] = {
            k: r["baseline_fixed_hindsight"][k] for k in ("threshold", "hit_rate", "false_hit_rate")
        }
    return result


def _judge_factory(protocol, url, model, key_env, max_calls):
    """A new budgeted judge per feedback row (None without --judge-url)."""
    if not url:
        return None
    key = os.environ.get(key_env) if key_env else None
    return lambda: protocol.openai_judge(url, model, key, max_calls=max_calls)


def _run_embedder(protocol, queries, embedder, modes, target_error, seed, index_name, console, judge=None) -> dict:
    memo = protocol.MemoEmbedder(embedder)
    out: dict = {"embedder": embedder.model_id, "feedback": []}
    with progress_bar(console) as prog:
        for mode in modes:
            task = prog.add_task(f"{embedder.model_id}: feedback {mode}", total=len(queries))
            reused = bool(memo.memo)
            asked = judge() if judge is not None and mode == "judge" else None
            try:
                row = protocol.run_mode(
                    queries,
                    memo,
                    mode,
                    target_error,
                    seed,
                    index_name,
                    judge=asked,
                    progress=lambda k, t=task: prog.update(t, completed=k),
                )
            except (LookupError, TruecostError) as exc:  # no judge; no verifier head for this embedder
                out["feedback"].append({"feedback": mode, "status": str(exc)})
                continue
            if asked is not None:  # what the judge answered: a judge that never answers is visible here
                row["judge_calls"] = {**asked.inner.judge.stats, "refused_by_budget": asked.refused}
            if reused:  # vectors memoised by the first run: no embedding in these timings
                row["lookup_ms_note"] = "vectors reused from the first mode: excludes embedding"
            out["feedback"].append(row)
        task = prog.add_task(f"{embedder.model_id}: embedding for the baseline", total=len(queries))
        vectors = protocol.embed_all(memo, queries, lambda k: prog.update(task, completed=k))
    with console.status("sweeping fixed thresholds with hindsight..."):
        baseline = protocol.hindsight_fixed(vectors, queries, target_error)
    base_rate = baseline["best"]["hit_rate"]
    for row in out["feedback"]:
        if "hit_rate" in row:
            row["ratio_vs_baseline"] = row["hit_rate"] / base_rate if base_rate else None
            target = TARGETS.get(row["feedback"])
            if target:
                row["meets_target"] = (
                    row["false_hit_rate"] <= target["max_false_hit_rate"]
                    and (row["ratio_vs_baseline"] or 0) >= target["min_ratio_vs_baseline"]
                )
    out["baseline_fixed_hindsight"] = {**baseline["best"], "curve": baseline["curve"]}
    out["vectors"] = vectors
    return out


def _artifact_summary() -> dict | None:
    from truecost.cache.query_verifier import artifact_metadata

    try:
        meta = artifact_metadata()
    except (OSError, ValueError):
        return None
    return {
        "training_data": meta["training_data"],
        "seed": meta["seed"],
        "command": meta["command"],
        "heads": {k: {"test": v["test"], "cosine_only_test": v["cosine_only_test"]} for k, v in meta["heads"].items()},
    }


def _peers(protocol, queries, vectors, baseline, console) -> list[dict]:
    from truecost.cli.bench import load_bench_module

    peers = load_bench_module("cache_peers")
    rows = []
    with console.status("GPTCache at its default threshold 0.8..."):
        rows.append({"setting": "default", **peers.run_gptcache(queries, vectors, 0.8, protocol.correct)})
    if baseline["threshold"] is not None:
        with console.status("GPTCache at the best fixed threshold..."):
            rows.append(
                {
                    "setting": "best fixed (hindsight)",
                    **peers.run_gptcache(
                        queries, vectors, peers.gptcache_threshold_for_cosine(baseline["threshold"]), protocol.correct
                    ),
                }
            )
    return rows


def _print(r: dict) -> None:
    from rich.table import Table

    t = Table(title=f"cache benchmark: {r['data']} ({r['queries']} queries, target false-hit rate {r['target_error']})")
    for c in ("embedder", "feedback", "hit rate", "false-hit rate", "x fixed (hindsight)", "lookup p50 ms"):
        t.add_column(c)
    for e in r["embedders"]:
        if "error" in e:
            t.add_row(e["embedder"], "", e["error"], "", "", "")
            continue
        b = e["baseline_fixed_hindsight"]
        for row in e["feedback"]:
            if "hit_rate" not in row:
                t.add_row(e["embedder"], row["feedback"], row["status"].split(" (")[0].split(":")[0][:48], "", "", "")
                continue
            t.add_row(
                e["embedder"],
                row["feedback"],
                f"{row['hit_rate']:.1%}",
                f"{row['false_hit_rate']:.2%}",
                f"{row['ratio_vs_baseline'] or 0:.2f}",
                f"{row['lookup_ms_p50']:.2f}",
            )
        t.add_row(
            e["embedder"],
            f"fixed cos>={b['threshold']} (hindsight)",
            f"{b['hit_rate']:.1%}",
            f"{b['false_hit_rate']:.2%}",
            "1.00",
            "",
        )
    for p in r.get("peers", []):
        if "error" in p:
            t.add_row("", p["peer"], p["error"], "", "", "")
        else:
            t.add_row(
                "",
                f"{p['peer']} {p['setting']} (t={p['threshold']:.3f})",
                f"{p['hit_rate']:.1%}",
                f"{p['false_hit_rate']:.2%}",
                "",
                f"{p['lookup_ms_p50_excluding_embedding']:.2f}+embed",
            )
    Console().print(t)
