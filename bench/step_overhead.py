"""Overhead of a tracked step vs the same code untracked, in microseconds per step.

The step body is a small piece of real work (hashing a short string). Tracked variants:
a step with no usage (priced as compute time), and a step recording token usage, each with
the BatchWriter sink into SQLite. Target: <= 20 µs per step.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit  # noqa: E402

from truecost.ledger import BatchWriter  # noqa: E402
from truecost.ledger.sqlite import SQLiteLedgerStore  # noqa: E402
from truecost.pricing import PriceCatalog  # noqa: E402
from truecost.tracking import Tracker  # noqa: E402
from truecost.types import TokenUsage  # noqa: E402

N = 50_000
USAGE = TokenUsage(input=900, cached_input=100, output=120)


def work(i: int) -> bytes:
    return hashlib.blake2b(str(i).encode(), digest_size=8).digest()


def untracked(n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        work(i)
    return time.perf_counter() - t0


def tracked(n: int, tracker: Tracker, with_tokens: bool) -> float:
    req = tracker.request(cost_center="bench")
    req.events = _Discard()
    t0 = time.perf_counter()
    for i in range(n):
        with req.step("generate" if with_tokens else "sanitize") as s:
            work(i)
            if with_tokens:
                s.tokens("gpt-6-luna", USAGE)
    return time.perf_counter() - t0


class _Discard(list):
    """A request that lives for 50,000 steps should not keep them all in memory."""

    def append(self, _):
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=N, help="steps per timed run (best of 3)")
    n = ap.parse_args().steps
    with tempfile.TemporaryDirectory() as d:
        store = SQLiteLedgerStore(Path(d) / "l.db")
        writer = BatchWriter(store)
        tracker = Tracker(PriceCatalog.bundled(), writer, compute="aws/c7i.xlarge")
        tracked(2_000, tracker, True)  # warm up caches
        base = min(untracked(n) for _ in range(3))
        plain = min(tracked(n, tracker, False) for _ in range(3))
        tokens = min(tracked(n, tracker, True) for _ in range(3))
        writer.close()
        stored = store.count()
    per = lambda t: (t - base) / n * 1e6  # noqa: E731
    emit(
        {
            "benchmark": "step_overhead",
            "steps": n,
            "untracked_us_per_call": round(base / n * 1e6, 3),
            "tracked_step_overhead_us": round(per(plain), 2),
            "tracked_step_with_tokens_overhead_us": round(per(tokens), 2),
            "ratio_tracked_vs_untracked": round(tokens / base, 1),
            "events_stored": stored,
            "target_us": 20,
            "meets_target": max(per(plain), per(tokens)) <= 20,
        }
    )


if __name__ == "__main__":
    main()
