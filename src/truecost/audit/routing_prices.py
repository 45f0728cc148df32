"""Labelled routing traffic at catalog prices: the ``routing.training.Pricer`` of the CLI and the benchmark."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from typing import Sequence

import numpy as np

from truecost.errors import UnknownModelError
from truecost.pricing.catalog import PriceCatalog
from truecost.pricing.cost import price_tokens, strong_call_premium
from truecost.types import TokenUsage


class CatalogPricer:
    """Call costs in dollars from the prices in force at ``at`` (default: when asked)."""

    def __init__(self, catalog: PriceCatalog | None = None, at: datetime | None = None) -> None:
        self.catalog = catalog or PriceCatalog.bundled()
        self.at = at

    def _version(self, model: str):
        version = self.catalog.price_for(model, self.at or datetime.now(timezone.utc))
        if version is None:
            raise UnknownModelError(f"no price in force for {model!r}")
        return version

    def call_costs(self, model: str, input_tokens: Sequence[int], output_tokens: Sequence[int]) -> np.ndarray:
        version = self._version(model)
        costs = [price_tokens(version, TokenUsage(input=i, output=o)).cost for i, o in zip(input_tokens, output_tokens)]
        return np.array([_known(c, model) for c in costs])

    def strong_premiums(
        self, weak: str, strong: str, input_tokens: Sequence[int], out_weak: int, out_strong: int, cascade: bool
    ) -> np.ndarray:
        """What the strong call adds to each request (the whole strong call for a cascade)."""
        vw, vs = self._version(weak), self._version(strong)
        premiums = [strong_call_premium(vw, vs, t, out_weak, out_strong, cascade=cascade) for t in input_tokens]
        return np.array([_known(p, f"{weak} or {strong}") for p in premiums])


def _known(cost: Decimal | None, model: str) -> float:
    if cost is None:
        raise UnknownModelError(f"no token prices for {model!r} in the catalog")
    return float(cost)
