"""A price file of made-up resources (so tests do not move when the bundled data does), and builders of
OTLP payloads (JSON documents, protobuf bytes) and span records."""

from __future__ import annotations

import itertools
import json
from datetime import datetime, timezone

from truecost.integrations.otlp_decode import SpanRecord

PRICES = """
provider: mixed
entries:
  - {name: tc-chat, provider: openai, kind: chat, unit: 1M tokens, versions: [{effective_from: 2026-01-01, source: test,
     rates: {input: "1", cached_input: "0.1", cache_write: "1.25", output: "4"}}]}
  - {name: tc-claude, provider: anthropic, kind: chat, unit: 1M tokens, versions: [{effective_from: 2026-01-01,
     source: test, rates: {input: "3", cached_input: "0.3", cache_write_5m: "3.75", output: "15"}}]}
  - {name: tc-embed, provider: openai, kind: embedding, unit: 1M tokens, versions: [{effective_from: 2026-01-01,
     source: test, rates: {input: "0.02"}}]}
  - {name: tc-vdb, provider: acme, kind: vector_db, units: {read_unit: 1M read units}, versions: [{effective_from: 2026-01-01,
     source: test, rates: {read_unit: "16"}}]}
  - {name: tc-cpu, provider: acme, kind: compute, unit: hour, attributes: {vcpus: 1}, versions: [{effective_from: 2026-01-01,
     source: test, rates: {instance: "0.36"}}]}
"""


def write_prices(folder) -> str:
    path = folder / "test-prices.yaml"
    path.write_text(PRICES)
    return str(path)


T0 = int(datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc).timestamp() * 1e9)
_ids = itertools.count(1)


def trace_id(n: int | None = None) -> str:
    return f"{n if n is not None else next(_ids):032x}"


def span_id(n: int | None = None) -> str:
    return f"{n if n is not None else next(_ids):016x}"


def record(
    attrs: dict,
    *,
    name: str = "span",
    kind: int = 1,
    resource: dict | None = None,
    trace: str | None = None,
    parent: str | None = None,
    duration_ms: float = 10.0,
    status: int = 0,
    scope: str = "test",
) -> SpanRecord:
    return SpanRecord(
        trace or trace_id(),
        span_id(),
        parent,
        name,
        kind,
        T0,
        T0 + int(duration_ms * 1e6),
        status,
        "",
        attrs,
        resource or {},
        scope,
    )


def _value(v) -> dict:
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v}
    if isinstance(v, list):
        return {"arrayValue": {"values": [_value(x) for x in v]}}
    return {"stringValue": str(v)}


def attributes(d: dict) -> list:
    return [{"key": k, "value": _value(v)} for k, v in d.items()]


def json_span(
    attrs: dict,
    *,
    name: str = "span",
    trace: str | None = None,
    span: str | None = None,
    kind: int = 3,
    start: int = T0,
    duration_ms: float = 10.0,
    parent: str | None = None,
) -> dict:
    out = {
        "traceId": trace or trace_id(),
        "spanId": span or span_id(),
        "name": name,
        "kind": kind,
        "startTimeUnixNano": str(start),
        "endTimeUnixNano": str(start + int(duration_ms * 1e6)),
        "attributes": attributes(attrs),
        "status": {},
    }
    if parent:
        out["parentSpanId"] = parent
    return out


def json_doc(spans: list[dict], resource: dict | None = None, scope: str = "test") -> dict:
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": attributes(resource or {})},
                "scopeSpans": [{"scope": {"name": scope}, "spans": spans}],
            }
        ]
    }


def json_body(spans: list[dict], resource: dict | None = None) -> bytes:
    return json.dumps(json_doc(spans, resource)).encode()


def protobuf_body(spans: list[dict], resource: dict | None = None) -> bytes:
    """The same document as protobuf (via the protobuf library's JSON mapping of OTLP)."""
    from google.protobuf import json_format
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    import base64
    import copy

    doc = copy.deepcopy(json_doc(spans, resource))
    for rs in doc["resourceSpans"]:  # OTLP/JSON ids are hex; protobuf's JSON mapping wants base64
        for ss in rs["scopeSpans"]:
            for s in ss["spans"]:
                for k in ("traceId", "spanId", "parentSpanId"):
                    if k in s:
                        import base64

                        s[k] = base64.b64encode(bytes.fromhex(s[k])).decode()
    return json_format.ParseDict(doc, ExportTraceServiceRequest()).SerializeToString()


GENAI = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "tc-chat",
    "gen_ai.usage.input_tokens": 1000,
    "gen_ai.usage.output_tokens": 200,
}
