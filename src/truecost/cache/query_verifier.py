"""The query-pair verifier: "would these two requests get the same answer?", from the requests alone.

A small network over the cache embedder's two vectors plus cheap lexical cues
(``truecost.cache.pair_features``), trained once on public duplicate-question pairs (Quora
Question Pairs) by ``scripts/train_verifier.py`` and shipped with the package as
``cache/data/query_verifier.npz`` (weights, one head per embedder, and the IDF table) with
``query_verifier.json`` beside it (training data, seed, command, held-out metrics). NumPy only,
loaded on first use: nothing happens at import. A few microseconds per pair, so the cache can
ask it about every candidate of every lookup.
"""

from __future__ import annotations

import json
import threading
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np

from truecost.cache.pair_features import LexicalFeatures, pair_matrix
from truecost.cache.verifier import QUERIES, PairView, Verdict
from truecost.errors import TruecostError

ARTIFACT_DIR = Path(__file__).resolve().parent / "data"


def head_key(model_id: str) -> str:
    """The prefix of an embedder's arrays in the artifact."""
    return "".join(ch if ch.isalnum() else "_" for ch in model_id)


def artifact_metadata(path: str | Path | None = None) -> dict:
    """The artifact's record: training data and its hash, seed, command, held-out metrics per head."""
    if path is not None:
        return json.loads(Path(path).with_suffix(".json").read_text(encoding="utf-8"))
    return json.loads((resources.files("truecost.cache") / "data" / "query_verifier.json").read_text(encoding="utf-8"))


class QueryPairVerifier:
    """P(same answer) for two requests, from the cache embedder's vectors and the texts.

    ``embedder`` is the cache's own (the verifier reuses the vectors the cache computed
    anyway); the artifact must hold a head trained for its ``model_id``.
    """

    capabilities = frozenset({QUERIES})

    def __init__(self, embedder, path: str | Path | None = None) -> None:
        self.embedder = embedder
        self.name = f"query-pair({embedder.model_id})"
        self._path = Path(path) if path else None
        self._lock = threading.Lock()
        self._head: dict[str, np.ndarray] | None = None
        self.lexical: LexicalFeatures | None = None

    # -- loading ----------------------------------------------------------------------
    def _open(self):
        if self._path is not None:
            return np.load(self._path, allow_pickle=False)
        with resources.as_file(resources.files("truecost.cache") / "data" / "query_verifier.npz") as p:
            return np.load(p, allow_pickle=False)

    def _load(self) -> tuple[dict[str, np.ndarray], LexicalFeatures]:
        with self._lock:
            if self._head is not None and self.lexical is not None:
                return self._head, self.lexical
            key = head_key(self.embedder.model_id)
            try:
                with self._open() as z:
                    arrays = {k: z[k] for k in z.files}
            except (OSError, ValueError) as exc:
                raise TruecostError(
                    f"the query-pair verifier's artifact could not be read ({exc}); "
                    "reinstall truecost or run scripts/train_verifier.py"
                ) from None
            head = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith(key + "/")}
            if not head:
                trained = sorted({k.split("/", 1)[0] for k in arrays if "/" in k})
                raise TruecostError(
                    f"the query-pair verifier has no head for the embedder {self.embedder.model_id!r} "
                    f"(trained for: {', '.join(trained)}); train one with "
                    "`python scripts/train_verifier.py --embedders <name>`"
                )
            idf = dict(zip(arrays["idf_words"].tolist(), arrays["idf_values"].astype(float).tolist()))
            self.lexical = LexicalFeatures(idf, float(arrays["idf_unknown"][0]))
            self._head = head
            return head, self.lexical

    def check(self) -> "QueryPairVerifier":
        """Load now (a gateway at start-up): a missing head is refused before the first request, not in it."""
        self._load()
        return self

    # -- scoring ----------------------------------------------------------------------
    def probabilities(
        self,
        texts_a: Sequence[str],
        texts_b: Sequence[str],
        vectors_a: np.ndarray | None = None,
        vectors_b: np.ndarray | None = None,
    ) -> np.ndarray:
        """P(same answer) for each pair (texts_a[i], texts_b[i]); vectors are embedded when not given."""
        h, lexical = self._load()
        if len(texts_a) != len(texts_b):
            raise ValueError("need as many texts on each side")
        if not len(texts_a):
            return np.zeros(0, dtype=np.float64)
        va = self.embedder.embed_batch(list(texts_a)) if vectors_a is None else np.asarray(vectors_a, np.float32)
        vb = self.embedder.embed_batch(list(texts_b)) if vectors_b is None else np.asarray(vectors_b, np.float32)
        x = (pair_matrix(va, vb, texts_a, texts_b, lexical) - h["mean"]) / h["std"]
        z = np.maximum(x @ h["w1"] + h["b1"], 0) @ h["w2"] + h["b2"][0]
        a, b = h["platt"]
        return 1.0 / (1.0 + np.exp(-np.clip(a * z + b, -40, 40)))

    def verify(self, pairs: Sequence[PairView]) -> list[Verdict | None]:
        if not pairs:
            return []
        with_vectors = all(p.vector is not None and p.other_vector is not None for p in pairs)
        probs = self.probabilities(
            [p.query for p in pairs],
            [p.other for p in pairs],
            np.stack([np.asarray(p.vector) for p in pairs]) if with_vectors else None,
            np.stack([np.asarray(p.other_vector) for p in pairs]) if with_vectors else None,
        )
        return [Verdict(float(q), self.name) for q in probs]
