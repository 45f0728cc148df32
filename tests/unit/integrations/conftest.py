"""The test price file (see spans.py) as a catalog and a tracker over an in-memory ledger."""

from __future__ import annotations

import pytest

from truecost.ledger import MemoryLedgerStore
from truecost.pricing import PriceCatalog
from truecost.tracking import Tracker

from .spans import PRICES


@pytest.fixture(scope="session")
def catalog(tmp_path_factory):
    path = tmp_path_factory.mktemp("prices") / "test-prices.yaml"
    path.write_text(PRICES)
    return PriceCatalog.load(path)


@pytest.fixture
def ledger(catalog):
    store = MemoryLedgerStore()
    tracker = Tracker(catalog, lambda e: store.append([e]), compute="acme/tc-cpu")
    return tracker, store
