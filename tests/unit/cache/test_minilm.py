"""The NumPy MiniLM against the reference implementation.

The expected cosine matrix was computed with Hugging Face transformers 5.24 + torch 2.13
(AutoModel, mean pooling over the attention mask, L2 normalisation) on the same weights;
our vectors matched it to 1.5e-7 per component when this test was written.
"""

import numpy as np
import pytest

from truecost.cache.embedders import MiniLMEmbedder

TEXTS = [
    "What is the refund policy?",
    "How do I get my money back?",
    "cancel my order",
    "cancel my subscription",
    "I am still waiting on my card?",
]
REFERENCE_COS = np.array(
    [
        [1.0, 0.5218, 0.307, 0.2479, 0.1137],
        [0.5218, 1.0, 0.3891, 0.2979, 0.2805],
        [0.307, 0.3891, 1.0, 0.6494, 0.3864],
        [0.2479, 0.2979, 0.6494, 1.0, 0.3372],
        [0.1137, 0.2805, 0.3864, 0.3372, 1.0],
    ]
)
REFERENCE_FIRST_DIMS = [[-0.09239, 0.0538, 0.04621, 0.02938], [-0.01478, 0.04772, -0.01467, -0.00596]]


@pytest.fixture(scope="module", params=["numpy", "onnx"])
def emb(request):
    e = MiniLMEmbedder(backend=request.param)
    e.embed_batch(["load"])
    assert e.backend == request.param
    return e


def test_matches_the_reference_implementation(emb):
    v = emb.embed_batch(TEXTS)
    assert v.shape == (5, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(v @ v.T, REFERENCE_COS, atol=2e-4)
    np.testing.assert_allclose(v[:2, :4], REFERENCE_FIRST_DIMS, atol=2e-5)


def test_batching_and_padding_do_not_change_vectors(emb):
    together = emb.embed_batch(TEXTS)
    alone = np.stack([emb.embed_batch([t])[0] for t in TEXTS])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_empty_input_and_long_text(emb):
    assert emb.embed_batch([]).shape == (0, 384)
    v = emb.embed_batch(["", "word " * 5000])
    assert np.isfinite(v).all()
    assert emb.count_tokens(["word " * 5000]) == [256]  # truncated to the model's window


def test_backends_agree_on_a_batch_of_uneven_lengths():
    texts = [*TEXTS, "a", "why " * 120, "Wie bekomme ich mein Geld zurück? 🙂", "\u0000\u202e control"]
    a = MiniLMEmbedder(backend="numpy").embed_batch(texts)
    b = MiniLMEmbedder(backend="onnx", threads=2).embed_batch(texts)
    np.testing.assert_allclose(a, b, atol=2e-6)


def test_auto_picks_onnx_when_installed_and_numpy_otherwise(monkeypatch):
    from truecost.cache import minilm_onnx

    assert MiniLMEmbedder().backend == "onnx"
    monkeypatch.setattr(minilm_onnx, "available", lambda: False)
    e = MiniLMEmbedder()
    assert e.backend == "numpy"
    e.embed_batch(["x"])
    assert e.backend == "numpy"


def test_auto_falls_back_to_numpy_when_onnx_runtime_fails(monkeypatch, caplog):
    from truecost.cache import minilm_onnx

    def broken(*a, **k):
        raise RuntimeError("no session")

    monkeypatch.setattr(minilm_onnx, "OrtEncoder", broken)
    e = MiniLMEmbedder()
    v = e.embed_batch(TEXTS)
    assert e.backend == "numpy"
    np.testing.assert_allclose(v @ v.T, REFERENCE_COS, atol=2e-4)
    assert "NumPy pass" in caplog.text and "no session" not in caplog.text
    with pytest.raises(RuntimeError):  # asked for onnx by name: no silent fallback
        MiniLMEmbedder(backend="onnx").embed_batch(["x"])


def test_onnx_backend_without_onnxruntime_names_the_extra(monkeypatch):
    import sys

    from truecost.errors import MissingExtraError

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingExtraError, match="truecost\\[onnx\\]"):
        MiniLMEmbedder(backend="onnx").embed_batch(["x"])


def test_bad_arguments():
    with pytest.raises(ValueError):
        MiniLMEmbedder(backend="cuda")
    with pytest.raises(ValueError):
        MiniLMEmbedder(threads=0)


@pytest.mark.parametrize("backend", ["numpy", "onnx"])
def test_a_batch_of_long_texts_is_split_by_padded_tokens(backend, monkeypatch):
    from truecost.cache import embedders

    e = MiniLMEmbedder(backend=backend)
    passes: list[tuple[int, int]] = []
    forward = e._forward
    monkeypatch.setattr(e, "_forward", lambda ids: passes.append((len(ids), max(map(len, ids)))) or forward(ids))
    texts = ["word " * 300] * 40 + ["short one"] * 10
    v = e.embed_batch(texts)
    assert all(b * length <= embedders.MAX_BATCH_TOKENS for b, length in passes)
    assert sum(b for b, _ in passes) == 50 and np.isfinite(v).all()
    np.testing.assert_allclose(v[0], e.embed_batch(["word " * 300])[0], atol=2e-6)


def test_onnx_is_not_imported_after_a_usearch_that_would_crash_the_process():
    """usearch >= 2.26.2 imported first makes `import onnxruntime` segfault: checked in a child process."""
    import subprocess
    import sys

    probe = (
        "import sys, types\n"
        "from importlib import metadata\n"
        "sys.modules.setdefault('usearch', types.ModuleType('usearch'))\n"
        "_version = metadata.version\n"
        "metadata.version = lambda name: '2.26.6' if name == 'usearch' else _version(name)\n"
        "sys.modules.pop('onnxruntime', None)\n"
        "from truecost.cache.embedders import MiniLMEmbedder\n"
        "e = MiniLMEmbedder()\n"
        "e.embed_batch(['x'])\n"
        "assert e.backend == 'numpy' and 'onnxruntime' not in sys.modules, e.backend\n"
        "try:\n"
        "    MiniLMEmbedder(backend='onnx').embed_batch(['x'])\n"
        "except Exception as exc:\n"
        "    assert 'usearch<2.26.2' in str(exc), exc\n"
        "else:\n"
        "    raise AssertionError('onnx backend built beside a clashing usearch')\n"
        "print('held')\n"
    )
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "held" in r.stdout, r.stderr[-2000:]
