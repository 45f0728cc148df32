"""Cache lookup at scale and hit rate per embedder, side by side in one run (issue #18 item 3).

A. lookup at 100,000 entries, per embedder (MiniLM on ONNX Runtime when the onnx extra is
   installed, MiniLM in NumPy, the static table distilled from it, the static table tuned on
   Quora pairs): a SemanticCache (usearch HNSW, memory entries,
   the online error-bounded policy at 1%, normalised answer match) filled with 100,000 entries,
   then held-out real questions looked up in turn, the embedders interleaved query by query
   so that machine load hits them alike: p50/p99 of the whole lookup (embed + search + decide)
   and of each part. Entries: Quora questions (shared/data/qqp_gptcache); a Quora duplicate
   cluster shares one answer, so the policy forms classes and learns as in production. The
   static embedders index 100,000 real questions; MiniLM (~12 minutes for 100k texts on 2 cores)
   indexes 10,000 real ones plus jittered copies (Gaussian noise, sigma 0.02, renormalised) of them.
B. hit rate and false-hit rate at the same error bound (1%), per embedder, on banking77 and
   clinc150 with the cache benchmark protocol (bench/truecost_bench/cache.py, `truecost bench
   cache`): first --limit queries after a seeded shuffle, online policy, exact index, the
   feedback modes of --feedback. No embedder was trained or tuned on these files.
C. search alone at 1,000,000 entries (static vectors of real questions plus jittered copies),
   p50/p99, recall@1 against exact search, memory per entry, exact NumPy search beside it.
Prints JSON. Targets: A p50 <= 1 ms with B's hit rate >= 90% of MiniLM's; C search p50 <= 0.5 ms.
"""

from __future__ import annotations

import argparse
import sys
import time
import unicodedata
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit  # noqa: E402

from truecost.cache.embedders import MiniLMEmbedder, make_embedder  # noqa: E402
from truecost.cache.entries import MemoryEntryStore  # noqa: E402
from truecost.cache.index import HNSWIndex  # noqa: E402
from truecost.cache.policy import OnlineErrorBounded  # noqa: E402
from truecost.cache.semantic import SemanticCache  # noqa: E402
from truecost.cache.verifier import NormalisedMatch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EMBEDDERS = ("minilm", "minilm-numpy", "static", "static-tuned")


def make(name: str):
    """The gateway's embedders by name, plus ``minilm-numpy``: MiniLM forced onto its NumPy pass (``minilm`` is
    MiniLM on ONNX Runtime when the onnx extra is installed, the same vectors)."""
    if name == "minilm-numpy":
        return MiniLMEmbedder(backend="numpy")
    return make_embedder(name)


def questions(path: Path, n: int) -> tuple[list[str], dict[str, str]]:
    """The first n distinct questions, and each one's duplicate cluster (connected by duplicate == 1)."""
    import json

    seen: list[str] = []
    known, parent = set(), {}

    def find(x):
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    with open(path, encoding="utf-8") as fh:
        for line in fh:
            d = json.loads(line)
            a, b = d["q1"].strip(), d["q2"].strip()
            if d["duplicate"] and a and b:
                parent[find(a)] = find(b)
            for q in (a, b):
                if q and q not in known and len(seen) < n:
                    known.add(q)
                    seen.append(q)
    return seen, {q: find(q) for q in seen}


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


def _norm(text: str) -> str:
    """The text the cache embeds (truecost.cache.request: NFC, whitespace collapsed)."""
    return " ".join(unicodedata.normalize("NFC", text).split())


class Given:
    """Serves vectors computed beforehand (the fill phase); the real embedder takes over for the timed lookups."""

    def __init__(self, model_id: str, dims: int, vectors: dict[str, np.ndarray]) -> None:
        self.model_id, self.dims, self.vectors = model_id, dims, vectors

    def embed_batch(self, texts):
        return np.stack([self.vectors[_norm(t)] for t in texts])


def fill(name: str, texts: list[str], cluster: dict[str, str], n: int, rng) -> tuple[SemanticCache, dict]:
    emb = make(name)
    t0 = time.perf_counter()
    real = texts[:n] if not name.startswith("minilm") else texts[: min(10_000, n)]
    base = np.vstack([emb.embed_batch(real[s : s + 512]) for s in range(0, len(real), 512)])
    vecs, keys, answers = base, list(real), [cluster[t] for t in real]
    if len(real) < n:  # MiniLM: jittered copies of the real vectors, each its own entry
        extra = n - len(real)
        vecs = np.vstack([base, jitter(base, extra, rng)])
        keys += [f"{real[i % len(real)]} (copy {i})" for i in range(extra)]
        answers += [f"copy {i}" for i in range(extra)]
    embed_s = time.perf_counter() - t0
    given = Given(emb.model_id, emb.dims, {_norm(k): v for k, v in zip(keys, vecs)})
    # refit every 1,000 verifications, not 25: the policy's training set grows with the fill, and refitting on
    # 100k rows every 25 stores is quadratic; a lookup's decide step costs the same either way
    policy = OnlineErrorBounded(0.01, refit_every=1000)
    cache = SemanticCache(given, HNSWIndex(emb.dims), MemoryEntryStore(), policy, NormalisedMatch())
    t0 = time.perf_counter()
    for k, a in zip(keys, answers):
        cache.store(cache.lookup(body(k)), answer(a))
    cache.embedder = emb
    emb.embed_batch(["warm up"])
    return cache, {
        "entries": len(cache),
        "index_vectors": "real" if len(real) == n else f"{len(real)} real + {n - len(real)} jittered copies",
        "embed_s": round(embed_s, 1),
        "fill_s": round(time.perf_counter() - t0, 1),
        "embedder": emb.model_id,
        "backend": getattr(emb, "backend", None),
        "dims": emb.dims,
    }


def part_a(texts, cluster, held_out, n, names, rng) -> dict:
    caches = {name: fill(name, texts, cluster, n, rng) for name in names}
    timing = {name: {"lookup": [], "embed": [], "search": [], "decide": [], "hits": 0} for name in names}
    for t in held_out:
        for name in names:  # interleaved: the same load for every embedder
            cache = caches[name][0]
            t0 = time.perf_counter()
            r = cache.lookup(body(t))
            ms = (time.perf_counter() - t0) * 1e3
            row = timing[name]
            row["lookup"].append(ms)
            row["embed"].append(r.embed_ms)
            row["search"].append(r.search_ms)
            row["decide"].append(r.decide_ms)
            row["hits"] += r.hit
    out = {}
    for name in names:
        row = timing[name]
        out[name] = {
            **caches[name][1],
            "lookups": len(held_out),
            "lookup_ms_p50": pct(row["lookup"], 50),
            "lookup_ms_p99": pct(row["lookup"], 99),
            "embed_ms_p50": pct(row["embed"], 50),
            "search_ms_p50": pct(row["search"], 50),
            "decide_ms_p50": pct(row["decide"], 50),
            "hits": row["hits"],
            "meets_1ms_p50": pct(row["lookup"], 50) <= 1.0,
        }
    return out


def part_b(files: list[str], names, limit: int, seed: int, modes: list[str]) -> dict:
    sys.path.insert(0, str(Path(__file__).parent))
    from truecost_bench.cache import load_intent_file, run_mode

    out: dict = {}
    for path in files:
        queries = load_intent_file(path, limit, seed)
        rows = {}
        for name in names:
            emb = make(name)
            for mode in modes:
                try:
                    r = run_mode(queries, emb, mode, 0.01, seed)
                except Exception as exc:  # e.g. no verifier head for this embedder: say so, keep the others
                    rows[f"{name}/{mode}"] = {"embedder": emb.model_id, "feedback": mode, "error": str(exc)}
                    continue
                rows[f"{name}/{mode}"] = {
                    k: r[k]
                    for k in (
                        "feedback",
                        "queries",
                        "hits",
                        "false_hits",
                        "hit_rate",
                        "false_hit_rate",
                        "meets_error_bound",
                        "lookup_ms_p50",
                        "lookup_ms_p99",
                    )
                } | {"embedder": emb.model_id}
        for mode in modes:
            ref = rows.get(f"minilm/{mode}", {}).get("hit_rate")
            for name in names:
                row = rows[f"{name}/{mode}"]
                if ref and "hit_rate" in row:
                    row["hit_rate_vs_minilm"] = round(row["hit_rate"] / ref, 3)
        out[Path(path).stem] = rows
    return out


def part_c(texts, n, rng):
    emb = make_embedder("static")
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


def verdict(a: dict, b: dict, modes: list[str]) -> dict:
    """Per embedder: lookup p50 <= 1 ms at 100k entries and hit rate >= 90% of MiniLM's on every file."""
    out = {}
    for name, row in a.items():
        ratios = [
            r.get("hit_rate_vs_minilm")
            for rows in b.values()
            for k, r in rows.items()
            if k.split("/")[0] == name and k.split("/")[1] in modes
        ]
        quality = bool(ratios) and all(x is not None and x >= 0.9 for x in ratios)
        out[name] = {
            "lookup_p50_ms": row["lookup_ms_p50"],
            "hit_rate_vs_minilm": ratios,
            "meets_target": row["meets_1ms_p50"] and quality,
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    shared = ROOT.parent / "shared" / "data"
    ap.add_argument("--data", default=str(shared / "qqp_gptcache" / "qqp_pairs.jsonl"))
    ap.add_argument(
        "--intent-files", default=f"{shared / 'banking77' / 'banking77.jsonl'},{shared / 'clinc150' / 'clinc150.jsonl'}"
    )
    ap.add_argument("--embedders", default=",".join(EMBEDDERS))
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--lookups", type=int, default=500)
    ap.add_argument("--limit", type=int, default=8000, help="queries per intent file (part B)")
    ap.add_argument("--feedback", default="label", help="feedback modes for part B, comma-separated")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--search-entries", type=int, default=1_000_000)
    ap.add_argument("--parts", default="abc")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    names = [n for n in args.embedders.split(",") if n]
    modes = [m for m in args.feedback.split(",") if m]
    texts, cluster = questions(Path(args.data), args.entries + args.lookups)
    held_out = texts[args.entries :]
    result: dict = {"benchmark": "cache_scale", "data": args.data, "embedders": names}
    if "a" in args.parts:
        result["lookup_100k"] = part_a(texts, cluster, held_out, args.entries, names, rng)
    if "b" in args.parts:
        result["hit_rate"] = {
            "target_error": 0.01,
            "limit": args.limit,
            "seed": args.seed,
            "policy": "online",
            "index": "exact",
            **part_b(args.intent_files.split(","), names, args.limit, args.seed, modes),
        }
    if "a" in args.parts and "b" in args.parts:
        result["verdict"] = verdict(
            result["lookup_100k"], {k: v for k, v in result["hit_rate"].items() if isinstance(v, dict)}, modes
        )
    if "c" in args.parts:
        result["search_only_1m"] = part_c(texts[: args.entries], args.search_entries, rng)
    emit(result)


if __name__ == "__main__":
    main()
