"""bench/cache_signal_ceiling.py: the hindsight arithmetic its figures rest on."""

import importlib.util
import sys
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parents[3] / "bench"


def _module():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("cache_signal_ceiling", BENCH / "cache_signal_ceiling.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_hindsight_serves_the_most_it_can_within_the_bound():
    m = _module()
    score = np.arange(200, 0, -1, dtype=float)  # best first
    same = np.ones(200, bool)
    same[[10, 20, 30]] = False  # the 11th, 21st and 31st best are wrong
    # 1% of 200 lookups = 2 false hits allowed: serve down to (not including) the third wrong one
    assert m.hindsight(score, same) == 30 / 200
    assert m.hindsight(score, same, bound=0.0) == 10 / 200
    assert m.hindsight(score, np.zeros(200, bool), bound=0.0) == 0.0


def test_auc_orders_and_earlier_looks_only_back():
    m = _module()
    same = np.array([True, True, False, False])
    assert m.auc(same, np.array([0.9, 0.8, 0.2, 0.1])) == 1.0
    assert m.auc(same, np.array([0.1, 0.2, 0.8, 0.9])) == 0.0
    v = np.eye(4, dtype=np.float32)[[0, 1, 0, 1]]  # query 2 repeats 0, query 3 repeats 1
    idx, sims = m.earlier(v, 2)
    assert idx[0, 0] == -1 and idx[2, 0] == 0 and idx[3, 0] == 1 and sims[3, 0] == 1.0
    assert (idx[1] <= 0).all()  # query 1 sees only query 0
