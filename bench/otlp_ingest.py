"""OTLP ingest: spans per second decoded, priced and stored, into SQLite and PostgreSQL, beside the
gateway's own event rate.

Synthetic but realistic traces, 5 spans each: the app's server span (a container: counted, not a
step), an embedding call, a Pinecone query with read units, a generation and a validating
generation (GenAI semantic conventions, token counts varied), exported as OTLP/HTTP protobuf
payloads of ``--batch`` spans (what a Collector or the SDK's batch processor sends), built before
the clock starts.

* ``in_process``: ``OTLPReceiver.ingest`` on each payload (decode, de-duplicate, map, price, hand to
  the BatchWriter), timed until the writer has stored every event;
* ``http``: ``truecost collect`` as its own process (``--workers`` 1, then 2 processes sharing the
  port), payloads POSTed over loopback by this process (``--senders`` at a time), timed until its
  ledger holds every event;
* ``gateway``: ``truecost serve`` against the raw-ASGI mock at concurrency 64 (bench/gateway_overhead.py's
  setup): ledger events written per second.

Prints JSON. Target: >= 20,000 spans/s into SQLite. The 1-minute load average is printed with the
figures (the machine is shared; figures taken at a load above ~3 are low).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))
from _common import emit  # noqa: E402

PY = sys.executable
SPANS_PER_TRACE = 5
TARGET = 20_000


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_payloads(n_spans: int, batch: int, seed: int = 0) -> list[bytes]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    rnd = random.Random(seed)
    t0 = time.time_ns() - 3_600 * 10**9

    def kv(k, v):
        return KeyValue(key=k, value=AnyValue(int_value=v) if isinstance(v, int) else AnyValue(string_value=v))

    out = []
    traces = max(batch // SPANS_PER_TRACE, 1)
    for p in range(max(n_spans // (traces * SPANS_PER_TRACE), 1)):
        req = ExportTraceServiceRequest()
        rs = req.resource_spans.add()
        rs.resource.attributes.extend(
            [
                kv("service.name", f"svc-{p % 3}"),
                kv("deployment.environment.name", "prod"),
                kv("tenant.id", f"tenant-{p % 40}"),
            ]
        )
        ss = rs.scope_spans.add()
        ss.scope.name = "bench"
        for t in range(traces):
            trace = rnd.randbytes(16)
            root = rnd.randbytes(8)
            start = t0 + (p * traces + t) * 1_000_000
            spans = [
                ("POST /ask", 2, None, []),
                (
                    "embeddings text-embedding-3-small",
                    3,
                    root,
                    [
                        kv("gen_ai.operation.name", "embeddings"),
                        kv("gen_ai.provider.name", "openai"),
                        kv("gen_ai.request.model", "text-embedding-3-small"),
                        kv("gen_ai.usage.input_tokens", rnd.randint(5, 60)),
                    ],
                ),
                (
                    "pinecone.query",
                    3,
                    root,
                    [kv("db.system.name", "pinecone"), kv("db.pinecone.usage.read_units", rnd.randint(1, 10))],
                ),
                (
                    "chat gpt-4o-mini",
                    3,
                    root,
                    [
                        kv("gen_ai.operation.name", "chat"),
                        kv("gen_ai.provider.name", "openai"),
                        kv("gen_ai.request.model", "gpt-4o-mini"),
                        kv("gen_ai.response.model", "gpt-4o-mini-2024-07-18"),
                        kv("gen_ai.usage.input_tokens", rnd.randint(800, 4000)),
                        kv("gen_ai.usage.output_tokens", rnd.randint(50, 400)),
                        kv("gen_ai.usage.cache_read.input_tokens", rnd.choice((0, 512, 1024))),
                    ],
                ),
                (
                    "chat gpt-4o-mini validate",
                    3,
                    root,
                    [
                        kv("gen_ai.operation.name", "chat"),
                        kv("gen_ai.provider.name", "openai"),
                        kv("gen_ai.request.model", "gpt-4o-mini"),
                        kv("gen_ai.usage.input_tokens", rnd.randint(300, 900)),
                        kv("gen_ai.usage.output_tokens", rnd.randint(1, 20)),
                    ],
                ),
            ]
            for i, (name, kind, parent, attrs) in enumerate(spans):
                s = ss.spans.add()
                s.trace_id, s.span_id = trace, (root if i == 0 else rnd.randbytes(8))
                if parent:
                    s.parent_span_id = parent
                s.name, s.kind = name, kind
                s.start_time_unix_nano, s.end_time_unix_nano = start + i * 1000, start + i * 1000 + 5_000_000
                s.attributes.extend(attrs)
        out.append(req.SerializeToString())
    return out


def _store(kind: str, folder: Path, pg_uri: str | None):
    if kind == "sqlite":
        from truecost.ledger.sqlite import SQLiteLedgerStore

        return SQLiteLedgerStore(folder / "otlp.db")
    from truecost.ledger.postgres import PostgresLedgerStore

    return PostgresLedgerStore(pg_uri, schema=f"otlp_{os.getpid()}_{int(time.time())}")


def in_process(payloads: list[bytes], kind: str, folder: Path, pg_uri: str | None) -> dict:
    from truecost.integrations.otlp_receiver import OTLPReceiver
    from truecost.ledger import BatchWriter
    from truecost.pricing.catalog import PriceCatalog
    from truecost.tracking.tracker import Tracker

    store = _store(kind, folder, pg_uri)
    writer = BatchWriter(store, batch_size=5_000, interval=0.05, spool_path=folder / f"{kind}.spool.jsonl")
    receiver = OTLPReceiver(Tracker(PriceCatalog.bundled(), writer))
    receiver.ingest(payloads[0], "application/x-protobuf")  # warm: catalog look-ups, first batch
    assert writer.flush(600)
    base, spans0 = store.count(), receiver.totals.spans
    load = load_average()
    t0, c0 = time.perf_counter(), time.process_time()
    for body in payloads[1:]:
        receiver.ingest(body, "application/x-protobuf")
    assert writer.flush(600)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    spans, events = receiver.totals.spans - spans0, store.count() - base
    writer.close()
    store.close()
    return {
        "spans_per_s": round(spans / elapsed),
        "events_per_s": round(events / elapsed),
        "spans": spans,
        "events": events,
        "unpriced": receiver.totals.unpriced,
        "load_1m": load,
        # CPU time of this process (all threads: decode, price, store) per span, whatever else runs:
        # what one uncontended core would sustain
        "cpu_us_per_span": round(cpu / spans * 1e6, 1),
        "one_core_spans_per_s": round(spans / cpu),
    }


def over_http(payloads: list[bytes], kind: str, folder: Path, pg_uri: str | None, senders: int, workers: int) -> dict:
    import httpx
    from gateway_overhead import start, stop, wait_ready
    from tests.support.mock_upstream import free_port

    port = free_port()
    schema = f"collect_{os.getpid()}_{workers}"
    ledger = str(folder / f"collect-{kind}-{workers}.db") if kind == "sqlite" else pg_uri
    cfg = folder / f"collect-{kind}-{workers}.yaml"
    cfg.write_text(
        json.dumps(
            {
                "listen": f"127.0.0.1:{port}",
                "ledger": ledger,
                "spool": str(folder / f"c-{kind}-{workers}.spool"),
                **({"ledger_schema": schema} if kind == "postgres" else {}),
            }
        )
    )
    proc = start([str(Path(PY).parent / "truecost"), "collect", "--config", str(cfg), "--workers", str(workers)])
    url = f"http://127.0.0.1:{port}"

    def stored() -> int:  # the ledger itself: with several workers, each answers /stats for itself only
        if kind == "sqlite":
            from truecost.ledger.sqlite import SQLiteLedgerStore

            store = SQLiteLedgerStore(ledger)
        else:
            from truecost.ledger.postgres import PostgresLedgerStore

            store = PostgresLedgerStore(pg_uri, schema=schema)
        try:
            return store.count()
        finally:
            store.close()

    try:
        wait_ready(f"{url}/healthz")
        headers = {"content-type": "application/x-protobuf"}
        with httpx.Client(timeout=120) as c:
            assert c.post(f"{url}/v1/traces", content=payloads[0], headers=headers).status_code == 200
        per_payload = None
        while not per_payload:
            per_payload = stored()
            time.sleep(0.05)
        expected = per_payload * len(payloads)
        load = load_average()
        cpu0 = sum(cpu_seconds(p) for p in _tree(proc.pid))
        t0 = time.perf_counter()
        queue = list(payloads[1:])
        lock = threading.Lock()
        errors: list[int] = []

        def sender():
            with httpx.Client(timeout=120) as s:
                while True:
                    with lock:
                        if not queue:
                            return
                        body = queue.pop()
                    r = s.post(f"{url}/v1/traces", content=body, headers=headers)
                    if r.status_code != 200:
                        errors.append(r.status_code)

        threads = [threading.Thread(target=sender) for _ in range(senders)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        deadline = time.time() + 600
        while stored() < expected and time.time() < deadline:
            time.sleep(0.02)
        elapsed = time.perf_counter() - t0
        cpu = sum(cpu_seconds(p) for p in _tree(proc.pid)) - cpu0
        traces_per_payload = per_payload // (SPANS_PER_TRACE - 1)  # every trace gives 4 events of its 5 spans
        spans = (len(payloads) - 1) * traces_per_payload * SPANS_PER_TRACE
        events = stored() - per_payload
        return {
            "spans_per_s": round(spans / elapsed),
            "events_per_s": round(events / elapsed),
            "spans": spans,
            "events": events,
            "http_errors": len(errors),
            "senders": senders,
            "workers": workers,
            "load_1m": load,
            # the receiver processes' own CPU (HTTP, decode, price, store) per span
            "receiver_cpu_us_per_span": round(cpu / spans * 1e6, 1),
        }
    finally:
        stop(proc)


def _tree(pid: int) -> list[int]:
    """A process and its children (uvicorn's workers)."""
    out = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for c in children:
        out += _tree(int(c))
    return out


def gateway_rate(folder: Path, duration: float) -> dict:
    from gateway_overhead import load, start, stop, wait_ready, write_config
    from tests.support.mock_upstream import free_port

    from truecost.ledger.sqlite import SQLiteLedgerStore

    mock_port, gw_port = free_port(), free_port()
    procs = [start([PY, str(ROOT / "tests" / "support" / "fast_mock.py"), str(mock_port), "0"])]
    try:
        wait_ready(f"http://127.0.0.1:{mock_port}/")
        cfg = write_config(folder, "truecost", f"http://127.0.0.1:{mock_port}/v1", "sk-bench")
        procs.append(start([str(Path(PY).parent / "truecost"), "serve", "--config", str(cfg), "--port", str(gw_port)]))
        wait_ready(f"http://127.0.0.1:{gw_port}/healthz")
        url = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
        load(url, "sk-bench", "gpt-4o-mini", 8, 1.0)  # warm up
        load_1m = load_average()
        out = load(url, "sk-bench", "gpt-4o-mini", 64, duration)
        stop(procs.pop())  # the gateway flushes its ledger on shutdown
        store = SQLiteLedgerStore(folder / "truecost.db")
        events = store.count()
        store.close()
        per_request = events / max(out["ok"], 1)
        return {
            "requests_per_s": out["rps"],
            "events_per_request": round(per_request, 2),
            "events_per_s": round(out["rps"] * per_request),
            "load_generator": out.get("load_generator", "loadgen"),
            "load_1m": load_1m,
        }
    finally:
        for p in procs:
            stop(p)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spans", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=1_000, help="spans per OTLP payload")
    ap.add_argument("--senders", type=int, default=2, help="concurrent HTTP senders")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="receiver processes (one run each)")
    ap.add_argument("--no-postgres", action="store_true")
    ap.add_argument("--no-http", action="store_true")
    ap.add_argument("--no-gateway", action="store_true")
    ap.add_argument("--gateway-seconds", type=float, default=10.0)
    args = ap.parse_args()
    payloads = make_payloads(args.spans, args.batch)
    result: dict = {
        "benchmark": "otlp_ingest",
        "spans": args.spans,
        "spans_per_payload": args.batch,
        "spans_per_trace": SPANS_PER_TRACE,
        "events_per_trace": SPANS_PER_TRACE - 1,
        "load_1m_at_start": load_average(),
        "cpus": os.cpu_count(),
    }
    with tempfile.TemporaryDirectory(prefix="truecost-otlp-bench-") as d:
        folder = Path(d)
        pg = None
        kinds = ["sqlite"]
        if not args.no_postgres:
            from truecost.servers.postgres import EmbeddedPostgres

            pg = EmbeddedPostgres(folder / "pgdata")
            pg.start()
            kinds.append("postgres")
        try:
            uri = pg.uri if pg else None
            result["in_process"] = {k: in_process(payloads, k, folder, uri) for k in kinds}
            if not args.no_http:
                result["http"] = {
                    f"{k}_workers_{w}": over_http(payloads, k, folder, uri, args.senders, w)
                    for k in kinds
                    for w in args.workers
                }
        finally:
            if pg:
                pg.stop()
        if not args.no_gateway:
            result["gateway"] = gateway_rate(folder, args.gateway_seconds)
    best = max(
        [v["spans_per_s"] for k, v in result.get("http", {}).items() if k.startswith("sqlite")]
        + [result["in_process"]["sqlite"]["spans_per_s"]]
    )
    result.update(target_spans_per_s=TARGET, meets_target=best >= TARGET, load_1m_at_end=load_average())
    emit(result)


if __name__ == "__main__":
    main()
