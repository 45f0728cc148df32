"""LangChain: one truecost request per top-level chain run, one step per LLM, retriever and embedding call.

    from truecost.integrations.langchain import truecost_callback
    chain.invoke(question, config={"callbacks": [truecost_callback(tracker, feature="rag")]})

Attribution per run: ``config={"metadata": {"truecost": {"tenant": "acme"}}}``. Chat models are
priced from the message's ``usage_metadata`` (LangChain's standard: input tokens include cache
reads and writes, output tokens include reasoning), else from ``llm_output["token_usage"]``
(OpenAI's spelling); the model from the response, else the invocation parameters. LangChain
has no callback for embeddings, so wrap the embeddings object:

    embeddings = track_embeddings(OpenAIEmbeddings(...), handler, model="text-embedding-3-small",
                                  count_tokens=lambda text: len(enc.encode(text)))

(without ``count_tokens`` the embedding steps are recorded unpriced, with the reason).
Retriever steps carry no usage: they are priced as compute time when the tracker has a compute
resource, else recorded unpriced.
"""

from __future__ import annotations

from typing import Any, Callable

from truecost.integrations._runs import RunBook, charge_tokens
from truecost.integrations.genai import inclusive_usage

SOURCE = "langchain"
_classes: dict[str, type] = {}


def _import_base() -> tuple[Any, Any]:
    """LangChain's callback and embeddings base classes, imported when a class is first built.

    Typed ``Any``: they are bases only at run time (langchain-core is an optional extra)."""
    try:
        from langchain_core.callbacks import BaseCallbackHandler
        from langchain_core.embeddings import Embeddings
    except ImportError:
        from truecost.errors import MissingExtraError

        raise MissingExtraError("the LangChain callback", "pip install langchain-core") from None
    return BaseCallbackHandler, Embeddings


def usage_from_metadata(um: Any) -> Any:
    """LangChain's UsageMetadata (a dict) -> CallUsage, or None when there is none."""
    if not um or um.get("input_tokens") is None and um.get("output_tokens") is None:
        return None
    inp, out = um.get("input_token_details") or {}, um.get("output_token_details") or {}
    call, _note = inclusive_usage(
        int(um.get("input_tokens") or 0),
        int(um.get("output_tokens") or 0),
        cached=int(inp.get("cache_read") or 0),
        written=int(inp.get("cache_creation") or 0),
        audio_in=int(inp.get("audio") or 0),
        reasoning=int(out.get("reasoning") or 0),
        audio_out=int(out.get("audio") or 0),
    )
    return call


def _model_from(params: dict, metadata: dict) -> str | None:
    for key in ("model", "model_name", "model_id", "deployment_name"):
        if params.get(key):
            return str(params[key])
    return metadata.get("ls_model_name")


def _result_usage(response: Any) -> tuple[Any, str | None]:
    """(usage, the model that answered) of an LLMResult: the messages' usage_metadata, else llm_output."""
    usage, answered = None, None
    for gens in response.generations or []:
        for g in gens:
            msg = getattr(g, "message", None)
            meta = getattr(msg, "response_metadata", None) or {}
            answered = answered or meta.get("model_name") or meta.get("model")
            call = usage_from_metadata(getattr(msg, "usage_metadata", None))
            if call is not None:
                usage = call if usage is None else type(call)(usage.tokens + call.tokens)
    out = response.llm_output or {}
    if usage is None and out.get("token_usage"):
        usage = out["token_usage"]  # OpenAI's spelling: prompt_tokens includes cached tokens
    return usage, answered or out.get("model_name") or out.get("model")


def _handler_class() -> type:
    if "handler" in _classes:
        return _classes["handler"]
    callback_base: Any = _import_base()[0]

    class TruecostCallbackHandler(callback_base):
        """Records every chain run as a truecost request (see the module docstring)."""

        raise_error = False
        run_inline = True  # callbacks run in the chain's own context, so nested code sees the request

        def __init__(self, tracker: Any = None, **attribution: Any) -> None:
            from truecost.tracking import get_tracker

            self.book = RunBook(tracker or get_tracker(), SOURCE, attribution)
            self._models: dict[Any, tuple[str | None, str | None]] = {}

        # -- chains -------------------------------------------------------------------------
        def on_chain_start(self, serialized, inputs, *, run_id, parent_run_id=None, metadata=None, **kw):
            self.book.start_run(run_id, parent_run_id, metadata)

        def on_chain_end(self, outputs, *, run_id, **kw):
            self.book.end_run(run_id)

        def on_chain_error(self, error, *, run_id, **kw):
            self.book.end_run(run_id, error)

        # -- models -------------------------------------------------------------------------
        def _start_model(self, serialized, run_id, parent_run_id, metadata, kw) -> None:
            metadata = metadata or {}
            params = kw.get("invocation_params") or {}
            model = _model_from(params, metadata)
            name = model or (serialized or {}).get("name")
            self.book.start_step(run_id, parent_run_id, "generate", name, metadata)
            self._models[run_id] = (metadata.get("ls_provider"), model)

        def on_chat_model_start(self, serialized, messages, *, run_id, parent_run_id=None, metadata=None, **kw):
            self._start_model(serialized, run_id, parent_run_id, metadata, kw)

        def on_llm_start(self, serialized, prompts, *, run_id, parent_run_id=None, metadata=None, **kw):
            self._start_model(serialized, run_id, parent_run_id, metadata, kw)

        def on_llm_end(self, response, *, run_id, **kw):
            step = self.book.step(run_id)
            provider, model = self._models.pop(run_id, (None, None))
            if step is None:
                return
            usage, answered = _result_usage(response)
            charge_tokens(step, provider, answered or model, usage)
            self.book.finish_step(run_id)

        def on_llm_error(self, error, *, run_id, **kw):
            step = self.book.step(run_id)
            self._models.pop(run_id, None)
            if step is not None:
                step.cost(None, reason=f"call failed: {type(error).__name__}")
                self.book.finish_step(run_id, error)

        # -- retrievers -----------------------------------------------------------------------
        def on_retriever_start(self, serialized, query, *, run_id, parent_run_id=None, metadata=None, **kw):
            name = (serialized or {}).get("name") or kw.get("name") or "retriever"
            self.book.start_step(run_id, parent_run_id, "vector_search", name, metadata)

        def on_retriever_end(self, documents, *, run_id, **kw):
            step = self.book.step(run_id)
            if step is not None:
                step.annotate(documents=len(documents or []))
                self.book.finish_step(run_id)

        def on_retriever_error(self, error, *, run_id, **kw):
            self.book.finish_step(run_id, error)

    _classes["handler"] = TruecostCallbackHandler
    return TruecostCallbackHandler


def truecost_callback(tracker: Any = None, **attribution: Any) -> Any:
    """A LangChain callback handler that records into ``tracker`` (default: truecost's process tracker)."""
    return _handler_class()(tracker, **attribution)


def _embeddings_class() -> type:
    if "embeddings" in _classes:
        return _classes["embeddings"]
    embeddings_base: Any = _import_base()[1]

    class TrackedEmbeddings(embeddings_base):
        """Embeddings that record an ``embed`` step in the handler's current request."""

        def __init__(
            self,
            inner: Any,
            handler: Any,
            model: str | None,
            provider: str | None,
            count_tokens: Callable[[str], int] | None,
        ) -> None:
            self.inner, self.book, self.model, self.provider = inner, handler.book, model, provider
            self.count_tokens = count_tokens

        def _record(self, texts: list[str], call: Callable[[], Any]) -> Any:
            key = object()
            step = self.book.start_step(key, None, "embed", self.model)
            try:
                result = call()
            except BaseException as exc:
                step.cost(None, service=self.model, reason=f"call failed: {type(exc).__name__}")
                self.book.finish_step(key, exc)
                raise
            usage = None
            if self.count_tokens is not None:
                usage = {"prompt_tokens": sum(int(self.count_tokens(t)) for t in texts)}
            step.annotate(texts=len(texts))
            charge_tokens(
                step,
                self.provider,
                self.model,
                usage,
                missing="LangChain embeddings report no token usage (pass count_tokens)",
            )
            self.book.finish_step(key)
            return result

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return self._record(list(texts), lambda: self.inner.embed_documents(texts))

        def embed_query(self, text: str) -> list[float]:
            return self._record([text], lambda: self.inner.embed_query(text))

    _classes["embeddings"] = TrackedEmbeddings
    return TrackedEmbeddings


def track_embeddings(
    inner: Any,
    handler: Any,
    *,
    model: str | None = None,
    provider: str | None = "openai",
    count_tokens: Callable[[str], int] | None = None,
) -> Any:
    """Wrap a LangChain ``Embeddings`` so each call is an ``embed`` step (see the module docstring)."""
    model = model or getattr(inner, "model", None) or getattr(inner, "model_name", None)
    return _embeddings_class()(inner, handler, model, provider, count_tokens)


def __getattr__(name: str) -> Any:
    if name == "TruecostCallbackHandler":
        return _handler_class()
    raise AttributeError(name)
