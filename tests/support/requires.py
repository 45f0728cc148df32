"""Import what a test needs, or fail loudly: a missing extra is a broken test environment, not a skip.

``scripts/test.sh`` installs every extra the suite uses (``pip install -e '.[test]'``); a run without
them must not pass by silently dropping the tests that need them.
"""

from __future__ import annotations

import importlib
from types import ModuleType


def need(module: str, extra: str = "test") -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{module} is not installed: these tests need truecost's '{extra}' extra "
            "(pip install -e '.[test]', as scripts/test.sh does); they fail rather than skip"
        ) from exc
