"""Added latency and throughput: truecost's gateway beside the LiteLLM proxy, same mock, same load.

Three processes per target (a raw-ASGI mock upstream with a fixed latency, the gateway, the
load generator: wrk when installed, else bench/loadgen.py), all on 127.0.0.1. truecost runs
twice in the same run: plain (a key, the ledger) and secured (key limits, a hard budget,
admin API, dashboard login, /metrics token), to show what the production settings cost. Added latency = through the gateway minus direct to the mock,
at concurrency 1 and 64; max sustained RPS at 64; peak RSS of each gateway process.
LiteLLM runs from .venv-litellm (bench/setup_litellm.sh), with a master key and its
default spend tracking; truecost with its ledger on. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.support.mock_upstream import free_port  # noqa: E402

PY = sys.executable
MODEL = "gpt-4o-mini"  # priced by both truecost's catalog and LiteLLM's


def start(cmd: list[str], env=None, log=None) -> subprocess.Popen:
    return subprocess.Popen(
        cmd,
        env={**os.environ, **(env or {})},
        stdout=log or subprocess.DEVNULL,
        stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
        start_new_session=True,
    )


def wait_ready(url: str, timeout: float = 120.0, headers=None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(url, timeout=1.0, headers=headers).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def stop(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(p.pid, signal.SIGKILL)


def peak_rss_mb(pid: int) -> float:
    total = 0.0
    for child in [pid] + [
        int(c)
        for c in subprocess.run(["pgrep", "-g", str(pid)], capture_output=True, text=True).stdout.split()
        if int(c) != pid
    ]:
        try:
            for line in Path(f"/proc/{child}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            pass
    return round(total, 1)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _wrk(url: str, key: str | None, model: str, concurrency: int, duration: float) -> dict:
    import re

    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "How long does a refund take?"}]})
    script.write_text(
        f"wrk.method = 'POST'\nwrk.body = [[{body}]]\nwrk.headers['Content-Type'] = 'application/json'\n"
        + (f"wrk.headers['Authorization'] = 'Bearer {key}'\n" if key else "")
    )
    out = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{max(int(duration), 1)}s", "--latency", "-s", str(script), url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    unit = {"us": 0.001, "ms": 1.0, "s": 1000.0}

    def ms(label):
        m = re.search(rf"{label}\s+([\d.]+)(us|ms|s)", out)
        return round(float(m.group(1)) * unit[m.group(2)], 3)

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": ms("50%"),
        "p99_ms": ms("99%"),
        "errors": int(errors.group(1)) if errors else 0 + (sum(map(int, sock.groups())) if sock else 0),
        "ok": int(re.search(r"(\d+) requests in", out).group(1)),
        "load_generator": "wrk",
    }


def load(url: str, key: str | None, model: str, concurrency: int, duration: float, requests: int | None = None) -> dict:
    import shutil

    if shutil.which("wrk") and not requests:
        return _wrk(url, key, model, concurrency, duration)
    cmd = [
        PY,
        str(ROOT / "bench" / "loadgen.py"),
        "--url",
        url,
        "--model",
        model,
        "--concurrency",
        str(concurrency),
        "--duration",
        str(duration),
    ]
    if key:
        cmd += ["--key", key]
    if requests:
        cmd += ["--requests", str(requests)]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def measure(name: str, url: str, key: str | None, direct: dict, args) -> dict:
    load(url, key, MODEL, 4, 2.0)  # warm up connections and caches
    c1 = load(url, key, MODEL, 1, args.duration)
    c64 = load(url, key, MODEL, 64, args.duration)
    return {
        "c1": c1,
        "c64": c64,
        "added_p50_ms_c1": round(c1["p50_ms"] - direct["c1"]["p50_ms"], 3),
        "added_p99_ms_c1": round(c1["p99_ms"] - direct["c1"]["p99_ms"], 3),
        "added_p50_ms_c64": round(c64["p50_ms"] - direct["c64"]["p50_ms"], 3),
        "added_p99_ms_c64": round(c64["p99_ms"] - direct["c64"]["p99_ms"], 3),
    }


def write_config(work: Path, profile: str, mock_url: str, key: str) -> Path:
    """``truecost``: a key and the ledger. ``truecost_secured``: the same, plus what production turns on -- a key
    with model, rate and token limits and an expiry, a hard budget on its cost center, the admin API, the
    dashboard login and a bearer token on /metrics (limits far above the load, so nothing is refused)."""
    import hashlib

    digest = lambda s: hashlib.sha256(s.encode()).hexdigest()  # noqa: E731
    k = {"name": "bench", "key_sha256": digest(key), "cost_center": "bench", "tenant": "bench"}
    doc = {
        "ledger": str(work / f"{profile}.db"),
        "upstreams": {"mock": {"base_url": mock_url, "timeout": 30}},
        "models": {MODEL: {"candidates": [{"upstream": "mock", "model": MODEL}]}},
        "keys": [k],
    }
    if profile == "truecost_secured":
        k.update(models=[MODEL], rpm=10_000_000, tpm=10_000_000_000, expires_at="2099-01-01T00:00:00Z", scopes=["read"])
        doc.update(
            budgets=[{"cost_center": "bench", "period": "day", "limit_usd": "1000000", "hard": True}],
            admin_key_sha256=digest("sk-bench-admin"),
            metrics_token_sha256=digest("bench-metrics"),
        )
    cfg = work / f"{profile}.yaml"
    cfg.write_text(json.dumps(doc))
    return cfg


def soak(tc, tc_url: str, key: str, measured: dict, args) -> dict:
    rate = max(measured["c64"]["rps"], 1.0)
    warm = load(tc_url, key, MODEL, 64, max(10_000 / rate, 1))
    before = rss_mb(tc.pid)
    out = load(tc_url, key, MODEL, 64, args.soak_requests / rate * 1.1)
    after = rss_mb(tc.pid)
    out["ok"] += warm["ok"]
    return {
        "requests": out["ok"] + out["errors"],
        "errors": out["errors"],
        "rss_mb_after_10k": round(before, 1),
        "rss_mb_after_soak": round(after, 1),
        "rss_growth": round(after / before - 1, 4),
        "flat_within_10pct": after <= before * 1.10,
    }


# The direct path to the mock must be clearly faster than anything measured through a gateway, or the
# load generator (or the mock) is the bottleneck and every throughput ratio is an artefact of it.
DIRECT_HEADROOM = 1.5


def load_bottleneck(result: dict) -> str | None:
    """Why the c64 throughput figures say nothing about the gateways, or None when they do."""
    direct = result["direct"]["c64"]["rps"]
    measured = [
        result[k]["c64"]["rps"] for k in ("truecost", "truecost_secured", "litellm") if "c64" in result.get(k, {})
    ]
    fastest = max(measured, default=0.0)
    if direct < DIRECT_HEADROOM * fastest:
        gen = result["direct"]["c64"].get("load_generator", "bench/loadgen.py")
        return (
            f"direct to the mock reached {direct:.0f} requests/s at concurrency 64, under {DIRECT_HEADROOM}x the "
            f"fastest gateway ({fastest:.0f}/s): the load generator ({gen}) or the mock is the bottleneck, so no "
            "throughput ratio is printed. Install wrk (bench/setup_litellm.sh does) and run again."
        )
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--soak-requests", type=int, default=0, help="also check RSS stays flat over this many requests")
    ap.add_argument("--no-litellm", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="truecost-gw-bench-"))
    procs = []
    mock_port, tc_port, ll_port = free_port(), free_port(), free_port()
    procs.append(start([PY, str(ROOT / "tests" / "support" / "fast_mock.py"), str(mock_port), str(args.latency_ms)]))
    mock_url = f"http://127.0.0.1:{mock_port}/v1"
    result: dict = {"benchmark": "gateway_overhead", "mock_latency_ms": args.latency_ms, "model": MODEL}
    try:
        wait_ready(f"http://127.0.0.1:{mock_port}/")
        direct = {
            "c1": load(mock_url + "/chat/completions", None, MODEL, 1, args.duration),
            "c64": load(mock_url + "/chat/completions", None, MODEL, 64, args.duration),
        }
        result["direct"] = direct
        key = "sk-bench"
        for profile in ("truecost", "truecost_secured"):  # side by side in one run: the same mock, the same load
            tc = start(
                [
                    str(Path(PY).parent / "truecost"),
                    "serve",
                    "--config",
                    str(write_config(work, profile, mock_url, key)),
                    "--port",
                    str(tc_port),
                ]
            )
            procs.append(tc)
            wait_ready(f"http://127.0.0.1:{tc_port}/healthz")
            tc_url = f"http://127.0.0.1:{tc_port}/v1/chat/completions"
            result[profile] = measure(profile, tc_url, key, direct, args)
            result[profile]["peak_rss_mb"] = peak_rss_mb(tc.pid)
            if args.soak_requests and profile == "truecost":
                result[profile]["soak"] = soak(tc, tc_url, key, result[profile], args)
            stop(tc)
            procs.remove(tc)
        plain, secured = result["truecost"], result["truecost_secured"]
        result["secured_vs_plain"] = {
            "added_p50_ms_c1": [plain["added_p50_ms_c1"], secured["added_p50_ms_c1"]],
            "added_p50_c1_ratio": round(secured["added_p50_ms_c1"] / max(plain["added_p50_ms_c1"], 0.001), 3),
            "rps_c64_ratio": round(secured["c64"]["rps"] / max(plain["c64"]["rps"], 0.001), 3),
        }
        ll_bin = ROOT / ".venv-litellm" / "bin" / "litellm"
        if args.no_litellm or not ll_bin.exists():
            result["litellm"] = {"skipped": "--no-litellm" if args.no_litellm else "run bench/setup_litellm.sh first"}
        else:
            ll_cfg = work / "litellm.yaml"
            ll_cfg.write_text(
                json.dumps(
                    {
                        "model_list": [
                            {
                                "model_name": MODEL,
                                "litellm_params": {
                                    "model": f"openai/{MODEL}",
                                    "api_base": mock_url,
                                    "api_key": "sk-mock",
                                },
                            }
                        ],
                        "general_settings": {"master_key": "sk-litellm-master"},
                    }
                )
            )
            log = open(work / "litellm.log", "w")
            ll = start([str(ll_bin), "--config", str(ll_cfg), "--port", str(ll_port), "--num_workers", "1"], log=log)
            procs.append(ll)
            wait_ready(f"http://127.0.0.1:{ll_port}/health/liveliness", timeout=180)
            result["litellm"] = measure(
                "litellm", f"http://127.0.0.1:{ll_port}/v1/chat/completions", "sk-litellm-master", direct, args
            )
            result["litellm"]["peak_rss_mb"] = peak_rss_mb(ll.pid)
            result["litellm"]["version"] = subprocess.run(
                [str(ll_bin), "--version"], capture_output=True, text=True
            ).stdout.strip()[-40:]
            t, lt = result["truecost"], result["litellm"]
            result["ratios"] = {
                "rps_c64_truecost_vs_litellm": round(t["c64"]["rps"] / lt["c64"]["rps"], 2),
                "added_p99_c64_litellm_vs_truecost": round(
                    lt["added_p99_ms_c64"] / max(t["added_p99_ms_c64"], 0.001), 2
                ),
                "added_p50_c1_litellm_vs_truecost": round(lt["added_p50_ms_c1"] / max(t["added_p50_ms_c1"], 0.001), 2),
            }
        result["targets"] = {
            "added_p50_c1_ms<=1": result["truecost"]["added_p50_ms_c1"] <= 1.0,
            "secured_added_p50_c1_within_15pct": result["secured_vs_plain"]["added_p50_c1_ratio"] <= 1.15,
        }
        bottleneck = load_bottleneck(result)
        if bottleneck:  # the figures above are the load generator's, not the gateway's: no ratios from them
            result["ratios"] = {"refused": bottleneck}
            result["targets"] = {"refused": bottleneck}
            print(f"WARNING: {bottleneck}", file=sys.stderr)
        elif "ratios" in result:
            result["ratios"]["rps_c64_secured_vs_litellm"] = round(
                result["truecost_secured"]["c64"]["rps"] / result["litellm"]["c64"]["rps"], 2
            )
            result["targets"]["rps_c64>=5x_litellm"] = result["ratios"]["rps_c64_truecost_vs_litellm"] >= 5
            result["targets"]["secured_rps_c64>=10x_litellm"] = result["ratios"]["rps_c64_secured_vs_litellm"] >= 10
            result["targets"]["added_p99_c64<=litellm/5"] = result["ratios"]["added_p99_c64_litellm_vs_truecost"] >= 5
    finally:
        for p in procs:
            stop(p)
        shutil.rmtree(work, ignore_errors=True)  # configs, ledgers and logs of this run
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
