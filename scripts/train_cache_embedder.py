"""Tune the static cache embedder shipped in truecost.cache (src/truecost/cache/data/static_tuned_256.*).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/train_cache_embedder.py      # the shipped artifact (seed 0)

Start: the static table ``StaticEmbedder`` distils from all-MiniLM-L6-v2 (one vector per
WordPiece token, PCA to 256 dimensions, Zipf weights; built by scripts/setup.sh).
Step 1, sentence distillation: MiniLM embeds a sample of questions; their vectors are
projected on their own top 256 principal axes, a least-squares map turns the summed token
vectors into that space (folded into the table), and the table is trained with Adam so
that normalise(sum of a question's token vectors) points where MiniLM's projected vector
points (cosine loss). Step 2, mixed in with weight ``--contrast``: in-batch contrastive
loss (scale 20) on duplicate pairs, with a labelled non-duplicate partner of each question
as a hard negative.

Data: Quora Question Pairs as GPTCache ships them (``../shared/data/qqp_gptcache/qqp_pairs.jsonl``)
and nothing else: no benchmark file (banking77, clinc150) is read. The split is the query-pair
verifier's (``scripts/train_verifier.py``: whole connected components of the question graph,
test 20%, validation 8%, seed 0), and only train questions are used, so the verifier's held-out
pairs stay unseen by the embedder as well. The artifact stores the table as int8 with one
scale per row, and a JSON record beside it: data file and SHA-256, seed, command, counts and
validation metrics. MiniLM vectors are cached in ~/.cache/truecost/embedder-train.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts"))

from train_verifier import DEFAULT_DATA, load_pairs, split_by_question  # noqa: E402

from truecost.cache.embedders import MiniLMEmbedder, StaticEmbedder  # noqa: E402
from truecost.cache.static_tuned import ARTIFACT_NAME, TunedStaticEmbedder  # noqa: E402

UNK = 100


def teacher_vectors(texts: list[str], cache_dir: Path) -> np.ndarray:
    teacher = MiniLMEmbedder()
    key = hashlib.sha256(("\n".join(texts) + teacher.model_id).encode()).hexdigest()[:16]
    path = cache_dir / f"minilm-{key}.npy"
    if path.exists():
        return np.load(path)
    out = np.zeros((len(texts), teacher.dims), np.float32)
    t0 = time.time()
    for s in range(0, len(texts), 512):
        out[s : s + 512] = teacher.embed_batch(texts[s : s + 512])
        print(f"  MiniLM: {min(s + 512, len(texts))}/{len(texts)} ({time.time() - t0:.0f} s)", file=sys.stderr)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(path, out)
    return out


class Table:
    """The token table, its Adam state and the sentence forward/backward pass (sum, then L2 norm)."""

    def __init__(self, table: np.ndarray, ids_of: dict[str, list[int]]) -> None:
        self.E = table.astype(np.float32)
        self.m1, self.m2 = np.zeros_like(self.E), np.zeros_like(self.E)
        self.ids_of = ids_of
        self.step = 0

    def sums(self, texts) -> tuple[np.ndarray, tuple]:
        toks = [self.ids_of[t] or [UNK] for t in texts]
        lens = np.array([len(t) for t in toks])
        flat = np.concatenate(toks)
        v = np.add.reduceat(self.E[flat], np.concatenate([[0], np.cumsum(lens)[:-1]]), axis=0)
        return v, (np.repeat(np.arange(len(texts)), lens), flat)

    def forward(self, texts) -> tuple[np.ndarray, tuple]:
        v, (seg, flat) = self.sums(texts)
        n = np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-9)
        return v / n, (seg, flat, n)

    @staticmethod
    def backward(u, cache, du, grads: list) -> None:
        seg, flat, n = cache
        dv = (du - u * (u * du).sum(1, keepdims=True)) / n
        grads.append((flat, dv[seg]))

    def adam(self, grads: list, lr: float, b1: float = 0.9, b2: float = 0.999) -> None:
        flat = np.concatenate([g[0] for g in grads])
        gv = np.concatenate([g[1] for g in grads])
        order = np.argsort(flat, kind="stable")
        fs = flat[order]
        starts = np.concatenate([[0], np.nonzero(np.diff(fs))[0] + 1])
        rows, g = fs[starts], np.add.reduceat(gv[order], starts, axis=0)
        self.step += 1
        self.m1[rows] = b1 * self.m1[rows] + (1 - b1) * g
        self.m2[rows] = b2 * self.m2[rows] + (1 - b2) * g * g
        mh, vh = self.m1[rows] / (1 - b1**self.step), self.m2[rows] / (1 - b2**self.step)
        self.E[rows] -= lr * mh / (np.sqrt(vh) + 1e-8)


def infonce(ua, ub, scale: float):
    logits = scale * ua @ ub.T
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    b = len(ua)
    d = p.copy()
    d[np.arange(b), np.arange(b)] -= 1
    d /= b
    return float(-np.log(p[np.arange(b), np.arange(b)] + 1e-12).mean()), scale * d @ ub, scale * d.T @ ua


def recall_at_1(table: Table, pairs) -> float:
    """Each duplicate's partner ranked among all the split's questions: share ranked first."""
    qs = sorted({t for a, b, _ in pairs for t in (a, b)})
    where = {q: i for i, q in enumerate(qs)}
    u = np.vstack([table.forward(qs[i : i + 4096])[0] for i in range(0, len(qs), 4096)])
    dup = [(where[a], where[b]) for a, b, y in pairs if y == 1]
    qa, qb = np.array([a for a, _ in dup]), np.array([b for _, b in dup])
    sims = u[qa] @ u.T
    sims[np.arange(len(qa)), qa] = -2
    return float((sims.argmax(1) == qb).mean())


def fit_projection(table: Table, texts, target: np.ndarray) -> None:
    """Fold into the table the linear map that best sends summed token vectors to the target space."""
    v, _ = table.sums(texts)
    w, *_ = np.linalg.lstsq(v, target * np.linalg.norm(v, axis=1, keepdims=True), rcond=None)
    table.E = (table.E @ w).astype(np.float32)


def train(table: Table, distill_texts, target, dup_pairs, hard_of, args) -> list[dict]:
    rng = np.random.default_rng(args.seed)
    log = []
    for step in range(1, args.steps + 1):
        grads: list = []
        rows = rng.integers(0, len(distill_texts), args.batch)
        u, c = table.forward([distill_texts[i] for i in rows])
        t = target[rows]
        loss_d = float(1 - (u * t).sum(1).mean())
        table.backward(u, c, -t, grads)  # d(-cos)/du per question
        loss_c = 0.0
        if args.contrast > 0:
            sel = [dup_pairs[i] for i in rng.integers(0, len(dup_pairs), args.batch)]
            sel = [(b, a) if rng.random() < 0.5 else (a, b) for a, b in sel]
            left = [a for a, _ in sel]
            right = [b for _, b in sel] + [
                hard_of[a][rng.integers(len(hard_of[a]))]
                if a in hard_of
                else distill_texts[rng.integers(len(distill_texts))]
                for a in left
            ]
            ua, ca = table.forward(left)
            ub, cb = table.forward(right)
            loss_c, dua, dub = infonce(ua, ub, 20.0)
            table.backward(ua, ca, args.contrast * dua, grads)
            table.backward(ub, cb, args.contrast * dub, grads)
        lr = args.lr * min(1.0, step / 100) * (1 - step / (args.steps + 1))
        table.adam(grads, lr)
        if step % 250 == 0 or step == args.steps:
            log.append({"step": step, "distill_loss": round(loss_d, 5), "contrast_loss": round(loss_c, 4)})
            print(json.dumps(log[-1]), file=sys.stderr)
    return log


def save(table: Table, out: Path, meta: dict) -> None:
    scale = np.maximum(np.abs(table.E).max(1), 1e-12) / 127.0
    q = np.round(table.E / scale[:, None]).astype(np.int8)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / f"{ARTIFACT_NAME}.npz", table=q, scale=scale.astype(np.float32))
    (out / f"{ARTIFACT_NAME}.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=0.03)
    ap.add_argument("--contrast", type=float, default=0.0, help="weight of the contrastive loss on duplicate pairs")
    ap.add_argument("--distill-questions", type=int, default=40000)
    ap.add_argument("--out", default=str(ROOT / "src" / "truecost" / "cache" / "data"))
    ap.add_argument("--cache-dir", default="~/.cache/truecost/embedder-train")
    args = ap.parse_args(argv)
    data = Path(args.data)
    train_pairs, val_pairs, _test = split_by_question(load_pairs(data), args.seed, test_frac=0.2, val_frac=0.08)
    train_q = sorted({t for a, b, _ in train_pairs for t in (a, b)})
    rng = np.random.default_rng(args.seed)
    distill_texts = [
        train_q[i] for i in np.sort(rng.choice(len(train_q), min(args.distill_questions, len(train_q)), replace=False))
    ]
    teacher = teacher_vectors(distill_texts, Path(args.cache_dir).expanduser())
    mu = teacher.mean(0)
    _, _, vt = np.linalg.svd(teacher - mu, full_matrices=False)
    target = (teacher - mu) @ vt[: TunedStaticEmbedder.dims].T
    target /= np.maximum(np.linalg.norm(target, axis=1, keepdims=True), 1e-9)
    base = StaticEmbedder(dims=TunedStaticEmbedder.dims)
    base.embed_batch(["warm"])  # distils the base table once if missing
    tok = base.tokenizer
    texts = train_q + sorted({t for a, b, _ in val_pairs for t in (a, b)})
    ids_of = {t: e.ids[1:-1] for t, e in zip(texts, tok.encode_batch(texts))}
    table = Table(base.table, ids_of)
    fit_projection(table, distill_texts, target)
    val_before = recall_at_1(Table(base.table, ids_of), val_pairs)
    hard_of: dict[str, list[str]] = {}
    for a, b, y in train_pairs:
        if not y:
            hard_of.setdefault(a, []).append(b)
            hard_of.setdefault(b, []).append(a)
    dup = [(a, b) for a, b, y in train_pairs if y]
    t0 = time.time()
    log = train(table, distill_texts, target, dup, hard_of, args)
    meta = {
        "what": "static cache embedder: MiniLM's token table, tuned on Quora Question Pairs",
        "model_id": TunedStaticEmbedder.model_id,
        "dims": TunedStaticEmbedder.dims,
        "base": base.model_id,
        "teacher": MiniLMEmbedder.model_id,
        "training_data": {
            "file": data.name,
            "sha256": hashlib.sha256(data.read_bytes()).hexdigest(),
            "split": "the query-pair verifier's (scripts/train_verifier.py): connected components, "
            "test 20%, validation 8%, seed 0; train questions only",
            "distill_questions": len(distill_texts),
            "duplicate_pairs": len(dup),
            "benchmark_files_used": [],
        },
        "seed": args.seed,
        "steps": args.steps,
        "batch": args.batch,
        "lr": args.lr,
        "contrast": args.contrast,
        "command": " ".join(["python scripts/train_cache_embedder.py", *(argv or sys.argv[1:])]),
        "train_seconds": round(time.time() - t0, 1),
        "log": log,
        "validation": {
            "pairs": len(val_pairs),
            "recall_at_1_base_static": round(val_before, 4),
            "recall_at_1_tuned": round(recall_at_1(table, val_pairs), 4),
        },
    }
    save(table, Path(args.out), meta)
    print(json.dumps(meta["validation"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
