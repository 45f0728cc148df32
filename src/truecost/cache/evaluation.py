"""The cache benchmark protocol on intent-labelled queries (``text``, ``intent``).

Shuffle with the seed; stream the queries through an empty cache. On a hit the cached
answer is correct iff both intents match and are not ``oos``; on a miss the query's answer
is stored. The stored answer of a query is its intent's canonical answer (an ``oos`` query
gets an answer of its own), so the policy's equivalence check after a miss is the
production ``NormalisedMatch`` on answers, which here means "same intent, not oos".
Every check is counted. The fixed-threshold baseline is swept with hindsight on the same
embeddings: the best hit rate whose false-hit rate stays within the target.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from truecost.cache.entries import MemoryEntryStore
from truecost.cache.equivalence import NormalisedMatch
from truecost.cache.index import ExactIndex, HNSWIndex
from truecost.cache.policy import Policy
from truecost.cache.semantic import SemanticCache


@dataclass
class Query:
    text: str
    intent: str


def load_intent_file(path: str | Path, limit: int | None, seed: int, text_field: str = "text",
                     label_field: str = "intent") -> list[Query]:
    rows: list[Query] = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                rows.append(Query(str(d[text_field]), str(d[label_field])))
            except (ValueError, KeyError) as exc:
                raise ValueError(f"{path} line {n}: needs JSON with '{text_field}' and '{label_field}' ({exc})") from None
    if not rows:
        raise ValueError(f"{path} has no queries")
    random.Random(seed).shuffle(rows)
    return rows[:limit] if limit else rows


def answer_for(q: Query, i: int) -> dict:
    content = f"[answer for an out-of-scope query #{i}]" if q.intent == "oos" else f"[answer for intent {q.intent}]"
    return {"id": f"bench-{i}", "object": "chat.completion", "model": "bench-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 80, "total_tokens": 100}}


def correct(a: Query, b_intent: str) -> bool:
    return a.intent == b_intent and a.intent != "oos"


def _intent_of(entry) -> str:
    content = entry.answer["choices"][0]["message"]["content"]
    return content[len("[answer for intent "):-1] if content.startswith("[answer for intent ") else "oos"


def run_policy(queries: list[Query], embedder, policy: Policy, index: str = "exact",
               progress: Callable[[int], None] | None = None) -> dict:
    dims = embedder.dims
    idx = HNSWIndex(dims) if index == "hnsw" else ExactIndex(dims)
    cache = SemanticCache(embedder, idx, MemoryEntryStore(), policy, NormalisedMatch())
    hits = false_hits = 0
    lookup_ms = []
    for i, q in enumerate(queries):
        body = {"model": "bench-model", "messages": [{"role": "user", "content": q.text}]}
        t0 = time.perf_counter()
        result = cache.lookup(body)
        lookup_ms.append((time.perf_counter() - t0) * 1e3)
        if result.hit:
            hits += 1
            false_hits += not correct(q, _intent_of(result.entry))
        else:
            cache.store(result, answer_for(q, i))
        if progress:
            progress(i + 1)
    n = len(queries)
    return {"queries": n, "hits": hits, "false_hits": false_hits, "hit_rate": hits / n, "false_hit_rate": false_hits / n,
            "verifications": cache.verifications, "policy": policy.name, "index": index,
            "lookup_ms_p50": float(np.percentile(lookup_ms, 50)), "lookup_ms_p99": float(np.percentile(lookup_ms, 99)),
            "policy_state": policy.state() if hasattr(policy, "state") else None}


def hindsight_fixed(vectors: np.ndarray, queries: list[Query], target_error: float,
                    thresholds: np.ndarray | None = None) -> dict:
    """Sweep fixed cosine thresholds with hindsight; return the best within the target and the curve."""
    thresholds = np.round(np.arange(0.50, 1.0001, 0.01), 2) if thresholds is None else thresholds
    n = len(queries)
    sims = vectors @ vectors.T if n <= 20_000 else None
    labels = [q.intent for q in queries]
    curve = []
    for t in thresholds:
        stored = np.zeros(n, dtype=np.int64)
        m = hits = fh = 0
        for i in range(n):
            if m:
                row = sims[i, stored[:m]] if sims is not None else vectors[stored[:m]] @ vectors[i]
                j = int(np.argmax(row))
                if row[j] >= t:
                    hits += 1
                    fh += not correct(queries[i], labels[stored[j]])
                    continue
            stored[m] = i
            m += 1
        curve.append({"threshold": float(t), "hit_rate": hits / n, "false_hit_rate": fh / n})
    ok = [c for c in curve if c["false_hit_rate"] <= target_error]
    best = max(ok, key=lambda c: c["hit_rate"]) if ok else {"threshold": None, "hit_rate": 0.0, "false_hit_rate": 0.0}
    return {"best": best, "curve": curve}
