"""A local RAG pipeline, every step priced and attributed. Run: python examples/rag_pipeline.py [N]

This is the same pipeline that `truecost demo` runs (truecost/demo/rag.py holds the
steps); this file shows the wiring a team writes in its own service:

1. one PriceCatalog (bundled, dated prices; add your negotiated prices with
   PriceCatalog.load("our-prices.yaml")),
2. one ledger store behind a BatchWriter, so recording never blocks a request,
3. one Tracker, and a `with tracker.request(...)` around each request, a
   `with req.step(...)` around each step.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from rich.console import Console

from truecost.cache.embedders import MiniLMEmbedder
from truecost.cli.render import request_table
from truecost.demo.rag import PipelineConfig, RagPipeline, find_banking77, load_queries
from truecost.ledger import BatchWriter, LedgerFilter
from truecost.ledger.queries import summary
from truecost.ledger.sqlite import SQLiteLedgerStore
from truecost.pricing import PriceCatalog
from truecost.tracking import Tracker
from truecost.types import Attribution, TokenUsage


def main(n: int = 20) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="truecost-rag-"))
    store = SQLiteLedgerStore(workdir / "ledger.db")
    writer = BatchWriter(store, spool_path=workdir / "spool.jsonl")
    config = PipelineConfig(app_region="eu-west-1", model_region="us-east-1")
    tracker = Tracker(PriceCatalog.bundled(), writer, compute=config.compute)

    source = find_banking77(os.environ.get("TRUECOST_DATA"))
    rows = load_queries(source, n)
    intents = sorted({r["intent"] for r in load_queries(source, 10**9)})
    embedder = MiniLMEmbedder()

    def generate(system: str, question: str, req):
        """Your model call goes here. This one writes a template answer (no model runs) and
        prices the tokens it would have used at the generation model's list price."""
        with req.step("generate", config.generation_model) as s:
            answer = f"[template answer, no model] See the article in the context about: {question}"
            n_in, n_out = embedder.count_tokens([system + "\n" + question, answer])
            s.tokens(config.generation_model, TokenUsage(input=n_in, output=n_out))
        return answer, {}

    pipeline = RagPipeline(tracker, embedder, intents, workdir, generate, config)
    who = Attribution(cost_center="cx-support", team="support-bot", feature="rag-answer", environment="example")
    requests = [pipeline.answer(r["text"], who.merged(tenant=f"tenant-{i % 2}"))[0] for i, r in enumerate(rows)]
    pipeline.settle_capacity(len(rows))
    writer.close()

    console = Console(width=130)
    last = requests[-1]
    console.print(request_table(store.query(LedgerFilter(request_id=last.id)), f"request {last.id}"))
    s = summary(store)
    console.print(
        f"{s.requests} requests, cost per request ${s.cost_per_request:.6f}, "
        f"generation share {s.generation_share:.1%}, unknown prices: {s.unknown}"
    )
    console.print(f"ledger: {workdir / 'ledger.db'}; audit log: {pipeline.audit_path}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
