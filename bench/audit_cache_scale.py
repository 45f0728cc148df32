"""`truecost audit cache` end to end at 10,000 and 1,000,000 queries: wall time and peak memory.

Targets (issue #6): 10k queries <= 15 s end to end; 1M queries <= 10 minutes with peak
memory <= 4 GB, on this 2-core machine. Each size runs the real CLI in a child process
(static embedder; its one-time distillation is done before timing). 1M real queries do not
exist here, so the large log is built from banking77 + clinc150 texts: exact repeats, a
word swapped, a word added, two queries joined, mixed as a query log would mix them.

    .venv/bin/python bench/audit_cache_scale.py [--sizes 10000,1000000]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import emit

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def texts() -> list[str]:
    out = []
    for name in ("banking77/banking77.jsonl", "clinc150/clinc150.jsonl"):
        with open(DATA / name, encoding="utf-8") as fh:
            out += [json.loads(line)["text"] for line in fh]
    return out


def synthetic_log(n: int, path: Path, seed: int = 0) -> None:
    rnd = random.Random(seed)
    base = texts()
    vocab = sorted({w for t in base[:5000] for w in t.split()})
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            t = rnd.choice(base)
            r = rnd.random()
            if r < 0.25:
                words = t.split()
                words[rnd.randrange(len(words))] = rnd.choice(vocab)
                t = " ".join(words)
            elif r < 0.45:
                t = f"{t} {rnd.choice(vocab)}"
            elif r < 0.55:
                t = f"{t} {rnd.choice(base)}"
            fh.write(json.dumps({"id": i, "text": t}) + "\n")


def run(n: int, workdir: Path) -> dict:
    log = workdir / f"log-{n}.jsonl"
    if n <= 13_000:
        src = DATA / "banking77" / "banking77.jsonl"
        with open(src, encoding="utf-8") as fh, open(log, "w", encoding="utf-8") as out:
            for _, line in zip(range(n), fh):
                out.write(line)
    else:
        synthetic_log(n, log)
    cmd = [
        sys.executable,
        "-m",
        "truecost.cli.main",
        "audit",
        "cache",
        str(log),
        "--embedder",
        "static",
        "--out",
        str(workdir / f"out-{n}"),
        "--json",
        "--threshold",
        "0.85",
        "--threshold",
        "0.9",
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    r = json.loads(proc.stdout)
    return {
        "queries": n,
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(max(peak_kb, before) / 1024, 1),
        "peak_rss_is_max_of_children_so_far": True,
        "audit_seconds": r["seconds"],
        "clustered_share_0.85": r["thresholds"][0]["clustered_share"],
        "hit_rate_0.85": r["thresholds"][0]["hit_rate"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,1000000")
    args = ap.parse_args()
    from truecost.cache.embedders import StaticEmbedder

    StaticEmbedder().embed_batch(["warm up"])  # builds the static model once if missing (not timed)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(s) for s in args.sizes.split(",")):  # ascending: ru_maxrss of children is a running max
            results.append(run(n, Path(tmp)))
    targets = {10_000: 15.0, 1_000_000: 600.0}
    for r in results:
        limit = targets.get(r["queries"])
        r["target_s"] = limit
        r["meets_time"] = None if limit is None else r["wall_s"] <= limit
        r["meets_memory"] = r["peak_rss_mb"] <= 4096
    emit({"benchmark": "audit_cache_scale", "results": results})


if __name__ == "__main__":
    main()
