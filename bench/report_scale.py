"""`truecost report` over 1,000,000 ledger events (SQLite), end to end as a user runs it.

Prints JSON: seconds for the report command (in a fresh process), and for comparison the
same totals computed in Python over the events loaded into memory. Target: <= 3 s.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, make_events  # noqa: E402

from truecost.ledger.sqlite import SQLiteLedgerStore  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        db = Path(d) / "ledger.db"
        store = SQLiteLedgerStore(db)
        t0 = time.perf_counter()
        chunk = 100_000
        for start in range(0, args.events, chunk):
            store.append(make_events(min(chunk, args.events - start), seed=start))
        build_s = time.perf_counter() - t0
        store.close()
        cmd = [sys.executable, "-m", "truecost.cli.main", "report", "--db", str(db), "--json"]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        report_s = time.perf_counter() - t0
        data = json.loads(out)
        t0 = time.perf_counter()
        human = subprocess.run(cmd[:-1] + ["--by", "tenant,day"], check=True, capture_output=True, text=True)
        report_by_tenant_s = time.perf_counter() - t0
        assert data["events"] == args.events, data["events"]
    emit(
        {
            "benchmark": "report_scale",
            "events": args.events,
            "requests": data["requests"],
            "build_ledger_s": round(build_s, 2),
            "report_json_s": round(report_s, 3),
            "report_rich_with_tenant_day_s": round(report_by_tenant_s, 3),
            "target_s": 3.0,
            "meets_target": max(report_s, report_by_tenant_s) <= 3.0,
            "report_lines": len(human.stdout.splitlines()),
        }
    )


if __name__ == "__main__":
    main()
