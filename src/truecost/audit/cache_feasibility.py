"""Would a semantic cache pay on this query log?

One streaming pass: embed a batch, find each query's most similar *earlier* query (an
approximate index over the past batches, exact inside the batch), add the batch, go on.
Memory grows with the log (a float16 vector per query), never with its square.

From "nearest earlier query and its cosine" everything follows for any threshold t:
- projected hit rate: the share of queries whose nearest earlier query has cos >= t (an
  unbounded cache that stores every answer would serve them);
- clusters: the connected components of the edges "query -> nearest earlier" with
  cos >= t; the share of volume in clusters of size >= 2 is the headline figure;
- with labels: the false-hit rate, hits whose neighbour has another label (or ``oos``).
"""

from __future__ import annotations

import csv
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from truecost.audit.sources import QueryRow

if TYPE_CHECKING:
    from usearch.index import Index

SIZE_BUCKETS = (
    (1, 1, "1"),
    (2, 2, "2"),
    (3, 5, "3-5"),
    (6, 10, "6-10"),
    (11, 50, "11-50"),
    (51, 200, "51-200"),
    (201, 10**12, ">200"),
)
CURVE = [round(0.60 + 0.01 * i, 2) for i in range(40)]  # 0.60 .. 0.99
NON_ANSWER_LABELS = frozenset({"oos"})  # labels that never make a correct hit
Progress = Callable[[int, int], None]


@dataclass(slots=True)
class Neighbours:
    index: np.ndarray  # int64, -1 for the first query
    sim: np.ndarray  # float32, -1 where there is no earlier query


def nearest_earlier(
    rows: Sequence[QueryRow],
    embed: Callable[[list[str]], np.ndarray],
    batch: int = 2048,
    progress: Progress | None = None,
    exact_below: int = 20_000,
) -> Neighbours:
    """For each query, its most similar earlier query and the cosine to it (streaming)."""
    n = len(rows)
    nn = np.full(n, -1, dtype=np.int64)
    sim = np.full(n, -1.0, dtype=np.float32)
    index = _PastIndex(approximate=n > exact_below)
    for start in range(0, n, batch):
        texts = [r.text for r in rows[start : start + batch]]
        vecs = _normalise(np.asarray(embed(texts), dtype=np.float32))
        m = len(texts)
        if index.size:
            k_idx, k_sim = index.search(vecs)
            nn[start : start + m], sim[start : start + m] = k_idx, k_sim
        inner = vecs @ vecs.T
        inner[np.triu_indices(m)] = -2.0  # only earlier queries of the same batch
        if m > 1:
            best = inner.argmax(1)
            best_sim = inner[np.arange(m), best]
            better = best_sim > sim[start : start + m]
            better[0] = False
            nn[start : start + m][better] = best[better] + start
            sim[start : start + m][better] = best_sim[better]
        index.add(vecs, start)
        if progress:
            progress(min(start + m, n), n)
    return Neighbours(nn, sim)


def _normalise(v: np.ndarray) -> np.ndarray:
    v = np.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.where(norms > 0, norms, 1.0)


class _PastIndex:
    """Exact numpy search for small logs; usearch HNSW (float16) for large ones."""

    def __init__(self, approximate: bool) -> None:
        self.approximate = approximate
        self.size = 0
        self._blocks: list[np.ndarray] = []
        self._ann: Index | None = None

    def add(self, vecs: np.ndarray, start: int) -> None:
        if self.approximate:
            if self._ann is None:
                from usearch.index import Index

                self._ann = Index(
                    ndim=vecs.shape[1],
                    metric="cos",
                    dtype="f16",
                    connectivity=16,
                    expansion_add=64,
                    expansion_search=48,
                )
            self._ann.add(np.arange(start, start + len(vecs), dtype=np.uint64), vecs, threads=0)
        else:
            self._blocks.append(vecs.astype(np.float16))
        self.size += len(vecs)

    def search(self, vecs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.approximate:
            if self._ann is None:
                raise ValueError("search on an empty index: add vectors first")
            found = self._ann.search(vecs, 1, threads=0)
            keys = np.asarray(found.keys, dtype=np.int64).reshape(len(vecs), -1)[:, 0]
            dist = np.asarray(found.distances, dtype=np.float32).reshape(len(vecs), -1)[:, 0]
            return keys, (1.0 - dist).astype(np.float32)
        past = (
            np.concatenate(self._blocks).astype(np.float32)
            if len(self._blocks) > 1
            else self._blocks[0].astype(np.float32)
        )
        if len(self._blocks) > 1:
            self._blocks = [past.astype(np.float16)]
        s = vecs @ past.T
        best = s.argmax(1)
        return best.astype(np.int64), s[np.arange(len(vecs)), best].astype(np.float32)


def components(nb: Neighbours, threshold: float) -> np.ndarray:
    """Cluster id per query: union of 'query -> nearest earlier' edges at cos >= threshold.

    Every edge points to an earlier query, so the graph is a forest; pointer jumping
    labels every query with the root of its tree in O(n log depth).
    """
    n = len(nb.index)
    linked = (nb.sim >= threshold) & (nb.index >= 0)
    root = np.where(linked, nb.index, np.arange(n, dtype=np.int64))
    while True:  # pointer jumping: depth halves each round
        nxt = root[root]
        if np.array_equal(nxt, root):
            return root
        root = nxt


@dataclass(slots=True)
class ThresholdFigures:
    threshold: float
    hit_rate: float
    clustered_share: float  # share of volume in clusters of size >= 2
    clusters: int
    false_hit_rate: float | None

    def as_dict(self) -> dict:
        return {
            "threshold": self.threshold,
            "hit_rate": self.hit_rate,
            "clustered_share": self.clustered_share,
            "clusters": self.clusters,
            "false_hit_rate": self.false_hit_rate,
        }


def _false_hits(nb: Neighbours, labels: Sequence[str | None] | None, threshold: float) -> float | None:
    if labels is None or any(lb is None for lb in labels):
        return None
    lab = np.asarray(labels, dtype=object)
    hit = (nb.sim >= threshold) & (nb.index >= 0)
    ix = np.flatnonzero(hit)
    if len(ix) == 0:
        return 0.0
    wrong = (lab[ix] != lab[nb.index[ix]]) | np.isin(lab[ix], list(NON_ANSWER_LABELS))
    return float(wrong.sum() / len(nb.sim))


def figures_at(nb: Neighbours, threshold: float, labels: Sequence[str | None] | None = None) -> ThresholdFigures:
    n = len(nb.sim)
    hit = (nb.sim >= threshold) & (nb.index >= 0)
    roots = components(nb, threshold)
    sizes = np.bincount(roots, minlength=n)
    clustered = float((sizes[roots] >= 2).sum() / n) if n else 0.0
    return ThresholdFigures(
        threshold,
        float(hit.mean()) if n else 0.0,
        clustered,
        int((sizes > 0).sum()),
        _false_hits(nb, labels, threshold),
    )


def size_distribution(nb: Neighbours, threshold: float) -> list[dict]:
    roots = components(nb, threshold)
    sizes = np.bincount(roots)
    sizes = sizes[sizes > 0]
    total = int(sizes.sum())
    out = []
    for lo, hi, label in SIZE_BUCKETS:
        sel = sizes[(sizes >= lo) & (sizes <= hi)]
        out.append(
            {
                "size": label,
                "clusters": int(len(sel)),
                "queries": int(sel.sum()),
                "volume_share": float(sel.sum() / total) if total else 0.0,
            }
        )
    return out


def top_clusters(
    rows: Sequence[QueryRow], nb: Neighbours, threshold: float, top: int = 10, examples: int = 3
) -> list[dict]:
    roots = components(nb, threshold)
    counts = Counter(roots.tolist())
    out = []
    for root, size in counts.most_common(top):
        if size < 2:
            break
        members: list[int] = np.flatnonzero(roots == root).tolist()
        labels = Counter(rows[i].label for i in members if rows[i].label is not None)
        entry = {
            "size": int(size),
            "volume_share": size / len(rows),
            "examples": [rows[i].text[:200] for i in members[:examples]],
        }
        if labels:
            label, count = labels.most_common(1)[0]
            entry.update(majority_label=label, purity=count / size)
        out.append(entry)
    return out


def borderline_pairs(
    rows: Sequence[QueryRow], nb: Neighbours, threshold: float, width: float = 0.03, sample: int = 50, seed: int = 0
) -> list[dict]:
    """Pairs just above and below the threshold: what a person should look at before trusting it."""
    ix = np.flatnonzero((nb.index >= 0) & (np.abs(nb.sim - threshold) <= width))
    candidates: list[int] = ix.tolist()
    picked = sorted(random.Random(seed).sample(candidates, min(sample, len(candidates))))
    return [
        {
            "similarity": round(float(nb.sim[i]), 4),
            "query": rows[i].text,
            "neighbour": rows[int(nb.index[i])].text,
            "would_hit": bool(nb.sim[i] >= threshold),
            "same_answer": "",
        }
        for i in picked
    ]


def write_pairs_csv(pairs: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["similarity", "would_hit", "query", "neighbour", "same_answer"])
        w.writeheader()
        for p in pairs:
            w.writerow({k: p[k] for k in w.fieldnames})


def recommend(clustered_share: float, threshold: float, false_hit_rate: float | None) -> dict:
    """The stated rule: > 30% of volume in clusters at the threshold -> strong; 10-30% -> moderate; else weak."""
    if clustered_share > 0.30:
        level, text = "strong", "a semantic cache is a strong opportunity"
    elif clustered_share >= 0.10:
        level, text = "moderate", "a semantic cache may pay; start with the exact tier and measure"
    else:
        level, text = "weak", "little repetition: a semantic cache is unlikely to pay"
    rule = (
        f"{clustered_share:.1%} of volume in clusters of size >= 2 at cos >= {threshold:g} "
        "(rule: > 30% strong, 10-30% moderate, < 10% weak)"
    )
    if false_hit_rate is not None and false_hit_rate > 0.01:
        text += f"; but {false_hit_rate:.1%} of queries would get a wrong answer at this threshold: raise it or use an error-bounded policy"
    return {"level": level, "recommendation": text, "rule": rule}
