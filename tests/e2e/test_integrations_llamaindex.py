"""The LlamaIndex handler against the real llama-index-core: a vector index and query engine over its
MockEmbedding, with its MockLLM and with a CustomLLM whose responses carry provider usage (as
LlamaIndex's provider LLMs keep it in ``response.raw``), streaming included."""

from __future__ import annotations

from tests.support.requires import need
from decimal import Decimal
from typing import Any

import pytest

need("llama_index.core", "integrations")

from llama_index.core import Document, Settings, VectorStoreIndex  # noqa: E402
from llama_index.core.callbacks import CallbackManager  # noqa: E402
from llama_index.core.embeddings import MockEmbedding  # noqa: E402
from llama_index.core.llms import CompletionResponse, CustomLLM, LLMMetadata, MockLLM  # noqa: E402
from llama_index.core.llms.callbacks import llm_completion_callback  # noqa: E402

from tests.unit.integrations.spans import write_prices  # noqa: E402
from truecost.integrations.llamaindex import truecost_handler, usage_from_raw  # noqa: E402
from truecost.ledger import MemoryLedgerStore  # noqa: E402
from truecost.pricing import PriceCatalog  # noqa: E402
from truecost.tracking import Tracker  # noqa: E402

USAGE = {
    "prompt_tokens": 1000,
    "completion_tokens": 200,
    "total_tokens": 1200,
    "prompt_tokens_details": {"cached_tokens": 400},
}


class UsageLLM(CustomLLM):
    """A fake provider LLM: a fixed answer, OpenAI-shaped usage in ``raw`` (what LlamaIndex's OpenAI LLM keeps)."""

    model: str = "tc-chat"

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name=self.model)

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return CompletionResponse(text="Five to seven days.", raw={"model": self.model, "usage": USAGE})

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any):
        words = ["Five ", "to ", "seven ", "days."]
        text = ""
        for i, w in enumerate(words):
            text += w
            last = i == len(words) - 1
            yield CompletionResponse(text=text, delta=w, raw={"usage": USAGE} if last else {})


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    return PriceCatalog.load(write_prices(tmp_path_factory.mktemp("prices")))


@pytest.fixture
def ledger(catalog):
    store = MemoryLedgerStore()
    tracker = Tracker(catalog, lambda e: store.append([e]), compute="acme/tc-cpu")
    before = Settings.callback_manager
    yield tracker, store
    Settings.callback_manager = before


def _index(handler):
    Settings.callback_manager = CallbackManager([handler])
    embed = MockEmbedding(embed_dim=8)
    embed.model_name = "tc-embed"
    docs = [Document(text="Refunds take five to seven working days."), Document(text="Cards arrive in a week.")]
    return VectorStoreIndex.from_documents(docs, embed_model=embed)


def test_a_query_is_one_request_with_a_step_per_call(ledger):
    tracker, store = ledger
    handler = truecost_handler(tracker, count_tokens=lambda text: len(text.split()), feature="faq", tenant="acme")
    index = _index(handler)
    indexing = {e.request_id for e in store.query()}
    engine = index.as_query_engine(llm=UsageLLM(), similarity_top_k=1)
    assert "seven" in str(engine.query("How long does a refund take?"))
    events = [e for e in store.query() if e.request_id not in indexing]
    assert len({e.request_id for e in events}) == 1
    steps = {e.step: e for e in events}
    assert set(steps) == {"vector_search", "embed", "generate"}
    # OpenAI counting: 1000 prompt tokens include 400 cached -> 600 x 1 + 400 x 0.1 + 200 x 4 (per 1M)
    assert steps["generate"].service == "tc-chat" and steps["generate"].cost == Decimal("0.00144")
    assert steps["embed"].service == "tc-embed" and steps["embed"].cost == Decimal("1.2E-7")  # 6 words
    assert steps["vector_search"].cost is not None and steps["vector_search"].details["nodes"] == 1
    assert all(e.source == "llamaindex" and e.attribution.tenant == "acme" for e in events)
    assert handler.book.open_runs() == 0


def test_streaming_is_priced_from_the_last_response(ledger):
    tracker, store = ledger
    handler = truecost_handler(tracker, count_tokens=lambda text: len(text.split()))
    index = _index(handler)
    before = len(store.query())
    response = index.as_query_engine(llm=UsageLLM(), streaming=True, similarity_top_k=1).query("refund?")
    assert "seven" in "".join(response.response_gen)
    gen = [e for e in store.query()[before:] if e.step == "generate"]
    assert [e.cost for e in gen] == [Decimal("0.00144")]


def test_mock_llm_and_embeddings_without_usage_are_unpriced_not_free(ledger):
    tracker, store = ledger
    handler = truecost_handler(tracker)
    index = _index(handler)
    index.as_query_engine(llm=MockLLM(max_tokens=8), similarity_top_k=1).query("refund?")
    gen = [e for e in store.query() if e.step == "generate"]
    embeds = [e for e in store.query() if e.step == "embed"]
    assert gen and all(e.cost is None and e.details["unknown_reason"] for e in gen)
    assert embeds and all(e.cost is None and "count_tokens" in e.details["unknown_reason"] for e in embeds)


def test_provider_usage_shapes():
    assert usage_from_raw({"usage": USAGE}) == (USAGE, "openai")
    anthropic = {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 100}
    assert usage_from_raw({"usage": anthropic}) == (anthropic, "anthropic")
    assert usage_from_raw({"usage_metadata": {"prompt_token_count": 3}})[1] == "google"
    assert usage_from_raw({}, {"prompt_tokens": 7, "completion_tokens": 1}) == (
        {"prompt_tokens": 7, "completion_tokens": 1},
        "openai",
    )
    assert usage_from_raw(None) == (None, "")
