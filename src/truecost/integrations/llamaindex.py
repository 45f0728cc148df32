"""LlamaIndex: one truecost request per query (any top-level trace), one step per LLM, embedding
and retrieval.

    from llama_index.core import Settings
    from llama_index.core.callbacks import CallbackManager
    from truecost.integrations.llamaindex import truecost_handler
    Settings.callback_manager = CallbackManager([truecost_handler(tracker, feature="rag")])

LLM calls are priced from the provider response LlamaIndex keeps (``response.raw``: OpenAI's
``usage.prompt_tokens``, Anthropic's ``usage.input_tokens``, Gemini's ``usage_metadata``, each with
its provider's counting rules), else from the token counts in ``additional_kwargs``; the model
from the LLM's own description. Embedding events carry no usage: pass ``count_tokens`` to price
them, else they are recorded unpriced, with the reason. Retrievals are priced as compute time
when the tracker has a compute resource, else recorded unpriced.
"""

from __future__ import annotations

import contextvars
from typing import Any, Callable

from truecost.integrations._runs import RunBook, charge_tokens

SOURCE = "llamaindex"
_classes: dict[str, type] = {}
# LLM class names (LlamaIndex's class_name()) -> provider, for the price look-up.
_PROVIDERS = {
    "openai_llm": "openai",
    "openai": "openai",
    "azure_openai_llm": "azure",
    "anthropic_llm": "anthropic",
    "anthropic": "anthropic",
    "gemini_llm": "gemini",
    "googlegenai": "gemini",
    "vertex": "vertex_ai",
    "bedrock_llm": "bedrock",
    "bedrock_converse_llm": "bedrock",
    "mistralai_llm": "mistral",
    "groq_llm": "groq",
    "ollama_llm": "ollama",
}


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def usage_from_raw(raw: Any, extra: Any = None) -> tuple[Any, str]:
    """(usage, flavour) from a provider response as LlamaIndex keeps it; (None, '') when there is none."""
    usage = _get(raw, "usage") if raw is not None else None
    if usage is not None:
        if hasattr(usage, "model_dump"):
            usage = usage.model_dump()
        if _get(usage, "prompt_tokens") is not None or _get(usage, "completion_tokens") is not None:
            return usage, "openai"
        if _get(usage, "input_tokens") is not None:
            if _get(usage, "input_tokens_details") is not None:  # OpenAI's Responses API
                return usage, "openai"
            return usage, "anthropic"
    meta = (_get(raw, "usage_metadata") or _get(raw, "usageMetadata")) if raw is not None else None
    if meta is not None:
        return (meta.model_dump() if hasattr(meta, "model_dump") else meta), "google"
    extra = extra or {}
    if extra.get("prompt_tokens") is not None or extra.get("completion_tokens") is not None:
        return {
            "prompt_tokens": extra.get("prompt_tokens") or 0,
            "completion_tokens": extra.get("completion_tokens") or 0,
        }, "openai"
    return None, ""


def _model_of(serialized: Any) -> tuple[str | None, str | None]:
    if not isinstance(serialized, dict):
        return None, None
    model = serialized.get("model") or serialized.get("model_name")
    provider = _PROVIDERS.get(str(serialized.get("class_name", "")).lower())
    return (str(model) if model else None), provider


def _charge_llm(step: Any, provider: str | None, model: str | None, response: Any) -> None:
    """Price an LLM step from the usage in its response (provider's raw response, else additional_kwargs)."""
    usage, flavour = usage_from_raw(getattr(response, "raw", None), getattr(response, "additional_kwargs", None))
    charge_tokens(
        step, provider, model, usage, flavour=flavour or "openai", missing="the LLM's response carried no token usage"
    )


def _charge_embedding(
    step: Any, provider: str | None, model: str | None, chunks: list, count_tokens: Callable[[str], int] | None
) -> None:
    """Price an embedding step from ``count_tokens`` over its chunks; without it, record it unpriced."""
    usage = None
    if count_tokens is not None:
        usage = {"prompt_tokens": sum(int(count_tokens(str(c))) for c in chunks)}
    step.annotate(texts=len(chunks))
    charge_tokens(
        step,
        provider or "openai",
        model,
        usage,
        missing="LlamaIndex embedding events carry no token usage (pass count_tokens)",
    )


def _handler_class() -> type:
    if "handler" in _classes:
        return _classes["handler"]
    try:
        from llama_index.core.callbacks.base_handler import BaseCallbackHandler
        from llama_index.core.callbacks.schema import CBEventType, EventPayload
    except ImportError:
        from truecost.errors import MissingExtraError

        raise MissingExtraError("the LlamaIndex handler", "pip install llama-index-core") from None
    kinds = {CBEventType.LLM: "generate", CBEventType.EMBEDDING: "embed", CBEventType.RETRIEVE: "vector_search"}

    class TruecostLlamaIndexHandler(BaseCallbackHandler):
        """Records every LlamaIndex trace as a truecost request (see the module docstring)."""

        def __init__(
            self, tracker: Any = None, count_tokens: Callable[[str], int] | None = None, **attribution: Any
        ) -> None:
            from truecost.tracking import get_tracker

            super().__init__(event_starts_to_ignore=[], event_ends_to_ignore=[])
            self.book = RunBook(tracker or get_tracker(), SOURCE, attribution)
            self.count_tokens = count_tokens
            self._trace: contextvars.ContextVar[object | None] = contextvars.ContextVar(
                "truecost_li_trace", default=None
            )
            self._models: dict[str, tuple[str | None, str | None]] = {}

        def start_trace(self, trace_id: str | None = None) -> None:
            key = object()
            self._trace.set(key)
            self.book.start_run(key, None)

        def end_trace(self, trace_id: str | None = None, trace_map: Any = None) -> None:
            key = self._trace.get()
            if key is not None:
                self._trace.set(None)
                self.book.end_run(key)

        def on_event_start(self, event_type, payload=None, event_id: str = "", parent_id: str = "", **kw) -> str:
            kind = kinds.get(event_type)
            if kind is not None:
                model, provider = _model_of((payload or {}).get(EventPayload.SERIALIZED))
                self.book.start_step(event_id, None, kind, model if kind != "vector_search" else "retrieve")
                self._models[event_id] = (provider, model)
            return event_id

        def on_event_end(self, event_type, payload=None, event_id: str = "", **kw) -> None:
            step = self.book.step(event_id)
            provider, model = self._models.pop(event_id, (None, None))
            if step is None:
                return
            payload = payload or {}
            error = payload.get(EventPayload.EXCEPTION)
            if error is not None:
                step.cost(None, service=model, reason=f"call failed: {type(error).__name__}")
                self.book.finish_step(event_id, error)
                return
            if event_type == CBEventType.LLM:
                response = payload.get(EventPayload.RESPONSE) or payload.get(EventPayload.COMPLETION)
                _charge_llm(step, provider, model, response)
            elif event_type == CBEventType.EMBEDDING:
                chunks = payload.get(EventPayload.CHUNKS) or []
                _charge_embedding(step, provider, model, chunks, self.count_tokens)
            else:
                step.annotate(nodes=len(payload.get(EventPayload.NODES) or []))
            self.book.finish_step(event_id)

    _classes["handler"] = TruecostLlamaIndexHandler
    return TruecostLlamaIndexHandler


def truecost_handler(
    tracker: Any = None, *, count_tokens: Callable[[str], int] | None = None, **attribution: Any
) -> Any:
    """A LlamaIndex callback handler that records into ``tracker`` (default: truecost's process tracker)."""
    return _handler_class()(tracker, count_tokens=count_tokens, **attribution)


def __getattr__(name: str) -> Any:
    if name == "TruecostLlamaIndexHandler":
        return _handler_class()
    raise AttributeError(name)
