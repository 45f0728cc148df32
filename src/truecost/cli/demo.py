"""`truecost demo`: replay customer queries through the instrumented RAG pipeline."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from truecost.cli.render import aggregate_table, request_table, usd
from truecost.ledger import BatchWriter, LedgerFilter
from truecost.ledger.queries import summary
from truecost.ledger.sqlite import SQLiteLedgerStore
from truecost.pricing import PriceCatalog
from truecost.tracking import Tracker
from truecost.types import Attribution

TENANTS = ("acme", "globex", "initech")


def run_demo(queries: int, data: str | None, db: str, as_json: bool) -> dict:
    from truecost.cache.embedders import MiniLMEmbedder
    from truecost.demo.rag import PipelineConfig, RagPipeline, find_banking77, load_queries

    console = Console(stderr=as_json)
    if not console.is_terminal:
        console = Console(stderr=as_json, width=130)
    started = time.perf_counter()
    source = Path(data) if data else find_banking77()
    rows = load_queries(source, queries)
    intents = sorted({r["intent"] for r in load_queries(source, 10**9)})
    db_path = Path(db)
    if db_path.exists():
        db_path.unlink()  # a demo run starts from an empty ledger
    store = SQLiteLedgerStore(db_path)
    writer = BatchWriter(store, spool_path=db_path.with_suffix(".spool.jsonl"))
    config = PipelineConfig()
    tracker = Tracker(PriceCatalog.bundled(), writer, compute=config.compute)
    with console.status("loading all-MiniLM-L6-v2 and embedding the knowledge base..."):
        pipeline = RagPipeline(tracker, MiniLMEmbedder(), intents, db_path.parent / "demo-artifacts", config)
    correct = 0
    first = None
    with Progress(TextColumn("[bold]replaying queries"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("q", total=len(rows))
        for i, row in enumerate(rows):
            attribution = Attribution(cost_center="cx-support", team="support-bot", feature="rag-answer",
                                      tenant=TENANTS[i % len(TENANTS)], environment="demo")
            req, _answer, top_intent = pipeline.answer(row["text"], attribution)
            correct += top_intent == row["intent"]
            first = first or req
            progress.advance(task)
    pipeline.settle_capacity(len(rows))
    writer.close()
    s = summary(store)
    by_step = store.aggregate(["step"])
    result = {
        "queries": len(rows), "data": str(source) if source else "bundled BANKING77 sample",
        "ledger": str(db_path), "total_usd": str(s.total), "cost_per_request_usd": str(s.cost_per_request),
        "generation_share": s.generation_share, "unknown_price_events": s.unknown,
        "retrieval_top1_accuracy": correct / len(rows) if rows else None,
        "by_step_usd": {r.keys[0]: str(r.cost) for r in by_step},
        "generation_priced_as": f"{config.generation_model} list price (in-process extractive responder)",
        "seconds": round(time.perf_counter() - started, 1),
    }
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        _print(console, store, first, s, result)
    store.close()
    return result


def _print(console: Console, store, first, s, result: dict) -> None:
    console.print(request_table(store.query(LedgerFilter(request_id=first.id)),
                                f"one request, step by step (request {first.id[:12]}...)"))
    console.print(aggregate_table(store.aggregate(["step"]), ["step"], f"all {result['queries']} requests, by step"))
    console.print(aggregate_table(store.aggregate(["tenant"]), ["tenant"], "by tenant"))
    gen = s.generation_share or 0.0
    console.print(f"\n[bold]cost per request {usd(s.cost_per_request, 6)}[/bold]; generation is "
                  f"[bold]{gen * 100:.1f}%[/bold] of it, the other steps {100 - gen * 100:.1f}%.")
    console.print(f"Generation is priced at {result['generation_priced_as']}; the reserved-capacity "
                  "line includes the idle share of warm capacity, reported as unallocated.")
    console.print(f"retrieval top-1 accuracy {result['retrieval_top1_accuracy']:.1%}; "
                  f"{s.unknown} events with an unknown price; ran in {result['seconds']} s.")
    console.print(f"ledger: {result['ledger']}  ->  truecost report --db {result['ledger']}")
    if Decimal(result["total_usd"]) == 0:
        console.print("[red]warning: the total is zero; check the price catalog[/red]")
