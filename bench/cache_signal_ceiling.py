"""How far can a label-free cache get on an intent-labelled file? Ceilings measured with hindsight.

The online policy in `--feedback verifier` mode can only be as good as the signals it learns
from. This script measures, on the same queries as `truecost bench cache` (the first --limit
after the seeded shuffle), what the best decision rule over each signal reaches when it is
chosen *with the labels* (hindsight: an upper bound for anything that learns without them):

A. one pair per lookup (each query against its nearest earlier query by the embedder): the
   hit rate at <= 1% false hits (per lookup) of the best threshold on
   - the embedder's cosine (the fixed threshold chosen with hindsight, as in the cache bench),
   - the query-pair verifier's P(same) (the shipped artifact, trained on Quora pairs only),
   - the verifier's P(same) at the candidate (of the top k) it likes best,
   - a logistic model over the top-k cosines and the verifier's log-odds, fitted *with labels*
     on the first half and scored on the second (beside the cosine on that same half),
   and each signal's ROC AUC for "same intent" on those pairs.
B. a two-stage lookup: candidates from a static table (top k by its cosine), MiniLM only when
   the static cosine reaches a floor; the share of lookups that need MiniLM against the share
   of MiniLM's own hindsight hits kept (floors fixed, and learned online from MiniLM's own
   decisions on the lookups it saw: the q-quantile of the static cosine of its hits).

C. what labels can reach (the `--feedback label` target): every earlier query's intent known, a
   vote over the k nearest earlier queries (each weighted exp((cosine - best cosine) / T)) picks
   an intent; the hit rate at <= 1% false hits of the best threshold on the vote's share, and on
   share + best cosine, beside the nearest neighbour's cosine alone. With labels for every
   earlier query (the cache learns them only for its misses) this is generous to the policy.

The queries between lookups are all earlier queries (not only the stored misses): close to the
cache protocol, simpler. Prints JSON.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit  # noqa: E402
from truecost_bench.cache import load_intent_file  # noqa: E402

from truecost.cache.embedders import make_embedder  # noqa: E402
from truecost.cache.query_verifier import QueryPairVerifier  # noqa: E402
from truecost.cache.verifier import PairView  # noqa: E402


def earlier(vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """For each query, its k most similar earlier queries: (indices, cosines), row 0 empty (-1, -9)."""
    n = len(vectors)
    idx, sims = np.full((n, k), -1), np.full((n, k), -9.0)
    for start in range(1, n, 512):
        block = vectors[start : start + 512] @ vectors[: start + 512].T
        for r in range(block.shape[0]):
            i = start + r
            s = block[r, :i]
            top = np.argsort(-s)[:k]
            idx[i, : len(top)], sims[i, : len(top)] = top, s[top]
    return idx, sims


def hindsight(score: np.ndarray, same: np.ndarray, bound: float = 0.01) -> float:
    """The largest share of lookups served by a threshold on score with false hits <= bound per lookup."""
    order = np.argsort(-score)
    false = np.cumsum(~same[order])
    ok = np.where(false <= bound * len(score))[0]
    return float((ok.max() + 1) / len(score)) if len(ok) else 0.0


def auc(same: np.ndarray, score: np.ndarray) -> float:
    ranks = np.argsort(np.argsort(score)) + 1
    pos, neg = int(same.sum()), int((~same).sum())
    return float((ranks[same].sum() - pos * (pos + 1) / 2) / (pos * neg)) if pos and neg else float("nan")


def fit_logistic(x: np.ndarray, y: np.ndarray, steps: int = 3000) -> np.ndarray:
    w = np.zeros(x.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(x @ w)))
        w -= 0.5 * (x.T @ (p - y) / len(y) + 1e-3 * w)
    return w


def part_a(queries, vectors, verifier, k: int) -> dict:
    labels = np.array([q.intent for q in queries])
    idx, sims = earlier(vectors, k)
    rows = range(1, len(queries))
    probs = np.full(sims.shape, 0.5)
    for i in rows:
        pairs = [PairView(queries[i].text, queries[j].text, vectors[i], vectors[j]) for j in idx[i] if j >= 0]
        probs[i, : len(pairs)] = [v.p_same if v is not None else 0.5 for v in verifier.verify(pairs)]
    same_k = (labels[:, None] == labels[np.maximum(idx, 0)]) & (labels[:, None] != "oos") & (idx >= 0)
    cos1, p1, same1 = sims[1:, 0], probs[1:, 0], same_k[1:, 0]
    best = probs[1:].argmax(1)
    logit = np.log(np.clip(probs[1:], 1e-4, 1 - 1e-4) / (1 - np.clip(probs[1:], 1e-4, 1 - 1e-4)))
    x = np.c_[sims[1:], logit, sims[1:, 0] - sims[1:, 1], sims[1:, 0] * logit[:, 0], np.ones(len(cos1))]
    half = len(x) // 2
    mu, sd = x[:half].mean(0), x[:half].std(0) + 1e-9
    mu[-1], sd[-1] = 0, 1
    w = fit_logistic((x[:half] - mu) / sd, same1[:half].astype(float))
    return {
        "pairs": int(len(cos1)),
        "nearest_is_same_intent": round(float(same1.mean()), 4),
        "auc": {"cosine": round(auc(same1, cos1), 4), "verifier": round(auc(same1, p1), 4)},
        "hits_at_1pct": {
            "cosine_threshold": round(hindsight(cos1, same1), 4),
            "verifier_threshold": round(hindsight(p1, same1), 4),
            "verifier_best_of_k": round(hindsight(probs[1:].max(1), same_k[1:][np.arange(len(best)), best]), 4),
        },
        "second_half": {
            "cosine_threshold": round(hindsight(cos1[half:], same1[half:]), 4),
            "logistic_with_labels": round(hindsight(((x[half:] - mu) / sd) @ w, same1[half:]), 4),
        },
    }


def part_b(labels: np.ndarray, fast: np.ndarray, slow: np.ndarray, k: int, floors, quantiles) -> dict:
    n = len(labels)
    slow_idx, slow_sims = earlier(slow, 1)
    same_slow = (labels == labels[np.maximum(slow_idx[:, 0], 0)]) & (labels != "oos")
    full = hindsight(slow_sims[1:, 0], same_slow[1:])
    fast_idx, fast_sims = earlier(fast, k)
    rescored = np.where(fast_idx >= 0, np.einsum("id,ikd->ik", slow, slow[np.maximum(fast_idx, 0)]), -9.0)
    pick = fast_idx[np.arange(n), rescored.argmax(1)]
    slow_best = rescored.max(1)
    same = (labels == labels[np.maximum(pick, 0)]) & (labels != "oos")
    threshold = np.sort(slow_sims[1:, 0])[::-1][max(0, int(full * (n - 1)) - 1)]

    def kept(need: np.ndarray) -> dict:
        h = hindsight(np.where(need, slow_best, -9.0)[1:], same[1:])
        return {"slow_share": round(float(need[1:].mean()), 4), "hits": round(h, 4), "of_slow": round(h / full, 4)}

    out = {"slow_alone_hits": round(full, 4), "fixed_floor": {}, "learned_floor": {}}
    for f in floors:
        out["fixed_floor"][str(f)] = kept(fast_sims[:, 0] >= f)
    rng = np.random.default_rng(0)
    for q in quantiles:
        seen: list[float] = []
        need = np.zeros(n, bool)
        for i in range(1, n):
            floor = float(np.quantile(seen, q)) if len(seen) >= 50 else -1.0
            need[i] = fast_sims[i, 0] >= floor or rng.random() < 0.05  # 5% explored below the floor
            if need[i] and slow_best[i] >= threshold:
                seen.append(float(fast_sims[i, 0]))
        out["learned_floor"][str(q)] = kept(need)
    return out


def part_c(labels: np.ndarray, idx: np.ndarray, sims: np.ndarray, temperatures=(0.02, 0.05)) -> dict:
    out: dict = {"nn_cosine": hindsight(sims[1:, 0], labels[idx[1:, 0]] == labels[1:])}
    for t in temperatures:
        share, right = np.zeros(len(labels) - 1), np.zeros(len(labels) - 1, bool)
        for i in range(1, len(labels)):
            keep = idx[i] >= 0
            votes: dict = {}
            for j, s in zip(idx[i][keep], sims[i][keep]):
                votes[labels[j]] = votes.get(labels[j], 0.0) + float(np.exp((s - sims[i, 0]) / t))
            best = max(votes, key=lambda c: votes[c])
            share[i - 1], right[i - 1] = votes[best] / sum(votes.values()), best == labels[i]
        out[f"vote_T{t}"] = {
            "accuracy": round(float(right.mean()), 4),
            "hits_at_1pct_share": hindsight(share, right),
            "hits_at_1pct_share_plus_cosine": hindsight(share + sims[1:, 0], right),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", action="append", required=True, help="JSON lines with text and intent (repeatable)")
    ap.add_argument("--limit", type=int, default=8000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--embedder", default="minilm")
    ap.add_argument("--fast", default="static-tuned", help="the first stage's embedder in part B")
    args = ap.parse_args()
    slow, fast = make_embedder(args.embedder), make_embedder(args.fast)
    verifier = QueryPairVerifier(slow)
    out: dict = {"protocol": {"limit": args.limit, "seed": args.seed, "k": args.k, "bound": 0.01}, "files": {}}
    for path in args.data:
        queries = load_intent_file(path, args.limit, args.seed)
        texts = [q.text for q in queries]
        vectors = np.asarray(slow.embed_batch(texts), np.float32)
        fast_vectors = np.asarray(fast.embed_batch(texts), np.float32)
        labels = np.array([q.intent for q in queries])
        idx, sims = earlier(vectors, args.k)
        out["files"][Path(path).stem] = {
            "A_" + args.embedder: part_a(queries, vectors, verifier, 5),
            "C_labels_knn_vote": part_c(labels, idx, sims),
            f"B_{args.fast}_then_{args.embedder}": part_b(
                labels, fast_vectors, vectors, args.k, (0.7, 0.75, 0.8, 0.85), (0.02, 0.05, 0.1)
            ),
        }
    emit(out)


if __name__ == "__main__":
    main()
