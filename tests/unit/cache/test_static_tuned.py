"""The tuned static cache embedder: the shipped table, its contract, and laziness."""

import subprocess
import sys
import threading

import numpy as np
import pytest

from truecost.cache.embedders import EMBEDDERS, Embedder, StaticEmbedder, make_embedder
from truecost.cache.static_tuned import TunedStaticEmbedder, artifact_metadata
from truecost.errors import TruecostError

TEXTS = [
    "How do I reset my password?",
    "I forgot my password, how can I change it?",
    "What will the weather be like tomorrow?",
    "cancel my card",
    "Why was my transfer declined?",
]


@pytest.fixture(scope="module")
def emb():
    return TunedStaticEmbedder()


def test_contract_dims_model_id_and_unit_vectors(emb):
    v = emb.embed_batch(TEXTS)
    assert isinstance(emb, Embedder)
    assert v.shape == (len(TEXTS), emb.dims) == (5, 256) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    meta = artifact_metadata()
    assert meta["model_id"] == emb.model_id and meta["dims"] == emb.dims
    assert emb.model_id != StaticEmbedder().model_id  # a different vector space: never mixed in one index


def test_deterministic_across_calls_and_instances(emb):
    a = emb.embed_batch(TEXTS)
    np.testing.assert_array_equal(a, emb.embed_batch(TEXTS))
    np.testing.assert_array_equal(a, TunedStaticEmbedder().embed_batch(TEXTS))


def test_a_batch_equals_the_texts_one_by_one(emb):
    together = emb.embed_batch(TEXTS + ["", "cancel my card"])
    alone = np.stack([emb.embed_batch([t])[0] for t in TEXTS + ["", "cancel my card"]])
    np.testing.assert_allclose(together, alone, atol=1e-6)
    np.testing.assert_array_equal(together[3], together[6])


def test_empty_and_whitespace_give_the_zero_vector_and_no_batch_is_fine(emb):
    v = emb.embed_batch(["", "   \n\t"])
    assert v.shape == (2, 256) and not v.any()  # the cache treats a zero vector as "no semantic lookup"
    assert emb.embed_batch([]).shape == (0, 256)


def test_unicode_and_long_input(emb):
    v = emb.embed_batch(["Überweisung nach Zürich 💳", "是否可以退款？", "naïve café", "x" * 50_000])
    assert np.isfinite(v).all()
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert emb.count_tokens(["word " * 2000])[0] == emb.max_tokens


def test_paraphrases_are_nearer_than_unrelated_questions(emb):
    v = emb.embed_batch(TEXTS)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.1
    assert v[0] @ v[1] > v[0] @ v[4]


def test_nothing_loads_at_import_or_construction(tmp_path):
    code = (
        "import sys; import truecost.cache.embedders, truecost.cache.static_tuned as s; "
        "e = s.TunedStaticEmbedder(); "
        "print(e._table is None, e.tokenizer is None, 'tokenizers' in sys.modules, 'safetensors' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "True", "False", "False"]
    missing = TunedStaticEmbedder(path=tmp_path / "absent.npz")  # constructing reads nothing
    with pytest.raises(TruecostError, match="could not be read"):
        missing.embed_batch(["hello"])


def test_a_damaged_or_mismatched_table_is_refused(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(TruecostError, match="could not be read"):
        TunedStaticEmbedder(path=bad).embed_batch(["hello"])
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, table=np.zeros((10, 256), np.int8), scale=np.ones(10, np.float32))
    with pytest.raises(TruecostError, match="tokenizer has"):
        TunedStaticEmbedder(path=wrong).embed_batch(["hello"])


def test_concurrent_first_calls_load_once_and_agree():
    emb = TunedStaticEmbedder()
    results, errors = [None] * 6, []

    def work(i):
        try:
            results[i] = emb.embed_batch(TEXTS)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for r in results[1:]:
        np.testing.assert_array_equal(results[0], r)


def test_registry_and_the_artifact_record():
    assert "static-tuned" in EMBEDDERS
    assert isinstance(make_embedder("static-tuned"), TunedStaticEmbedder)
    meta = artifact_metadata()
    assert meta["training_data"]["benchmark_files_used"] == []
    assert meta["training_data"]["file"] == "qqp_pairs.jsonl" and len(meta["training_data"]["sha256"]) == 64
    assert meta["command"].startswith("python scripts/train_cache_embedder.py")
    assert meta["validation"]["recall_at_1_tuned"] > meta["validation"]["recall_at_1_base_static"]
    assert TunedStaticEmbedder().embed_batch(["x"]).shape == (1, meta["dims"])
