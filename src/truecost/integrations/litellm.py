"""LiteLLM: a CustomLogger that records every LiteLLM SDK or proxy call with truecost's prices.

SDK:

    import litellm
    from truecost.integrations.litellm import truecost_logger
    litellm.callbacks = [truecost_logger(tracker, feature="support-bot")]

Proxy (``config.yaml``: ``litellm_settings: {callbacks: truecost_callbacks.handler}``, with
``truecost_callbacks.py`` beside it):

    from truecost.integrations.litellm import ledger_logger
    handler = ledger_logger("/var/lib/truecost/ledger.db")   # or a postgresql:// URL

Each call is a request (calls sharing a ``litellm_trace_id`` share one) with one ``generate`` or
``embed`` step, priced from the response's usage (LiteLLM reports every provider in OpenAI's
counting: prompt tokens include cache reads and writes), streaming included: LiteLLM logs a
stream once, when it completes, with its assembled usage. Attribution comes from LiteLLM's
metadata: the key's team (alias, else id), the key alias and the user as tags and ``user``,
request tags, and ``cost_center`` / ``feature`` / ``tenant`` (or a ``truecost`` block) from the
request metadata -- never the team: the logger's own ``team=``, else the key's, stands. LiteLLM's own cost is kept beside ours in ``details["litellm_cost"]``.
"""

from __future__ import annotations

import atexit
from datetime import datetime
from decimal import Decimal
from typing import Any

from truecost.integrations._runs import attribution_from
from truecost.integrations.genai import inclusive_usage, price_name

SOURCE = "litellm"
_EMBED_CALLS = frozenset({"embedding", "aembedding"})
_GENERATE_CALLS = frozenset(
    {
        "completion",
        "acompletion",
        "text_completion",
        "atext_completion",
        "responses",
        "aresponses",
        "anthropic_messages",
        "generate_content",
        "agenerate_content",
    }
)
_classes: dict[str, type] = {}


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        if obj is None:
            return None
        obj = obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)
    return obj


def _int(v: Any) -> int:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 else 0


def usage_of(response: Any) -> Any:
    """LiteLLM's (OpenAI-shaped, cache-inclusive) usage -> CallUsage, or None when there is none."""
    usage = _get(response, "usage")
    if usage is None:
        return None
    prompt = _get(usage, "prompt_tokens")
    completion = _get(usage, "completion_tokens")
    if prompt is None and completion is None:
        return None
    cached = _int(_get(usage, "prompt_tokens_details", "cached_tokens") or _get(usage, "cache_read_input_tokens"))
    written = _int(
        _get(usage, "prompt_tokens_details", "cache_creation_tokens") or _get(usage, "cache_creation_input_tokens")
    )
    call, _note = inclusive_usage(
        _int(prompt),
        _int(completion),
        cached=cached,
        written=written,
        reasoning=_int(_get(usage, "completion_tokens_details", "reasoning_tokens")),
    )
    return call


def attribution_of(kwargs: dict, defaults: dict) -> dict[str, Any]:
    """Attribution from LiteLLM's metadata (the proxy's key, team and user, the request's metadata)."""
    slo = kwargs.get("standard_logging_object") or {}
    meta = dict(_get(kwargs, "litellm_params", "metadata") or {})
    smeta = slo.get("metadata") or {}
    out: dict[str, Any] = dict(defaults)
    tags = dict(out.pop("tags", None) or {})
    requester = smeta.get("requester_metadata") or {}
    for source in (meta, requester):
        for field in ("cost_center", "feature", "tenant", "environment"):
            if source.get(field) is not None:
                out[field] = str(source[field])
        truecost = attribution_from(source)
        tags.update(truecost.pop("tags", {}))
        out.update(truecost)
    team = smeta.get("user_api_key_team_alias") or smeta.get("user_api_key_team_id") or meta.get("user_api_key_team_id")
    team = defaults.get("team") or team  # the operator's, else the proxy key's: request metadata cannot replace it
    if team:
        out["team"] = str(team)
    else:  # nor name one for a key that has none (a proxy client's metadata would bill a team of its choice)
        out.pop("team", None)
    user = (
        smeta.get("user_api_key_end_user_id")
        or slo.get("end_user")
        or kwargs.get("user")
        or smeta.get("user_api_key_user_id")
    )
    if user:
        out.setdefault("user", str(user))
    alias = smeta.get("user_api_key_alias")
    if alias:
        tags["litellm_key_alias"] = str(alias)
    request_tags = slo.get("request_tags") or meta.get("tags") or []
    if isinstance(request_tags, list) and request_tags:
        tags["litellm_tags"] = ",".join(sorted(str(t) for t in request_tags))
    if tags:
        out["tags"] = tags
    return out


def record_call(
    tracker: Any,
    kwargs: dict,
    response: Any,
    start_time: Any,
    end_time: Any,
    *,
    failed: bool = False,
    defaults: dict | None = None,
) -> list:
    """One LiteLLM call -> its request's events (what the logger's hooks run)."""
    slo = kwargs.get("standard_logging_object") or {}
    call_type = str(kwargs.get("call_type") or slo.get("call_type") or "completion")
    step = "embed" if call_type in _EMBED_CALLS else "generate" if call_type in _GENERATE_CALLS else "other"
    provider = _get(kwargs, "litellm_params", "custom_llm_provider") or slo.get("custom_llm_provider")
    model = _get(response, "model") if not failed else None
    model = model or kwargs.get("model") or slo.get("model")
    request_id = kwargs.get("litellm_trace_id") or slo.get("trace_id") or kwargs.get("litellm_call_id") or slo.get("id")
    req = tracker.request(
        str(request_id) if request_id else None, source=SOURCE, **attribution_of(kwargs, defaults or {})
    )
    latency = None
    if isinstance(start_time, datetime) and isinstance(end_time, datetime):
        latency = (end_time - start_time).total_seconds() * 1000.0
    details: dict[str, Any] = {"call_type": call_type}
    if slo.get("response_cost") is not None:
        details["litellm_cost"] = str(slo["response_cost"])
    if kwargs.get("stream") or slo.get("stream"):
        details["streamed"] = True
    name, reason = price_name(str(provider).lower() if provider else None, str(model)) if model else (None, "no model")
    common = dict(request=req, latency_ms=latency, name=str(model) if model else None, **details)
    if failed:
        error = kwargs.get("exception") or slo.get("error_str")
        return tracker.record(step, reason=f"call failed: {type(error).__name__ if error else 'error'}", **common)
    if slo.get("cache_hit") or _get(kwargs, "cache_hit"):
        return tracker.record(
            "cache_lookup", cost=Decimal(0), cache_hit=True, **{**common, "name": f"LiteLLM cache hit ({model})"}
        )
    if name is None:
        return tracker.record(step, reason=reason or "no model", **common)
    usage = usage_of(response)
    if usage is None:
        return tracker.record(step, reason=f"{model}: LiteLLM reported no usage", **common)
    return tracker.record(step, model=name, usage=usage, **common)


def _logger_class() -> type:
    if "logger" in _classes:
        return _classes["logger"]
    try:
        from litellm.integrations.custom_logger import CustomLogger
    except ImportError:
        from truecost.errors import MissingExtraError

        raise MissingExtraError("the LiteLLM logger", "pip install litellm") from None

    class TruecostLogger(CustomLogger):
        """Records each LiteLLM call into a truecost ledger (see the module docstring)."""

        def __init__(self, tracker: Any = None, **attribution: Any) -> None:
            from truecost.tracking import get_tracker

            super().__init__()
            self.tracker = tracker or get_tracker()
            self.attribution = attribution
            self.errors = 0

        def _safe(self, kwargs, response, start, end, failed) -> None:
            try:  # a logger must never break the call it logs
                record_call(self.tracker, kwargs, response, start, end, failed=failed, defaults=self.attribution)
            except Exception:
                self.errors += 1

        def log_success_event(self, kwargs, response_obj, start_time, end_time):
            self._safe(kwargs, response_obj, start_time, end_time, False)

        async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
            self._safe(kwargs, response_obj, start_time, end_time, False)

        def log_failure_event(self, kwargs, response_obj, start_time, end_time):
            self._safe(kwargs, response_obj, start_time, end_time, True)

        async def async_log_failure_event(self, kwargs, response_obj, start_time, end_time):
            self._safe(kwargs, response_obj, start_time, end_time, True)

    _classes["logger"] = TruecostLogger
    return TruecostLogger


def truecost_logger(tracker: Any = None, **attribution: Any) -> Any:
    """A LiteLLM CustomLogger recording into ``tracker`` (default: truecost's process tracker)."""
    return _logger_class()(tracker, **attribution)


def ledger_logger(
    ledger: str,
    *,
    prices_files: tuple[str, ...] = (),
    spool: str | None = None,
    ledger_schema: str | None = None,
    **attribution: Any,
) -> Any:
    """A logger with its own ledger (SQLite path or PostgreSQL URL), batch writer, spool and write-ahead
    log, closed at exit: the one line a LiteLLM proxy's callback module needs."""
    from pathlib import Path

    from truecost.ledger import BatchWriter, LedgerStore, open_store
    from truecost.pricing.catalog import PriceCatalog
    from truecost.tracking.tracker import Tracker

    store: LedgerStore
    if ledger.startswith(("postgresql://", "postgres://")):
        from truecost.ledger.postgres import PostgresLedgerStore

        store = PostgresLedgerStore(ledger, schema=ledger_schema)
        spool_path = Path(spool or ".truecost/litellm.spool.jsonl")
    else:
        store = open_store(ledger)
        spool_path = Path(spool) if spool else Path(ledger).with_suffix(".litellm.spool.jsonl")
    writer = BatchWriter(store, spool_path=spool_path, wal_dir=spool_path.with_suffix(".wal"))
    logger = truecost_logger(Tracker(PriceCatalog.load(*prices_files), writer), **attribution)
    logger.writer = writer

    def close() -> None:
        writer.close()
        store.close()

    atexit.register(close)
    return logger


def __getattr__(name: str) -> Any:
    if name == "TruecostLogger":
        return _logger_class()
    raise AttributeError(name)
