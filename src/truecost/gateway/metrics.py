"""Prometheus text exposition of the gateway's counters (no client library needed)."""

from __future__ import annotations

import threading
from collections import defaultdict

_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 25, 50, 100)


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: dict[tuple, float] = defaultdict(float)
        self.overhead_buckets = [0] * (len(_BUCKETS) + 1)
        self.overhead_sum = 0.0
        self.overhead_count = 0

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        with self._lock:
            self.counters[(name, tuple(sorted(labels.items())))] += value

    def observe_overhead(self, ms: float) -> None:
        with self._lock:
            i = next((i for i, b in enumerate(_BUCKETS) if ms <= b), len(_BUCKETS))
            self.overhead_buckets[i] += 1
            self.overhead_sum += ms
            self.overhead_count += 1

    def render(self) -> str:
        lines = []
        with self._lock:
            names = sorted({n for n, _ in self.counters})
            for n in names:
                lines.append(f"# TYPE {n} counter")
                for (name, labels), v in sorted(self.counters.items()):
                    if name == n:
                        lab = ",".join(f'{k}="{str(val).replace(chr(34), chr(39))}"' for k, val in labels)
                        lines.append(f"{n}{{{lab}}} {v}" if lab else f"{n} {v}")
            lines.append(
                "# HELP truecost_overhead_ms the gateway's own time per answered request: the whole request "
                "minus the upstream calls; for a stream, the time before the first upstream call"
            )
            lines.append("# TYPE truecost_overhead_ms histogram")
            acc = 0
            for b, c in zip(_BUCKETS, self.overhead_buckets):
                acc += c
                lines.append(f'truecost_overhead_ms_bucket{{le="{b}"}} {acc}')
            lines.append(f'truecost_overhead_ms_bucket{{le="+Inf"}} {self.overhead_count}')
            lines.append(f"truecost_overhead_ms_sum {self.overhead_sum}")
            lines.append(f"truecost_overhead_ms_count {self.overhead_count}")
        return "\n".join(lines) + "\n"
