"""Requests and steps for callback-driven frameworks (LangChain, LlamaIndex), keyed by their run ids.

A top-level run (a chain, a query) opens a truecost request; every LLM, embedding and
retriever call inside it is a step of that request. A call with no open run around it is a
request of its own. Callbacks may arrive on several threads, so the book is locked.
"""

from __future__ import annotations

import contextvars
import threading
from typing import Any, Hashable

from truecost.integrations.genai import price_name
from truecost.tracking.scope import RequestScope, StepScope
from truecost.types import ATTRIBUTION_FIELDS


def attribution_from(metadata: Any) -> dict[str, Any]:
    """Attribution a caller put in a run's metadata: ``{"truecost": {"tenant": "acme", "tags": {...}}}``."""
    block = metadata.get("truecost") if isinstance(metadata, dict) else None
    if not isinstance(block, dict):
        return {}
    out: dict[str, Any] = {k: str(v) for k, v in block.items() if k in ATTRIBUTION_FIELDS and v is not None}
    if isinstance(block.get("tags"), dict):
        out["tags"] = {str(k): str(v) for k, v in block["tags"].items()}
    return out


class RunBook:
    def __init__(self, tracker: Any, source: str, attribution: dict[str, Any]) -> None:
        self.tracker, self.source, self.attribution = tracker, source, attribution
        self._lock = threading.Lock()
        self._root: dict[Hashable, Hashable] = {}  # run id -> the id of its top-level run
        self._requests: dict[Hashable, RequestScope] = {}  # top-level run id -> its request
        self._steps: dict[Hashable, tuple[StepScope, bool]] = {}  # run id -> (step, owns a lone request)
        self.active: contextvars.ContextVar[RequestScope | None] = contextvars.ContextVar(
            f"truecost_{source}_request", default=None
        )

    def start_run(self, run_id: Hashable, parent_id: Hashable | None, metadata: Any = None) -> None:
        """A chain or query run: the top-level one opens a request, nested ones join it."""
        with self._lock:
            root = self._root.get(parent_id) if parent_id is not None else None
            if root is not None:
                self._root[run_id] = root
                return
            self._root[run_id] = run_id
        req = self.tracker.request(source=self.source, **{**self.attribution, **attribution_from(metadata)})
        self.tracker.open_request(req)
        with self._lock:
            self._requests[run_id] = req
        self.active.set(req)

    def end_run(self, run_id: Hashable, exc: BaseException | None = None) -> RequestScope | None:
        with self._lock:
            root = self._root.pop(run_id, None)
            req = self._requests.pop(run_id, None) if root == run_id else None
        if req is not None:
            self.tracker.close_request(req, exc)
            if self.active.get() is req:
                self.active.set(None)
        return req

    def request_for(self, parent_id: Hashable | None) -> RequestScope | None:
        with self._lock:
            root = self._root.get(parent_id) if parent_id is not None else None
            return self._requests.get(root) if root is not None else None

    def start_step(
        self, run_id: Hashable, parent_id: Hashable | None, kind: str, name: str | None, metadata: Any = None
    ) -> StepScope:
        req = self.request_for(parent_id) or self.active.get()
        lone = req is None
        if req is None:
            req = self.tracker.request(source=self.source, **{**self.attribution, **attribution_from(metadata)})
            self.tracker.open_request(req)
        step = StepScope(req, kind, name)
        step.source = self.source
        step.begin()
        with self._lock:
            self._steps[run_id] = (step, lone)
            if parent_id is not None and parent_id in self._root:
                self._root[run_id] = self._root[parent_id]
        return step

    def step(self, run_id: Hashable) -> StepScope | None:
        with self._lock:
            entry = self._steps.get(run_id)
        return entry[0] if entry else None

    def finish_step(self, run_id: Hashable, exc: BaseException | None = None) -> StepScope | None:
        with self._lock:
            entry = self._steps.pop(run_id, None)
            self._root.pop(run_id, None)
        if entry is None:
            return None
        step, lone = entry
        step.finish(exc)
        if lone:
            self.tracker.close_request(step.request, exc)
        return step

    def open_runs(self) -> int:
        with self._lock:
            return len(self._requests) + len(self._steps)


def charge_tokens(
    step: StepScope,
    provider: str | None,
    model: str | None,
    usage: Any,
    *,
    flavour: str = "openai",
    missing: str = "the framework reported no token usage",
) -> None:
    """Price a model call on ``step``; a call without a model or usage is recorded unpriced, with a reason."""
    if model is None:
        step.cost(None, reason="the framework did not say which model answered")
        return
    name, reason = price_name(provider, model)
    if name is None:
        step.cost(None, service=model, reason=reason)
        return
    if usage is None:
        step.cost(None, service=model, unit="tokens", reason=f"{model}: {missing}")
        return
    step.tokens(name, usage, flavour=flavour)
