"""The LangChain callback against the real langchain-core: its fake chat model and embeddings in a
RAG chain, and langchain-openai's ChatOpenAI (streaming included) against the loopback mock."""

from __future__ import annotations

from tests.support.requires import need
from decimal import Decimal

import pytest

need("langchain_core", "integrations")

from langchain_core.embeddings import DeterministicFakeEmbedding  # noqa: E402
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel  # noqa: E402
from langchain_core.messages import AIMessage  # noqa: E402
from langchain_core.output_parsers import StrOutputParser  # noqa: E402
from langchain_core.prompts import ChatPromptTemplate  # noqa: E402
from langchain_core.runnables import RunnablePassthrough  # noqa: E402
from langchain_core.vectorstores import InMemoryVectorStore  # noqa: E402

from tests.support.mock_upstream import ServerThread, make_app  # noqa: E402
from tests.unit.integrations.spans import write_prices  # noqa: E402
from truecost.integrations.langchain import track_embeddings, truecost_callback  # noqa: E402
from truecost.ledger import MemoryLedgerStore  # noqa: E402
from truecost.pricing import PriceCatalog  # noqa: E402
from truecost.tracking import Tracker  # noqa: E402

USAGE = {
    "input_tokens": 1000,
    "output_tokens": 200,
    "total_tokens": 1200,
    "input_token_details": {"cache_read": 400},
    "output_token_details": {"reasoning": 50},
}


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    return PriceCatalog.load(write_prices(tmp_path_factory.mktemp("prices")))


@pytest.fixture
def ledger(catalog):
    store = MemoryLedgerStore()
    return Tracker(catalog, lambda e: store.append([e]), compute="acme/tc-cpu"), store


def _rag_chain(handler, model):
    embeddings = track_embeddings(
        DeterministicFakeEmbedding(size=16), handler, model="tc-embed", count_tokens=lambda text: len(text.split())
    )
    store = InMemoryVectorStore(embeddings)
    store.add_texts(["Refunds take five to seven working days.", "Cards arrive in a week."])
    prompt = ChatPromptTemplate.from_template("Context: {context}\nQuestion: {question}")
    retriever = store.as_retriever(search_kwargs={"k": 1})
    return {"context": retriever, "question": RunnablePassthrough()} | prompt | model | StrOutputParser()


def test_a_rag_chain_run_is_one_request_with_a_step_per_call(ledger):
    tracker, store = ledger
    handler = truecost_callback(tracker, feature="rag")
    model = GenericFakeChatModel(
        messages=iter(
            [
                AIMessage(
                    content="Five to seven days.", usage_metadata=USAGE, response_metadata={"model_name": "tc-chat"}
                )
            ]
        )
    )
    chain = _rag_chain(handler, model)
    indexing = store.query()  # add_texts ran outside any chain: a request of its own
    assert [(e.step, e.cost) for e in indexing] == [("embed", Decimal("2.4E-7"))]  # 12 words x 0.02/1M
    answer = chain.invoke(
        "How long does a refund take?", config={"callbacks": [handler], "metadata": {"truecost": {"tenant": "acme"}}}
    )
    assert answer == "Five to seven days."
    events = [e for e in store.query() if e.request_id != indexing[0].request_id]
    assert len({e.request_id for e in events}) == 1
    by_step = {e.step: e for e in events}
    assert set(by_step) == {"vector_search", "embed", "generate"}
    gen = by_step["generate"]
    # 600 uncached x 1 + 400 cached x 0.1 + 150 output x 4 + 50 reasoning x 4 (per 1M)
    assert gen.service == "tc-chat" and gen.cost == Decimal("0.00144")
    assert gen.details["tokens"]["reasoning"] == 50
    assert by_step["embed"].cost == Decimal("1.2E-7")  # 6 words of the question
    assert by_step["vector_search"].cost is not None and by_step["vector_search"].details["documents"] == 1
    for e in events:
        assert e.source == "langchain"
        assert (e.attribution.feature, e.attribution.tenant) == ("rag", "acme")
    assert handler.book.open_runs() == 0


def test_a_model_without_usage_is_unpriced_not_free(ledger):
    tracker, store = ledger
    handler = truecost_callback(tracker)
    model = GenericFakeChatModel(messages=iter(["no usage here"]))
    assert model.invoke("hi", config={"callbacks": [handler]}).content == "no usage here"
    (e,) = store.query()
    assert e.step == "generate" and e.cost is None and "did not say which model" in e.details["unknown_reason"]


def test_a_failing_chain_closes_its_request_and_records_the_error(ledger):
    tracker, store = ledger
    handler = truecost_callback(tracker)

    class Boom(GenericFakeChatModel):
        def _generate(self, *a, **kw):
            raise RuntimeError("upstream down")

    with pytest.raises(RuntimeError):
        (ChatPromptTemplate.from_template("{q}") | Boom(messages=iter([]))).invoke(
            {"q": "x"}, config={"callbacks": [handler]}
        )
    (e,) = store.query()
    assert e.outcome == "error" and e.cost is None and "RuntimeError" in e.details["unknown_reason"]
    assert handler.book.open_runs() == 0


def test_chat_openai_against_the_loopback_mock_streaming_included(ledger):
    langchain_openai = need("langchain_openai", "integrations")
    tracker, store = ledger
    handler = truecost_callback(tracker, cost_center="support")
    with ServerThread(make_app()) as mock:
        llm = langchain_openai.ChatOpenAI(
            model="tc-chat", base_url=f"{mock.url}/v1", api_key="sk-test", max_retries=0, stream_usage=True
        )
        chain = ChatPromptTemplate.from_template("{q}") | llm | StrOutputParser()
        assert "refund" in chain.invoke({"q": "refund?"}, config={"callbacks": [handler]})
        streamed = "".join(chain.stream({"q": "refund?"}, config={"callbacks": [handler]}))
        assert "refund" in streamed
    events = store.query()
    assert len({e.request_id for e in events}) == 2
    # mock usage: 120 prompt (20 cached), 30 completion: 100 x 1 + 20 x 0.1 + 30 x 4 per 1M
    assert [(e.step, e.service, e.cost) for e in events] == [("generate", "tc-chat", Decimal("0.000222"))] * 2
    assert all(e.attribution.cost_center == "support" for e in events)


def test_concurrent_async_runs_are_separate_requests(ledger):
    import asyncio
    from collections import Counter

    tracker, store = ledger
    handler = truecost_callback(tracker)
    answers = [AIMessage(content="x", usage_metadata=USAGE, response_metadata={"model_name": "tc-chat"})] * 3
    chain = _rag_chain(handler, GenericFakeChatModel(messages=iter(answers)))
    before = len(store.query())

    async def main():
        await asyncio.gather(*[chain.ainvoke(f"question {i}", config={"callbacks": [handler]}) for i in range(3)])

    asyncio.run(main())
    events = store.query()[before:]
    assert sorted(Counter(e.request_id for e in events).values()) == [3, 3, 3]
    assert all(
        sorted(e.step for e in events if e.request_id == r) == ["embed", "generate", "vector_search"]
        for r in {e.request_id for e in events}
    )
    assert handler.book.open_runs() == 0
