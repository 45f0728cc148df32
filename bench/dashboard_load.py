"""Dashboard page load on a ledger of 100,000 requests (800,000 events): server time per page.

Target (issue #7): the overview loads in under a second. Measures, side by side in one run:
the overview unfiltered, filtered by cost center, and one request's page, each through the
real Starlette app (httpx ASGI transport), median of 5.

    .venv/bin/python bench/dashboard_load.py [--requests 100000]
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import tempfile
import time
from pathlib import Path

from _common import emit, make_events


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=100_000)
    args = ap.parse_args()
    import asyncio

    import httpx
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from truecost.dashboard.app import create_dashboard
    from truecost.dashboard.auth import KeyTableAuth, Principal, key_sha256
    from truecost.ledger.sqlite import SQLiteLedgerStore

    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteLedgerStore(Path(tmp) / "ledger.db")
        t0 = time.perf_counter()
        for start in range(0, args.requests * 8, 200_000):
            n = min(200_000, args.requests * 8 - start)
            events = make_events(n, seed=start)
            store.append(events)
        load_s = time.perf_counter() - t0
        admin_key = secrets.token_urlsafe(24)  # the pages as an admin sees them, through a real login and session
        auth = KeyTableAuth([(key_sha256(admin_key), Principal("bench-admin", admin=True))])
        app = Starlette(routes=[Mount("/ui", create_dashboard(store, auth=auth))])
        rid = store.query(limit=1)[0].request_id

        async def timed(url: str) -> tuple[float, int]:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
                login = await c.post("/ui/login", data={"key": admin_key})
                if login.status_code != 303 or not c.cookies:
                    raise SystemExit(f"dashboard login failed: {login.status_code}")
                times = []
                for _ in range(5):
                    t = time.perf_counter()
                    r = await c.get(url)
                    times.append(time.perf_counter() - t)
                    assert r.status_code == 200, r.text[:200]
                return statistics.median(times), len(r.content)

        pages = {"overview": "/ui/", "overview_filtered": "/ui/?cost_center=cc-3", "request": f"/ui/request/{rid}"}
        out = {}
        for name, url in pages.items():
            s, size = asyncio.run(timed(url))
            out[name] = {"median_s": round(s, 3), "bytes": size}
        emit(
            {
                "benchmark": "dashboard_load",
                "requests": args.requests,
                "events": args.requests * 8,
                "ledger_build_s": round(load_s, 1),
                "pages": out,
                "target_s": 1.0,
                "meets_target": all(v["median_s"] < 1.0 for v in out.values()),
            }
        )
        store.close()


if __name__ == "__main__":
    main()
