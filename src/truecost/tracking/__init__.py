"""The instrumentation SDK: request and step scopes, decorators, client wrappers.

Module-level helpers use a process-wide default Tracker, built on first use (never at
import): the bundled catalog and an in-memory ledger, unless ``configure`` set others.
"""

from __future__ import annotations

import functools
import inspect
import threading
import warnings
from typing import Any, Callable

from truecost.tracking.scope import RequestScope, StepScope, current_request, current_step
from truecost.tracking.tracker import Tracker

_default: Tracker | None = None
_lock = threading.Lock()


class InMemoryLedgerWarning(UserWarning):
    """Tracked events are going to the default in-memory ledger (lost when the process exits)."""


DEFAULT_STORE_WARNING = (
    "truecost: no tracker configured, so tracked events go to an in-memory ledger and are lost "
    "when the process exits; call truecost.tracking.configure(Tracker(catalog, sink)) with a "
    "ledger (e.g. SQLiteLedgerStore) to keep them"
)


def configure(tracker: Tracker) -> Tracker:
    """Make ``tracker`` the process default used by ``request``, ``step`` and ``tracked``."""
    global _default
    with _lock:
        _default = tracker
    return tracker


def get_tracker() -> Tracker:
    global _default
    if _default is None:
        with _lock:
            if _default is None:
                from truecost.ledger.store import MemoryLedgerStore
                from truecost.pricing.catalog import PriceCatalog

                store = MemoryLedgerStore()
                _default = Tracker(PriceCatalog.bundled(), lambda e: store.append([e]))
                _default.store = store  # type: ignore[attr-defined]
                # once per process: events kept only in memory are lost at exit
                warnings.warn(DEFAULT_STORE_WARNING, InMemoryLedgerWarning, stacklevel=3)
    return _default


def request(request_id: str | None = None, **attribution: Any) -> RequestScope:
    return get_tracker().request(request_id, **attribution)


def step(kind: str, name: str | None = None) -> StepScope:
    """A step of the current request (or of a new lone request when none is open)."""
    req = current_request() or get_tracker().request()
    return req.step(kind, name)


def record(step_kind: str, **kw: Any):
    return get_tracker().record(step_kind, **kw)


def tracked(kind: str, name: str | None = None) -> Callable:
    """Decorator: every call of the function is a step of the current request."""

    def wrap(fn: Callable) -> Callable:
        label = name or fn.__qualname__
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def awrapper(*args: Any, **kwargs: Any) -> Any:
                async with step(kind, label):
                    return await fn(*args, **kwargs)

            return awrapper

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with step(kind, label):
                return fn(*args, **kwargs)

        return wrapper

    return wrap


__all__ = [
    "Tracker",
    "InMemoryLedgerWarning",
    "RequestScope",
    "StepScope",
    "configure",
    "get_tracker",
    "request",
    "step",
    "record",
    "tracked",
    "current_request",
    "current_step",
]
