"""The quick benchmarks still run end to end at a small size (a bench that rots fails here, not in a release note)."""

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[3] / "bench"


def _run(script: str, *args: str) -> dict:
    r = subprocess.run(
        [sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=300, cwd=BENCH.parent
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


def test_dashboard_bench_logs_in_and_times_every_page():
    out = _run("dashboard_load.py", "--requests", "300")
    assert out["events"] == 2400
    assert set(out["pages"]) == {"overview", "overview_filtered", "request"}
    assert all(p["bytes"] > 1000 and p["median_s"] > 0 for p in out["pages"].values())


def test_ledger_and_report_benches_run_small():
    ingest = _run("ledger_ingest.py", "--events", "4000", "--naive-events", "500")
    assert ingest["events"] == 4000 and ingest["batch_writer_events_per_s"] > 0
    assert ingest["naive_commit_per_event_events_per_s"] > 0
    report = _run("report_scale.py", "--events", "4000")
    assert report["events"] == 4000 and report["requests"] == 500 and report["report_lines"] > 10


def test_step_overhead_bench_runs_small():
    out = _run("step_overhead.py", "--steps", "500")
    assert out["steps"] == 500 and out["events_stored"] == 2000 + 6 * 500
    assert out["tracked_step_overhead_us"] > 0 and out["untracked_us_per_call"] > 0
