"""Cache lookup latency at scale, HNSW (usearch) beside exact NumPy search, in one run.

A. fast embedder (static, distilled from MiniLM): a SemanticCache filled with 100,000 real
   questions (Quora question pairs from shared/data), then lookups of held-out questions:
   p50/p99 of embed + search + decide.
B. accurate embedder (MiniLM in NumPy): the same lookup path on a 100,000-entry index of
   384-d vectors. Embedding 100k texts with MiniLM on 2 cores takes ~12 minutes, so the
   index holds MiniLM vectors of 10,000 real questions plus jittered copies of them
   (Gaussian noise, sigma 0.02, renormalised); the queries are real held-out questions.
C. search alone at 1,000,000 entries (static vectors of real questions plus jittered copies),
   p50/p99, recall@1 against exact search, memory per entry, and exact NumPy search beside it.
Prints JSON. Targets: A p50 <= 1 ms, B p50 <= 10 ms, C search p50 <= 0.5 ms.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit  # noqa: E402

from truecost.cache.embedders import MiniLMEmbedder, StaticEmbedder  # noqa: E402
from truecost.cache.entries import MemoryEntryStore  # noqa: E402
from truecost.cache.equivalence import NormalisedMatch  # noqa: E402
from truecost.cache.index import ExactIndex, HNSWIndex  # noqa: E402
from truecost.cache.policy import OnlineErrorBounded  # noqa: E402
from truecost.cache.semantic import SemanticCache  # noqa: E402


def questions(path: Path, n: int) -> list[str]:
    seen, out = set(), []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            d = json.loads(line)
            for q in (d["q1"], d["q2"]):
                q = q.strip()
                if q and q not in seen:
                    seen.add(q)
                    out.append(q)
                    if len(out) >= n:
                        return out
    return out


def pct(xs, p):
    return round(float(np.percentile(xs, p)), 4)


def jitter(base: np.ndarray, n: int, rng) -> np.ndarray:
    idx = rng.integers(0, len(base), n)
    v = base[idx] + rng.standard_normal((n, base.shape[1])).astype(np.float32) * 0.02
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def body(text):
    return {"model": "m", "messages": [{"role": "user", "content": text}]}


def answer(text):
    return {
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": f"answer: {text}"}, "finish_reason": "stop"}
        ]
    }


def part_a(texts, held_out, n):
    emb = StaticEmbedder()
    cache = SemanticCache(emb, HNSWIndex(emb.dims), MemoryEntryStore(), OnlineErrorBounded(0.01), NormalisedMatch())
    t0 = time.perf_counter()
    for t in texts[:n]:
        cache.store(cache.lookup(body(t)), answer(t))
    fill_s = time.perf_counter() - t0
    ms, search = [], []
    for t in held_out:
        t0 = time.perf_counter()
        r = cache.lookup(body(t))
        ms.append((time.perf_counter() - t0) * 1e3)
        search.append(r.search_ms)
    return {
        "entries": len(cache),
        "fill_s": round(fill_s, 1),
        "lookup_ms_p50": pct(ms, 50),
        "lookup_ms_p99": pct(ms, 99),
        "search_ms_p50": pct(search, 50),
        "embedder": emb.model_id,
        "target_p50_ms": 1.0,
        "meets_target": pct(ms, 50) <= 1.0,
    }


def part_b(texts, held_out, n, rng):
    emb = MiniLMEmbedder()
    base = emb.embed_batch(texts[: min(10_000, n)])
    vecs = np.vstack([base, jitter(base, n - len(base), rng)]) if n > len(base) else base
    hnsw, exact = HNSWIndex(emb.dims), ExactIndex(emb.dims)
    hnsw.upsert(list(range(n)), vecs, "s")
    exact.upsert(list(range(n)), vecs, "s")
    policy = OnlineErrorBounded(0.01)
    out = {}
    for name, index in (("hnsw", hnsw), ("exact", exact)):
        ms = []
        for t in held_out[:300]:
            t0 = time.perf_counter()
            v = emb.embed_batch([t])[0]
            found = index.search(v, 10, "s")
            policy.decide(
                v, []
            )  # the decision on an empty neighbourhood is the cheapest path; see part A for a full one
            ms.append((time.perf_counter() - t0) * 1e3)
            assert found
        out[name] = {"lookup_ms_p50": pct(ms, 50), "lookup_ms_p99": pct(ms, 99)}
    return {
        "entries": n,
        "embedder": emb.model_id,
        **out,
        "target_p50_ms": 10.0,
        "meets_target": out["hnsw"]["lookup_ms_p50"] <= 10.0,
    }


def part_c(texts, n, rng):
    emb = StaticEmbedder()
    base = emb.embed_batch(texts)
    vecs = np.vstack([base, jitter(base, n - len(base), rng)]) if n > len(base) else base[:n]
    queries = jitter(base, 1000, rng)
    hnsw = HNSWIndex(emb.dims)
    t0 = time.perf_counter()
    for start in range(0, n, 50_000):
        hnsw.upsert(list(range(start, min(start + 50_000, n))), vecs[start : start + 50_000], "s")
    build_s = time.perf_counter() - t0
    ms, tops = [], []
    for q in queries:
        t0 = time.perf_counter()
        tops.append(hnsw.search(q, 10, "s")[0][0])
        ms.append((time.perf_counter() - t0) * 1e3)
    exact_ms, recall = [], 0
    for q, top in zip(queries[:100], tops[:100]):
        t0 = time.perf_counter()
        best = int(np.argmax(vecs @ q))
        exact_ms.append((time.perf_counter() - t0) * 1e3)
        recall += best == top
    mem = hnsw.memory_bytes()
    return {
        "entries": n,
        "dims": emb.dims,
        "build_s": round(build_s, 1),
        "search_ms_p50": pct(ms, 50),
        "search_ms_p99": pct(ms, 99),
        "recall_at_1_vs_exact": recall / 100,
        "bytes_per_entry_index": round(mem / n, 1),
        "exact_numpy_search_ms_p50": pct(exact_ms, 50),
        "ratio_exact_vs_hnsw_p50": round(pct(exact_ms, 50) / pct(ms, 50), 1),
        "target_search_p50_ms": 0.5,
        "meets_target": pct(ms, 50) <= 0.5,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/qqp_gptcache/qqp_pairs.jsonl")
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--search-entries", type=int, default=1_000_000)
    ap.add_argument("--parts", default="abc")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    texts = questions(Path(args.data), args.entries + 2_000)
    held_out = texts[args.entries :]
    result = {"benchmark": "cache_scale", "data": args.data}
    if "a" in args.parts:
        result["fast_embedder_100k"] = part_a(texts, held_out, args.entries)
    if "b" in args.parts:
        result["accurate_embedder_100k"] = part_b(texts, held_out, args.entries, rng)
    if "c" in args.parts:
        result["search_only_1m"] = part_c(texts[: args.entries], args.search_entries, rng)
    emit(result)


if __name__ == "__main__":
    main()
