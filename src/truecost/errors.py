"""One exception tree for everything truecost raises on purpose."""

from __future__ import annotations


class TruecostError(Exception):
    """Base class of every error truecost raises deliberately."""


class ConfigError(TruecostError):
    """A configuration or data file is malformed; the message names file and entry."""


class PriceFileError(ConfigError):
    """A price catalog file is malformed."""

    def __init__(self, path: str, entry: str | None, problem: str) -> None:
        where = f"{path}" + (f", entry {entry!r}" if entry else "")
        super().__init__(f"{where}: {problem}")
        self.path, self.entry, self.problem = path, entry, problem


class UnknownModelError(TruecostError):
    """A model or resource name that the catalog does not know."""


class InvalidQuantityError(TruecostError, ValueError):
    """A negative, non-finite or non-numeric quantity was given."""


class InvalidAttributionError(TruecostError, ValueError):
    """An attribution field or tag that cannot be stored faithfully."""


class LedgerError(TruecostError):
    """The ledger could not store or read events; nothing was partially written."""


class MissingExtraError(TruecostError, ImportError):
    """An optional dependency is missing; the message says what to install."""

    def __init__(self, feature: str, hint: str) -> None:
        super().__init__(f"{feature} needs an optional dependency: {hint}")
        self.hint = hint


class UpstreamError(TruecostError):
    """Base class of errors from a model API."""
