"""Train the query-pair verifier shipped in truecost.cache (src/truecost/cache/data/query_verifier.*).

    .venv/bin/python scripts/train_verifier.py                     # the shipped artifact (seed 0)
    .venv/bin/python scripts/train_verifier.py --embedders static  # one head only (others kept)

Data: Quora Question Pairs as GPTCache ships them (``../shared/data/qqp_gptcache/qqp_pairs.jsonl``:
q1, q2, duplicate), and nothing else: no benchmark file (banking77, clinc150) is read. The
split is by question: the pairs form a graph over questions, and whole connected components go
to train or test, so no question is on both sides. Within train, 10% of the components are a
validation set for early stopping and for calibrating the output probability (Platt scaling).

Model, one head per embedder: a one-hidden-layer network (ReLU) over [cosine, lexical features]
(``truecost.cache.pair_features``), trained with Adam in NumPy. The artifact
records the data file's SHA-256, the seed, the command, the pair counts and the held-out
metrics. Embeddings are cached in ~/.cache/truecost/verifier-train (``--cache-dir``).
Set OMP_NUM_THREADS=1 on a shared 2-core machine (faster than two threads fighting).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from truecost.cache.embedders import make_embedder  # noqa: E402
from truecost.cache.pair_features import FEATURE_NAMES, LexicalFeatures, document_frequencies, pair_matrix  # noqa: E402
from truecost.cache.query_verifier import ARTIFACT_DIR, head_key  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "qqp_gptcache" / "qqp_pairs.jsonl"


def load_pairs(path: Path) -> list[tuple[str, str, int]]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                d = json.loads(line)
                rows.append((str(d["q1"]).strip(), str(d["q2"]).strip(), int(d["duplicate"])))
    return rows


def split_by_question(pairs, seed: int, test_frac: float, val_frac: float):
    """(train, val, test) pairs; connected components of the question graph never straddle two sets."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b, _ in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = sorted({find(a) for a, _, _ in pairs})
    rnd = random.Random(seed)
    side = {}
    for r in roots:
        u = rnd.random()
        side[r] = "test" if u < test_frac else "val" if u < test_frac + val_frac else "train"
    out = {"train": [], "val": [], "test": []}
    for p in pairs:
        out[side[find(p[0])]].append(p)
    return out["train"], out["val"], out["test"]


def embed_cached(embedder, texts: list[str], cache_dir: Path) -> dict[str, np.ndarray]:
    key = hashlib.sha256(("\n".join(texts) + embedder.model_id).encode()).hexdigest()[:16]
    path = cache_dir / f"{embedder.model_id.replace('/', '_')}-{key}.npy"
    if path.exists():
        vecs = np.load(path)
    else:
        vecs = np.zeros((len(texts), embedder.dims), dtype=np.float32)
        t0 = time.time()
        for s in range(0, len(texts), 512):
            vecs[s : s + 512] = embedder.embed_batch(texts[s : s + 512])
            done = min(s + 512, len(texts))
            print(f"  {embedder.model_id}: {done}/{len(texts)} embedded ({time.time() - t0:.0f} s)", file=sys.stderr)
        cache_dir.mkdir(parents=True, exist_ok=True)
        np.save(path, vecs)
    return dict(zip(texts, vecs))


def features(pairs, vec: dict[str, np.ndarray], lex: LexicalFeatures) -> tuple[np.ndarray, np.ndarray]:
    a = np.stack([vec[p[0]] for p in pairs])
    b = np.stack([vec[p[1]] for p in pairs])
    return pair_matrix(a, b, [p[0] for p in pairs], [p[1] for p in pairs], lex), np.array(
        [p[2] for p in pairs], dtype=np.float32
    )


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))


def train_mlp(
    x,
    y,
    xv,
    yv,
    hidden: int,
    seed: int,
    epochs: int = 40,
    lr: float = 1e-3,
    l2: float = 1e-4,
    batch: int = 256,
    patience: int = 4,
) -> dict:
    """Adam on binary cross-entropy; keeps the weights of the best validation loss."""
    rng = np.random.default_rng(seed)
    d = x.shape[1]
    p = {
        "w1": (rng.standard_normal((d, hidden)) * math.sqrt(2.0 / d)).astype(np.float32),
        "b1": np.zeros(hidden, np.float32),
        "w2": (rng.standard_normal(hidden) * math.sqrt(1.0 / hidden)).astype(np.float32),
        "b2": np.zeros(1, np.float32),
    }
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v2 = {k: np.zeros_like(v) for k, v in p.items()}
    best, best_loss, bad, step = {k: v.copy() for k, v in p.items()}, float("inf"), 0, 0
    for epoch in range(epochs):
        order = rng.permutation(len(x))
        for s in range(0, len(x), batch):
            idx = order[s : s + batch]
            xb, yb = x[idx], y[idx]
            h = np.maximum(xb @ p["w1"] + p["b1"], 0)
            out = _sigmoid(h @ p["w2"] + p["b2"][0])
            g = (out - yb) / len(idx)
            grads = {"w2": h.T @ g + l2 * p["w2"], "b2": np.array([g.sum()], np.float32)}
            gh = np.outer(g, p["w2"]) * (h > 0)
            grads["w1"] = xb.T @ gh + l2 * p["w1"]
            grads["b1"] = gh.sum(0)
            step += 1
            for k in p:
                m[k] = 0.9 * m[k] + 0.1 * grads[k]
                v2[k] = 0.999 * v2[k] + 0.001 * grads[k] ** 2
                p[k] -= (lr * (m[k] / (1 - 0.9**step)) / (np.sqrt(v2[k] / (1 - 0.999**step)) + 1e-8)).astype(np.float32)
        loss = _bce(yv, _sigmoid(_logit_mlp(p, xv)))
        print(f"  epoch {epoch + 1}: validation log-loss {loss:.4f}", file=sys.stderr)
        if loss < best_loss - 1e-4:
            best, best_loss, bad = {k: v.copy() for k, v in p.items()}, loss, 0
        else:
            bad += 1
            if bad >= patience:
                break
    return best


def _logit_mlp(p, x):
    return np.maximum(x @ p["w1"] + p["b1"], 0) @ p["w2"] + p["b2"][0]


def _bce(y, q):
    q = np.clip(q, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))


def platt(z, y, iters: int = 50) -> tuple[float, float]:
    """a, b such that sigmoid(a z + b) is calibrated on (z, y) (Newton's method)."""
    a, b = 1.0, 0.0
    for _ in range(iters):
        q = _sigmoid(a * z + b)
        g = np.array([np.sum((q - y) * z), np.sum(q - y)])
        w = q * (1 - q)
        hess = np.array([[np.sum(w * z * z), np.sum(w * z)], [np.sum(w * z), np.sum(w)]]) + 1e-6 * np.eye(2)
        step = np.linalg.solve(hess, g)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-8:
            break
    return float(a), float(b)


def metrics(p: np.ndarray, y: np.ndarray) -> dict:
    order = np.argsort(-p)
    tp = np.cumsum(y[order])
    k = np.arange(1, len(p) + 1)
    prec, rec = tp / k, tp / max(1, y.sum())
    at = {}
    for target in (0.9, 0.95, 0.99):
        ok = np.nonzero(prec >= target)[0]
        i = ok.max() if len(ok) else None
        at[f"recall_at_precision_{target}"] = float(rec[i]) if i is not None else 0.0
        at[f"threshold_at_precision_{target}"] = float(p[order][i]) if i is not None else None
    hit = p >= 0.5
    ranks = np.empty(len(p))
    ranks[order[::-1]] = np.arange(1, len(p) + 1)
    pos = y == 1
    auc = (ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / max(1, pos.sum() * (~pos).sum())
    return {
        "pairs": int(len(y)),
        "duplicates": int(y.sum()),
        "roc_auc": float(auc),
        "log_loss": _bce(y, p),
        "precision_at_0.5": float(y[hit].mean()) if hit.any() else None,
        "recall_at_0.5": float(y[hit].sum() / max(1, y.sum())),
        **at,
    }


def cosine_only(xv_cos, yv, xt_cos, yt) -> dict:
    """The baseline the verifier must beat: a calibrated threshold on the cosine alone."""
    a, b = platt(xv_cos, yv)
    return metrics(_sigmoid(a * xt_cos + b), yt)


def train_head(name: str, split, lex: LexicalFeatures, args) -> tuple[dict, dict]:
    embedder = make_embedder(name)
    texts = sorted({t for part in split for a, b, _ in part for t in (a, b)})
    vec = embed_cached(embedder, texts, Path(args.cache_dir).expanduser())
    (xtr, ytr), (xva, yva), (xte, yte) = (features(part, vec, lex) for part in split)
    mean, std = xtr.mean(0), xtr.std(0) + 1e-6
    norm = lambda x: (x - mean) / std  # noqa: E731
    p = train_mlp(norm(xtr), ytr, norm(xva), yva, args.hidden, args.seed)
    a, b = platt(_logit_mlp(p, norm(xva)), yva)
    test_p = _sigmoid(a * _logit_mlp(p, norm(xte)) + b)
    cos_col = 0
    report = {
        "embedder": embedder.model_id,
        "test": metrics(test_p, yte),
        "cosine_only_test": cosine_only(xva[:, cos_col], yva, xte[:, cos_col], yte),
    }
    arrays = {"mean": mean, "std": std, **p, "platt": np.array([a, b], np.float32)}
    return arrays, report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-pairs", type=int, default=24000)
    ap.add_argument("--test-pairs", type=int, default=6000)
    ap.add_argument("--embedders", default="minilm,static,static-tuned")
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--out", default=str(ARTIFACT_DIR))
    ap.add_argument("--cache-dir", default="~/.cache/truecost/verifier-train")
    args = ap.parse_args(argv)
    data = Path(args.data)
    pairs = load_pairs(data)
    train, val, test = split_by_question(pairs, args.seed, test_frac=0.2, val_frac=0.08)
    idf, unknown = document_frequencies(sorted({t for a, b, _ in train for t in (a, b)}))
    rnd = random.Random(args.seed)
    for part in (train, val, test):
        rnd.shuffle(part)
    val_n = max(1000, args.train_pairs // 8)
    split = (train[: args.train_pairs], val[:val_n], test[: args.test_pairs])
    lex = LexicalFeatures(idf, unknown)
    out = Path(args.out)
    meta_path = out / "query_verifier.json"
    old = json.loads(meta_path.read_text()) if meta_path.exists() else {"heads": {}}
    arrays = {}
    if (out / "query_verifier.npz").exists():
        with np.load(out / "query_verifier.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if not k.startswith("idf_")}
    heads = {k: v for k, v in old.get("heads", {}).items()}
    for name in args.embedders.split(","):
        head_arrays, report = train_head(name, split, lex, args)
        key = head_key(report["embedder"])
        arrays = {k: v for k, v in arrays.items() if not k.startswith(key + "/")}
        arrays.update({f"{key}/{k}": v.astype(np.float32) for k, v in head_arrays.items()})
        heads[report["embedder"]] = {"key": key, "hidden": args.hidden, **report}
        print(json.dumps(report, indent=2))
    words = sorted(idf)
    arrays["idf_words"] = np.array(words)
    arrays["idf_values"] = np.array([idf[w] for w in words], np.float32)
    arrays["idf_unknown"] = np.array([unknown], np.float32)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "query_verifier.npz", **arrays)
    meta = {
        "what": "query-pair verifier: P(two requests get the same answer)",
        "training_data": {
            "file": data.name,
            "sha256": hashlib.sha256(data.read_bytes()).hexdigest(),
            "source": "Quora Question Pairs via zilliztech/GPTCache (similiar_qqp_full.json)",
            "pairs_total": len(pairs),
            "train_pairs": len(split[0]),
            "validation_pairs": len(split[1]),
            "test_pairs": len(split[2]),
            "split": "by connected component of the question graph "
            "(no question in two sets); test 20%, validation 8% of components",
            "benchmark_files_used": [],
        },
        "seed": args.seed,
        "command": "python scripts/train_verifier.py " + " ".join(argv or sys.argv[1:]),
        "features": list(FEATURE_NAMES),
        "model": f"MLP, {args.hidden} ReLU units, Platt-scaled",
        "heads": heads,
    }
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {out / 'query_verifier.npz'} and {meta_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
