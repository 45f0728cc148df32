"""Helpers shared by the benchmarks: synthetic but realistic events, timing, JSON output."""

from __future__ import annotations

import json
import platform
import random
import sys
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from truecost.ledger import CostEvent
from truecost.types import Attribution

STEPS = ["sanitize", "embed", "vector_search", "context_assembly", "generate", "validate", "log_storage", "egress"]
T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)


def make_events(n: int, seed: int = 0, steps_per_request: int = 8) -> list[CostEvent]:
    rnd = random.Random(seed)
    attrs = [
        Attribution(
            cost_center=f"cc-{i % 12}",
            team=f"team-{i % 5}",
            feature=f"f-{i % 9}",
            tenant=f"tenant-{i % 40}",
            environment="prod",
        )
        for i in range(60)
    ]
    out = []
    for i in range(n):
        r = i // steps_per_request
        step = STEPS[i % steps_per_request % len(STEPS)]
        cost = None if rnd.random() < 0.001 else Decimal(rnd.randint(1, 10**7)) / Decimal(10**10)
        out.append(
            CostEvent(
                id=f"e{seed}-{i}",
                request_id=f"r{seed}-{r}",
                ts=T0 + timedelta(seconds=r * 0.5),
                step=step,
                provider="openai",
                service="gpt-6-luna",
                quantity=Decimal(rnd.randint(1, 4000)),
                unit="tokens",
                cost=cost,
                attribution=attrs[r % len(attrs)],
                latency_ms=rnd.random() * 5,
                details={"tokens": {"input": 100, "output": 20}} if step == "generate" else {},
            )
        )
    return out


def emit(result: dict) -> None:
    result.setdefault("machine", {"python": sys.version.split()[0], "platform": platform.platform()})
    print(json.dumps(result, indent=2))
