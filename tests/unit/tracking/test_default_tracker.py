"""Without configure(), the default tracker keeps events in memory: the user is told, once."""

import subprocess
import sys


def test_the_default_in_memory_ledger_warns_once_per_process():
    code = """
import warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import truecost.tracking as t
    with t.request():
        pass
    with t.request():
        pass
    t.record("sanitize", cost="0.001")
hits = [w for w in caught if issubclass(w.category, t.InMemoryLedgerWarning)]
assert len(hits) == 1, [str(w.message) for w in caught]
assert "in-memory ledger" in str(hits[0].message) and "configure" in str(hits[0].message)
print(len(t.get_tracker().store.query()))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) >= 1


def test_a_configured_tracker_does_not_warn():
    code = """
import warnings
warnings.simplefilter("error")
import truecost.tracking as t
from truecost.ledger.store import MemoryLedgerStore
from truecost.pricing.catalog import PriceCatalog
store = MemoryLedgerStore()
t.configure(t.Tracker(PriceCatalog.bundled(), lambda e: store.append([e])))
with t.request():
    pass
t.record("sanitize", cost="0.001")
print(len(store.query()))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) >= 1
