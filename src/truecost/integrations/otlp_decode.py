"""OTLP/HTTP trace payloads (protobuf or JSON, optionally gzip) -> flat span records.

A payload that cannot be read at all raises ``OTLPPayloadError`` (the receiver answers 400
and stores nothing from it). A span that decodes but cannot be a ledger step (no valid trace
or span id, an end before its start) is *rejected*: counted and reported back in the OTLP
``partial_success``, never silently dropped.
"""

from __future__ import annotations

import json
import zlib
from typing import Any, Iterator

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
SPAN_KINDS = ("unspecified", "internal", "server", "client", "producer", "consumer")
_KIND_NAMES = {f"SPAN_KIND_{k.upper()}": i for i, k in enumerate(SPAN_KINDS)}
_STATUS_NAMES = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}
MAX_DECODED_BYTES = 64 * 1024 * 1024
_HEX = frozenset("0123456789abcdef")
_MAX_DIGITS = 100  # far beyond int64; a time out of range is the span's problem(), not the payload's


class OTLPPayloadError(ValueError):
    """The body is not an OTLP trace export this receiver can read (-> HTTP 400, or 415)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class SpanRecord:
    """One span, flattened: ids as lowercase hex, times in ns, attributes as a plain dict."""

    __slots__ = (
        "trace_id",
        "span_id",
        "parent_span_id",
        "name",
        "kind",
        "start_ns",
        "end_ns",
        "status_code",
        "status_message",
        "attrs",
        "resource",
        "scope",
    )

    def __init__(
        self,
        trace_id: str,
        span_id: str,
        parent_span_id: str | None,
        name: str,
        kind: int,
        start_ns: int,
        end_ns: int,
        status_code: int,
        status_message: str,
        attrs: dict,
        resource: dict,
        scope: str,
    ) -> None:
        self.trace_id, self.span_id, self.parent_span_id = trace_id, span_id, parent_span_id
        self.name, self.kind, self.start_ns, self.end_ns = name, kind, start_ns, end_ns
        self.status_code, self.status_message = status_code, status_message
        self.attrs, self.resource, self.scope = attrs, resource, scope

    def get(self, key: str) -> Any:
        """A span attribute, else a resource attribute."""
        v = self.attrs.get(key)
        return self.resource.get(key) if v is None else v

    def problem(self) -> str | None:
        """Why this span cannot be a step (None when it can)."""
        if len(self.trace_id) != 32 or self.trace_id == "0" * 32 or not _HEX.issuperset(self.trace_id):
            return "invalid trace id"
        if len(self.span_id) != 16 or self.span_id == "0" * 16 or not _HEX.issuperset(self.span_id):
            return "invalid span id"
        parent = self.parent_span_id
        if parent is not None and (len(parent) != 16 or not _HEX.issuperset(parent)):
            return "invalid parent span id"
        if self.start_ns <= 0:
            return "no start time"
        if self.end_ns >= 1 << 63:
            return "time out of range"
        if self.end_ns < self.start_ns:
            return "ends before it starts"
        return None


def decompress(body: bytes, encoding: str | None, limit: int = MAX_DECODED_BYTES) -> bytes:
    enc = (encoding or "identity").strip().lower()
    if enc in ("", "identity"):
        return body
    if enc not in ("gzip", "deflate"):
        raise OTLPPayloadError(f"unsupported Content-Encoding {encoding!r}: send identity, gzip or deflate", 415)
    d = zlib.decompressobj(31 if enc == "gzip" else 15)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as exc:
        raise OTLPPayloadError(f"body is not valid {enc} data ({exc})") from None
    if len(out) > limit:
        raise OTLPPayloadError(f"decompressed body is larger than {limit} bytes", 413)
    return out


def decode(body: bytes, content_type: str | None) -> list[SpanRecord]:
    ctype = (content_type or "").split(";", 1)[0].strip().lower()
    if ctype == PROTOBUF:
        return decode_protobuf(body)
    if ctype == JSON:
        return decode_json(body)
    raise OTLPPayloadError(f"unsupported Content-Type {content_type!r}: send {PROTOBUF} or {JSON}", 415)


# -- protobuf ---------------------------------------------------------------------------
def _request_class():
    try:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    except ImportError:  # pragma: no cover - exercised only without the extra
        from truecost.errors import MissingExtraError

        raise MissingExtraError("the OTLP receiver (protobuf)", "pip install 'truecost[integrations]'") from None
    return ExportTraceServiceRequest


def _pb_value(v: Any) -> Any:
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [_pb_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _pb_value(kv.value) for kv in v.kvlist_value.values}
    if which == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, which)


def _pb_attrs(kvs: Any) -> dict:
    out = {}
    for kv in kvs:  # the two common kinds inline: this loop runs for every attribute of every span
        v = kv.value
        which = v.WhichOneof("value")
        if which == "string_value":
            out[kv.key] = v.string_value
        elif which == "int_value":
            out[kv.key] = v.int_value
        else:
            out[kv.key] = _pb_value(v)
    return out


def decode_protobuf(body: bytes) -> list[SpanRecord]:
    from google.protobuf.message import DecodeError

    cls = _request_class()
    try:
        req = cls.FromString(body)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise OTLPPayloadError(f"body is not an OTLP ExportTraceServiceRequest in protobuf ({exc})") from None
    out: list[SpanRecord] = []
    append = out.append
    for rs in req.resource_spans:
        resource = _pb_attrs(rs.resource.attributes)
        for ss in rs.scope_spans:
            scope = ss.scope.name
            for s in ss.spans:
                parent = s.parent_span_id
                append(
                    SpanRecord(
                        s.trace_id.hex(),
                        s.span_id.hex(),
                        parent.hex() if parent else None,
                        s.name,
                        s.kind,
                        s.start_time_unix_nano,
                        s.end_time_unix_nano,
                        s.status.code,
                        s.status.message,
                        _pb_attrs(s.attributes),
                        resource,
                        scope,
                    )
                )
    return out


# -- JSON (OTLP/JSON: lowerCamelCase keys, hex ids, 64-bit integers as strings or numbers) ----
def _where(path: list, what: str) -> OTLPPayloadError:
    return OTLPPayloadError(f"{''.join(str(p) for p in path)}: {what}")


def _list(obj: dict, key: str, path: list) -> list:
    v = obj.get(key)
    if v is None:
        return []
    if not isinstance(v, list):
        raise _where(path + [f".{key}"], "must be a list")
    return v


def _obj(v: Any, path: list) -> dict:
    if not isinstance(v, dict):
        raise _where(path, "must be an object")
    return v


def _int(v: Any, path: list, default: int = 0) -> int:
    if v is None:
        return default
    if isinstance(v, bool):
        raise _where(path, "must be an integer")
    if isinstance(v, int):
        return v
    if isinstance(v, str) and len(v) <= _MAX_DIGITS and v.isascii() and v.removeprefix("-").isdigit():
        return int(v)
    shown = repr(v) if len(v if isinstance(v, str) else repr(v)) <= 40 else repr(v)[:40] + "..."
    raise _where(path, f"must be an integer, got {shown}")


def _json_value(v: Any, path: list) -> Any:
    if not isinstance(v, dict):
        raise _where(path, "an attribute value must be an AnyValue object")
    if "stringValue" in v:
        return v["stringValue"]
    if "intValue" in v:
        return _int(v["intValue"], path + [".intValue"])
    if "doubleValue" in v:
        d = v["doubleValue"]
        if isinstance(d, bool) or not isinstance(d, (int, float, str)):
            raise _where(path + [".doubleValue"], "must be a number")
        try:
            return float(d)
        except ValueError:
            raise _where(path + [".doubleValue"], f"must be a number, got {d!r}") from None
    if "boolValue" in v:
        return bool(v["boolValue"])
    if "arrayValue" in v:
        return [
            _json_value(x, path + [f"[{i}]"]) for i, x in enumerate(_list(_obj(v["arrayValue"], path), "values", path))
        ]
    if "kvlistValue" in v:
        return _json_attrs(_list(_obj(v["kvlistValue"], path), "values", path), path)
    if "bytesValue" in v:
        return str(v["bytesValue"])
    return None


def _json_attrs(kvs: list, path: list) -> dict:
    out = {}
    for i, kv in enumerate(kvs):
        p = path + [f".attributes[{i}]"]
        kv = _obj(kv, p)
        key = kv.get("key")
        if not isinstance(key, str):
            raise _where(p, "an attribute needs a string key")
        out[key] = _json_value(kv.get("value", {}), p + [".value"])
    return out


def _hex(v: Any, path: list) -> str:
    if v is None or v == "":
        return ""
    if not isinstance(v, str):
        raise _where(path, "an id must be a hex string")
    return v.lower()


def _kind(v: Any, path: list) -> int:
    if isinstance(v, str) and not (v.isascii() and v.isdigit()):
        if v not in _KIND_NAMES:
            raise _where(path, f"unknown span kind {v!r}")
        return _KIND_NAMES[v]
    return _int(v, path)


def _json_spans(doc: dict) -> Iterator[SpanRecord]:
    for i, rs in enumerate(_list(doc, "resourceSpans", [])):
        p = [f"resourceSpans[{i}]"]
        rs = _obj(rs, p)
        res = _obj(rs.get("resource") or {}, p + [".resource"])
        resource = _json_attrs(_list(res, "attributes", p), p + [".resource"])
        for j, ss in enumerate(_list(rs, "scopeSpans", p) or _list(rs, "instrumentationLibrarySpans", p)):
            q = p + [f".scopeSpans[{j}]"]
            ss = _obj(ss, q)
            scope = _obj(ss.get("scope") or ss.get("instrumentationLibrary") or {}, q + [".scope"]).get("name") or ""
            for k, s in enumerate(_list(ss, "spans", q)):
                r = q + [f".spans[{k}]"]
                s = _obj(s, r)
                status = _obj(s.get("status") or {}, r + [".status"])
                code = status.get("code", 0)
                named = isinstance(code, str) and not (code.isascii() and code.isdigit())
                code = _STATUS_NAMES.get(code, 0) if named else _int(code, r)
                name = s.get("name", "")
                if not isinstance(name, str):
                    raise _where(r + [".name"], "must be a string")
                yield SpanRecord(
                    _hex(s.get("traceId"), r + [".traceId"]),
                    _hex(s.get("spanId"), r + [".spanId"]),
                    _hex(s.get("parentSpanId"), r + [".parentSpanId"]) or None,
                    name,
                    _kind(s.get("kind", 0), r + [".kind"]),
                    _int(s.get("startTimeUnixNano"), r + [".startTimeUnixNano"]),
                    _int(s.get("endTimeUnixNano"), r + [".endTimeUnixNano"]),
                    code,
                    str(status.get("message") or ""),
                    _json_attrs(_list(s, "attributes", r), r),
                    resource,
                    str(scope),
                )


def decode_json(body: bytes) -> list[SpanRecord]:
    try:
        doc = json.loads(body)
    except RecursionError:
        raise OTLPPayloadError("body is nested too deeply") from None
    except ValueError as exc:  # not JSON, not UTF-8, or a number with thousands of digits
        raise OTLPPayloadError(f"body is not JSON ({str(exc)[:200]})") from None
    if not isinstance(doc, dict):
        raise OTLPPayloadError("body must be a JSON object with a resourceSpans list")
    try:
        return list(_json_spans(doc))
    except RecursionError:
        raise OTLPPayloadError("an attribute value is nested too deeply") from None
