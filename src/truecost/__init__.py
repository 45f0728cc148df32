"""truecost: the real cost of an LLM feature, per request and per step.

Importing this package does nothing but define names: no files, no network, no models.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "request": "truecost.tracking",
    "step": "truecost.tracking",
    "record": "truecost.tracking",
    "tracked": "truecost.tracking",
    "configure": "truecost.tracking",
    "get_tracker": "truecost.tracking",
    "Tracker": "truecost.tracking",
    "PriceCatalog": "truecost.pricing",
    "Attribution": "truecost.types",
    "TokenUsage": "truecost.types",
    "CostEvent": "truecost.ledger",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'truecost' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = ["__version__", *_LAZY]
