"""A closed-loop HTTP load generator (run as its own process): N workers, each sending the next
request when the previous one answers. Prints JSON: count, errors, RPS, latency percentiles (ms)."""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import httpx
import numpy as np


async def main(url: str, key: str | None, model: str, concurrency: int, duration: float, requests: int | None) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": "How long does a refund take?"}]}
    headers = {"authorization": f"Bearer {key}"} if key else {}
    lat: list[float] = []
    errors = 0
    sent = 0
    stop = time.perf_counter() + duration
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60.0) as client:

        async def worker():
            nonlocal errors, sent
            while time.perf_counter() < stop and (requests is None or sent < requests):
                sent += 1
                t0 = time.perf_counter()
                try:
                    r = await client.post(url, json=body, headers=headers)
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                dt = (time.perf_counter() - t0) * 1000
                if ok:
                    lat.append(dt)
                else:
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    a = np.array(lat) if lat else np.array([float("nan")])
    return {
        "ok": len(lat),
        "errors": errors,
        "seconds": round(elapsed, 2),
        "rps": round(len(lat) / elapsed, 1),
        "p50_ms": round(float(np.percentile(a, 50)), 3),
        "p99_ms": round(float(np.percentile(a, 99)), 3),
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--key")
    ap.add_argument("--model", required=True)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--requests", type=int)
    a = ap.parse_args()
    print(json.dumps(asyncio.run(main(a.url, a.key, a.model, a.concurrency, a.duration, a.requests))))
