"""A local RAG support bot, instrumented step by step.

Every step really runs: a regex PII scrub, a MiniLM embedding (NumPy, local), an
in-process vector search over a small knowledge base (one article per banking intent),
context assembly, a generation call, a validation call, a JSON audit-log line written to
disk, and the response's trip between two regions. Each step is priced from the catalog:

* embedding, PII scrub, context assembly: local CPU time on the configured instance;
* vector search: Pinecone serverless read units (what the managed service would bill);
* generation: a real call through the truecost gateway (cache, router, pricing), which
  records its own steps under the same request id (``x-request-id``);
* validation: the tokens a validation call would use, at the validation model's price;
* audit log: bytes x S3 price x retention x replicas, plus CloudWatch ingest;
* egress: bytes x the inter-region price; reserved capacity: warm instances at 3x load.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Callable, Iterable, Protocol, Sequence

import numpy as np

from truecost.cache.embedders import Embedder
from truecost.tracking import RequestScope, Tracker
from truecost.tracking.infra import CapacityPool
from truecost.pii import scrub
from truecost.types import Attribution, TokenUsage


def article_for(intent: str) -> str:
    title = intent.replace("_", " ").replace("?", "").strip().capitalize()
    return (
        f"{title}. This help article covers {title.lower()}: what to check in the app first, how long it "
        f"usually takes, which fees may apply, and how to reach support if it is still not resolved."
    )


@dataclass
class PipelineConfig:
    generation_model: str = "gpt-6.2-sol"
    validation_model: str = "gpt-6-luna"
    compute: str = "aws/c7i.xlarge"
    app_region: str = "eu-west-1"
    model_region: str = "us-east-1"
    vector_db: str = "pinecone-serverless"
    read_units_per_query: int = 1
    log_tier: str = "aws/s3-standard"
    log_ingest: str = "aws/cloudwatch-logs"
    log_retention_days: int = 365
    log_replicas: int = 3
    capacity_resource: str = "aws/g5.xlarge"
    capacity_instances: int = 3  # warm capacity kept at ~3x average load
    generation_tokens_per_second: float = 60.0
    requests_per_day: int = 100_000
    top_k: int = 3
    system_prompt: str = (
        "You are a support assistant for a bank. Answer from the articles only, briefly, "
        "and never repeat personal data."
    )


# generate(system, question, request) -> (answer, response headers); the gateway prices the call
GenerateFn = Callable[[str, str, RequestScope], tuple[str, dict]]


class CountingEmbedder(Embedder, Protocol):
    """An embedder that can also count its tokens (MiniLM can): the demo prices embedding by tokens."""

    def count_tokens(self, texts: Sequence[str]) -> list[int]: ...


@dataclass
class RagPipeline:
    tracker: Tracker
    embedder: CountingEmbedder
    intents: list[str]
    workdir: Path
    generate: GenerateFn
    config: PipelineConfig = field(default_factory=PipelineConfig)

    def __post_init__(self) -> None:
        self.articles = [article_for(i) for i in self.intents]
        self.kb = self.embedder.embed_batch(self.articles)
        self.audit_path = self.workdir / "audit.jsonl"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pool = CapacityPool(
            self.tracker,
            self.config.capacity_resource,
            self.config.capacity_instances,
            owner=Attribution(cost_center="platform", team="ml-infra"),
        )
        self._window_start = self.tracker.clock.now()

    def answer(self, question: str, attribution: Attribution) -> tuple[RequestScope, str, str, dict]:
        cfg = self.config
        with self.tracker.request(attribution=attribution) as req:
            with req.step("sanitize", "regex PII scrub") as s:
                clean, found = scrub(question)
                s.annotate(pii_found=found, query=clean)  # scrubbed: what `truecost audit cache LEDGER` reads
            with req.step("embed", "all-MiniLM-L6-v2 (local)") as s:
                vec = self.embedder.embed_batch([clean])[0]
                s.annotate(tokens=self.embedder.count_tokens([clean])[0])
            with req.step("vector_search", "knowledge base top-k") as s:
                top = np.argsort(-(self.kb @ vec))[: cfg.top_k]
                s.quantity(cfg.vector_db, "read_unit", cfg.read_units_per_query)
            with req.step("context_assembly") as s:
                article = self.articles[top[0]]
                system = f"{cfg.system_prompt}\n\nArticle: {article}"
                prompt = f"{system}\n{clean}"
            t0 = time.perf_counter()
            answer, headers = self.generate(system, clean, req)  # priced by the gateway, same request id
            if headers.get("x-truecost-cache") != "hit":
                self.pool.use(req, time.perf_counter() - t0)  # the local model's warm capacity was busy
            with req.step("validate", cfg.validation_model) as s:
                check = f"Does this answer leak personal data or contradict the article? Answer yes/no.\n{answer}"
                ok = scrub(answer)[1] == 0
                (n_in,) = self.embedder.count_tokens([check])
                s.tokens(cfg.validation_model, TokenUsage(input=n_in, output=1))
                s.annotate(passed=ok)
            with req.step("log_storage", "audit log") as s:
                line = (
                    json.dumps(
                        {
                            "request_id": req.id,
                            "question": clean,
                            "context": article,
                            "answer": answer,
                            "attribution": attribution.as_dict(),
                            "ts": time.time(),
                        }
                    )
                    + "\n"
                )
                with open(self.audit_path, "a", encoding="utf-8") as fh:
                    fh.write(line)
                s.log_storage(
                    len(line.encode()),
                    tier=cfg.log_tier,
                    retention_days=cfg.log_retention_days,
                    replicas=cfg.log_replicas,
                    ingest=cfg.log_ingest,
                )
            with req.step("egress", "model region -> app region") as s:
                s.egress(len(prompt.encode()) + len(answer.encode()), cfg.model_region, cfg.app_region)
        return req, answer, self.intents[top[0]], headers

    def settle_capacity(self, n_requests: int):
        """Charge warm capacity for the traffic window these requests represent."""
        seconds = n_requests / (self.config.requests_per_day / 86_400)
        start = self._window_start
        return self.pool.settle(start, start + timedelta(seconds=seconds))


def load_queries(path: Path | None, limit: int) -> list[dict]:
    """Queries from the BANKING77 JSONL (``text``, ``intent``); the bundled sample if no path."""
    if path is None:
        from importlib import resources

        text = (resources.files("truecost.demo") / "banking77_sample.jsonl").read_text(encoding="utf-8")
        lines: Iterable[str] = text.splitlines()
    else:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if "text" not in row or "intent" not in row:
            raise ValueError(f"{path or 'bundled sample'} line {n}: needs 'text' and 'intent'")
        rows.append(row)
        if len(rows) >= limit:
            break
    return rows


def customer_stream(rows: list[dict], n: int, seed: int = 0, zipf: float = 1.0) -> list[dict]:
    """A day of support traffic: intents are heavy-tailed (a few questions dominate, Zipf with
    exponent ``zipf`` over a seeded order of the intents), each query a random real utterance of
    its intent. Seeded, so a run is repeatable."""
    import random

    rnd = random.Random(seed)
    by_intent: dict[str, list[dict]] = {}
    for r in rows:
        by_intent.setdefault(r["intent"], []).append(r)
    intents = sorted(by_intent)
    rnd.shuffle(intents)
    weights = [1.0 / (rank + 1) ** zipf for rank in range(len(intents))]
    return [rnd.choice(by_intent[i]) for i in rnd.choices(intents, weights=weights, k=n)]


def find_banking77(data_dir: str | None = None) -> Path | None:
    """BANKING77 under ``data_dir`` (the CLI passes $TRUECOST_DATA), else in shared/data beside the checkout."""
    candidates = [
        data_dir or "",
        "../shared/data",
        "shared/data",
        str(Path(__file__).resolve().parents[4] / "shared" / "data"),
    ]
    for c in candidates:
        p = Path(c) / "banking77" / "banking77.jsonl"
        if c and p.exists():
            return p
    return None
