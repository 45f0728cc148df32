"""The Embedder contract (model_id, dims, embed_batch), run on every implementation."""

import numpy as np
import pytest

from tests.support.mock_upstream import ServerThread, make_app
from truecost.cache.embedders import EMBEDDERS, Embedder, OpenAICompatibleEmbedder, make_embedder

TEXTS = ["What's the refund policy?", "cancel my order", "Überweisung nach Österreich 🙂", "x" * 3000, "  "]


@pytest.fixture(scope="module", params=[*EMBEDDERS, "openai-compatible"])
def embedder(request):
    if request.param != "openai-compatible":
        yield make_embedder(request.param)
        return
    with ServerThread(make_app()) as upstream:
        yield OpenAICompatibleEmbedder(upstream.url + "/v1", "text-embedding-3-small", dims=_mock_dims(upstream.url))


def _mock_dims(url: str) -> int:
    import httpx

    body = httpx.post(url + "/v1/embeddings", json={"model": "text-embedding-3-small", "input": ["probe"]}).json()
    return len(body["data"][0]["embedding"])


def test_declares_its_identity(embedder):
    assert isinstance(embedder, Embedder)
    assert isinstance(embedder.model_id, str) and embedder.model_id
    assert isinstance(embedder.dims, int) and embedder.dims > 0


def test_unit_length_float32_rows_one_per_text(embedder):
    v = embedder.embed_batch(TEXTS)
    assert v.shape == (len(TEXTS), embedder.dims) and v.dtype == np.float32
    assert np.all(np.isfinite(v))
    norms = np.linalg.norm(v, axis=1)
    assert np.allclose(norms[norms > 0], 1.0, atol=1e-4)


def test_a_batch_equals_its_texts_one_by_one_and_is_deterministic(embedder):
    batch = embedder.embed_batch(TEXTS[:3])
    singles = np.vstack([embedder.embed_batch([t]) for t in TEXTS[:3]])
    np.testing.assert_allclose(batch, singles, atol=1e-5)
    np.testing.assert_allclose(embedder.embed_batch(TEXTS[:3]), batch, atol=1e-6)


def test_an_empty_batch_is_an_empty_matrix(embedder):
    assert embedder.embed_batch([]).shape == (0, embedder.dims)
