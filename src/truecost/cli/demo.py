"""`truecost demo`: the RAG support bot through the gateway, cache and router off, then on."""

from __future__ import annotations

import functools
from typing import Any

import json
import os
import time
from contextlib import ExitStack
from decimal import Decimal
from pathlib import Path

from rich.console import Console
from rich.table import Table

from truecost.cli.render import progress_bar, usd
from truecost.ledger import BatchWriter
from truecost.ledger.sqlite import SQLiteLedgerStore
from truecost.pricing import PriceCatalog
from truecost.tracking import Tracker


def run_demo(
    queries: int,
    data: str | None,
    db: str,
    as_json: bool,
    local_model: bool = True,
    serve: bool = False,
    port: int = 8765,
    report_dir: str = ".truecost/reports",
    seed: int = 0,
) -> dict:
    import httpx

    from truecost.cache.embedders import MiniLMEmbedder
    from truecost.demo.live import (
        BASELINE,
        CACHE_POLICY,
        CACHE_VERIFIERS,
        OPTIMISED,
        PassStats,
        make_generate,
        replay_pass,
        split_rows,
        start_stack,
    )
    from truecost.demo.rag import PipelineConfig, RagPipeline, customer_stream, find_banking77, load_queries

    console = Console(stderr=as_json, width=None if Console().is_terminal else 130)
    started = time.perf_counter()
    source = Path(data) if data else find_banking77(os.environ.get("TRUECOST_DATA"))
    everything = load_queries(source, 10**9)
    _, traffic = split_rows(everything)  # the replay draws from the test split
    rows = customer_stream(traffic, queries, seed)
    intents = sorted({r["intent"] for r in everything})
    db_path = Path(db)
    store, writer = _fresh_ledger(db_path)
    config = PipelineConfig()
    tracker = Tracker(PriceCatalog.bundled(), writer, compute=config.compute)
    embedder = MiniLMEmbedder()
    off, on = PassStats(BASELINE), PassStats(OPTIMISED)
    with ExitStack() as stack:
        with console.status("starting the local model and the gateway (first start loads the models)..."):
            gateway, upstream_label, gw_config = start_stack(stack, local_model, db_path, embedder.count_tokens)
            client = stack.enter_context(httpx.Client(base_url=gateway.url, timeout=180))
            pipeline = RagPipeline(
                tracker,
                embedder,
                intents,
                db_path.parent / "demo-artifacts",
                make_generate(client, BASELINE, True, BASELINE),
                config,
            )
        console.print(
            f"upstream: [bold]{'REPLAY upstream (--no-local-model)' if not local_model else upstream_label}[/bold]; "
            f"gateway at {gateway.url}"
        )
        for stats, alias, bypass, judge in ((off, BASELINE, True, None), (on, OPTIMISED, False, {})):
            pipeline.generate = make_generate(client, alias, bypass, alias)
            with progress_bar(console) as prog:
                task = prog.add_task(f"{alias}: cache and router {'off' if bypass else 'on'}", total=len(rows))
                replay_pass(pipeline, rows, stats, judge, progress=functools.partial(_advance, prog, task))
        pipeline.settle_capacity(2 * len(rows))
        writer.close()
    # the gateway flushed its ledger writer on shutdown; everything is in the ledger now
    result = _summarise(store, rows, off, on, str(upstream_label), source, db_path, started)
    result["cache_policy"] = (
        f"{CACHE_POLICY} error-bounded (target 1% false hits), learning from the {CACHE_VERIFIERS} "
        "verifier: no labelled pairs, no calibration"
    )
    result["report"] = _write_report(store, db_path, report_dir)
    result["dashboard"] = f"http://127.0.0.1:{port}/ui/"
    if as_json:
        print(json.dumps(result, indent=2, default=str))
    else:
        _print(console, result)
    if serve:
        _serve_dashboard(store, port, console)
    store.close()
    return result


def _advance(prog: Any, task: Any, done: int) -> None:
    prog.update(task, completed=done)


def _fresh_ledger(db_path: Path) -> tuple[SQLiteLedgerStore, BatchWriter]:
    """A demo run starts from an empty ledger and an empty audit log."""
    db_path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (db_path, db_path.with_suffix(".spool.jsonl"), db_path.parent / "demo-artifacts" / "audit.jsonl"):
        stale.unlink(missing_ok=True)
    store = SQLiteLedgerStore(db_path)
    return store, BatchWriter(store, spool_path=db_path.with_suffix(".bot.spool.jsonl"))


def _write_report(store: SQLiteLedgerStore, db_path: Path, report_dir: str) -> str:
    from truecost.audit.costs import run_cost_audit, write_costs_report

    _, html = write_costs_report(run_cost_audit(store, source=str(db_path)), report_dir)
    return str(html.resolve())


def _pass_costs(store, feature: str, requests: int) -> dict:
    from truecost.audit.overview import make_filter, overview

    o = overview(store, make_filter(feature=feature))
    steps = {r["key"]: r["cost_usd"] for r in o["by_step"]}
    per_request = {k: v / requests for k, v in steps.items()} if requests else {}
    return {
        "total_usd": o["total_usd"],
        "cost_per_request_usd": o["total_usd"] / requests if requests else None,
        "by_step_per_request_usd": per_request,
        "generation_share": o["generation_share"],
        "unknown_events": o["unknown_events"],
        "cache": o["cache"],
        "routing": o["routing"],
    }


def _summarise(store, rows, off, on, upstream_label, source, db_path, started) -> dict:
    a, b = _pass_costs(store, off.name, off.requests), _pass_costs(store, on.name, on.requests)
    saving = (
        (a["cost_per_request_usd"] - b["cost_per_request_usd"])
        if a["cost_per_request_usd"] and b["cost_per_request_usd"]
        else None
    )
    cache = b["cache"]
    return {
        "queries": len(rows),
        "data": str(source) if source else "bundled BANKING77 sample",
        "upstream": upstream_label,
        "strong_tier_note": "the strong tier (gpt-6.2-sol) is the local model standing in, priced at gpt-6.2-sol's list price",
        "ledger": str(db_path),
        "off": {**off.as_dict(), **a},
        "on": {**on.as_dict(), **b},
        "saving_per_request_usd": saving,
        "saving_share": float(saving / a["cost_per_request_usd"]) if saving is not None else None,
        "cache_net_savings_usd": cache["net_savings_usd"],
        "routing_avoided_usd": b["routing"]["avoided_usd"],
        "seconds": round(time.perf_counter() - started, 1),
    }


def _print(console: Console, r: dict) -> None:
    off, on = r["off"], r["on"]
    t = Table(title=f"cost per request by step, {r['queries']} queries per pass", title_justify="left")
    t.add_column("step")
    t.add_column("cache+router off", justify="right")
    t.add_column("on", justify="right")
    steps = sorted(
        set(off["by_step_per_request_usd"]) | set(on["by_step_per_request_usd"]),
        key=lambda s: -off["by_step_per_request_usd"].get(s, Decimal(0)),
    )
    for s in steps:
        cells = [off["by_step_per_request_usd"].get(s), on["by_step_per_request_usd"].get(s)]
        t.add_row(s, *("-" if c is None else usd(c, 8) for c in cells))
    t.add_section()
    t.add_row("[bold]per request", usd(off["cost_per_request_usd"], 8), usd(on["cost_per_request_usd"], 8))
    t.add_row("generation share", f"{(off['generation_share'] or 0):.1%}", f"{(on['generation_share'] or 0):.1%}")
    console.print(t)
    console.print(f"queries from: {r['data']}\nupstream: {r['upstream']}\nnote: {r['strong_tier_note']}")
    console.print(f"cache policy: {r['cache_policy']}")
    console.print(
        f"cache (on): hit rate [bold]{on['cache_hit_rate']:.1%}[/bold], false hits {on['false_hits']} "
        f"({on['false_hit_rate']:.2%} of queries, judged by the known intents); net savings "
        f"{usd(r['cache_net_savings_usd'], 6)} after lookup costs {usd(on['cache']['lookup_cost_usd'], 6)}"
    )
    console.print(
        "routing mix (on): "
        + ", ".join(f"{k} {v}" for k, v in on["served_by"].items())
        + f"; routing saved {usd(r['routing_avoided_usd'], 6)}"
    )
    if r["saving_per_request_usd"] is not None:
        console.print(
            f"[bold]cost per request {usd(off['cost_per_request_usd'], 6)} -> {usd(on['cost_per_request_usd'], 6)}: "
            f"{r['saving_share']:.1%} saved[/bold]; errors: {off['errors']} off, {on['errors']} on; ran in {r['seconds']} s"
        )
    console.print(f"HTML report: file://{r['report']}")
    console.print(
        f"dashboard:   truecost dashboard --db {r['ledger']}  ->  {r['dashboard']}  (or run the demo with --serve)"
    )


def _serve_dashboard(store, port: int, console: Console) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import RedirectResponse
    from starlette.routing import Mount, Route

    from truecost.dashboard.app import create_dashboard
    from truecost.dashboard.auth import StaticKeyAuth, key_sha256, one_time_key

    key = one_time_key()  # printed once; the dashboard keeps only its hash
    dash = create_dashboard(store, title="truecost demo", cache_target_error=0.01, auth=StaticKeyAuth(key_sha256(key)))
    app = Starlette(routes=[Route("/", lambda r: RedirectResponse("/ui/")), Mount("/ui", dash)])
    console.print(
        f"serving the dashboard at http://127.0.0.1:{port}/ui/ (Ctrl-C to stop)\nlogin key: {key}", highlight=False
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
