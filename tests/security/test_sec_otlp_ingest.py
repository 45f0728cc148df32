"""POST /v1/traces on a real gateway, attacked: who pays for a span, whose spans count, hostile payloads.

The trust model is the one the chat endpoints have (tests/security/test_sec_attribution.py): a key's cost
center, team, tenant and environment are authoritative and a client may set one only when the key lists it in
``allow_attribution_headers`` -- a span or resource attribute is a client claim exactly as a header is.
"""

from __future__ import annotations

import json
import secrets
import time

import pytest

from tests.security.harness import Gateway, http
from tests.security.sec_config import UPSTREAM_KEY, key, main_config
from tests.unit.integrations.spans import json_body, json_span

GENAI = {
    "gen_ai.system": "openai",
    "gen_ai.request.model": "gpt-6-luna",
    "gen_ai.usage.input_tokens": 1000,
    "gen_ai.usage.output_tokens": 100,
}
# every attribution field, claimed by the client in a span and in its resource
CLAIMS = {
    "truecost.attribution.cost_center": "cc-other",
    "truecost.attribution.team": "t-other",
    "tenant.id": "globex",
    "deployment.environment.name": "prod-victim",
}
JS = {"content-type": "application/json"}


def _post(gw, who: str, body: bytes, **headers):
    with http() as c:
        return c.post(
            gw.url + "/v1/traces", content=body, headers={**JS, "authorization": f"Bearer {key(who)}", **headers}
        )


def _trace() -> str:
    return secrets.token_hex(16)


def _rows_of(gw, trace: str, at_least: int = 1) -> list[dict]:
    return gw.wait_rows("trace_id = ? AND source = 'otlp'", (trace,), at_least=at_least, settle=0.3)


def test_spans_cannot_set_the_attribution_fields_a_key_leaves_unset(gw):
    # "noscope" pins cost_center and tenant; it names no team or environment and allows no header
    trace = _trace()
    spans = [
        json_span({**GENAI, **CLAIMS, "app.feature": "f-otlp", "enduser.id": "u-1"}, trace=trace),
        json_span({**GENAI, "truecost.attribution.feature": "f-otlp"}, trace=trace),
    ]
    r = _post(gw, "noscope", json_body(spans, resource={"team.name": "t-resource", "cost.center": "cc-res"}))
    assert r.status_code == 200, r.text
    rows = _rows_of(gw, trace, at_least=2)
    assert len(rows) == 2
    for row in rows:
        assert (row["cost_center"], row["tenant"]) == ("cc-noscope", "initech")  # the key's
        assert row["team"] is None and row["environment"] is None  # the key names none: no span may name one
        assert row["feature"] == "f-otlp"  # as x-truecost-feature: always the client's to describe
    assert {row["user_id"] for row in rows} == {"u-1"}


def test_a_field_the_key_allows_may_come_from_a_span_and_no_other(gw):
    # "trusted" allows cost_center (as a header may set it), nothing else
    trace = _trace()
    r = _post(gw, "trusted", json_body([json_span({**GENAI, **CLAIMS, "cost_center": "cc-elsewhere"}, trace=trace)]))
    assert r.status_code == 200, r.text
    (row,) = _rows_of(gw, trace)
    assert row["cost_center"] == "cc-other"  # the first configured key that states one (truecost.attribution.*)
    assert (row["team"], row["tenant"], row["environment"]) == ("t-trusted", "tn-trusted", None)


def test_a_key_cannot_drop_or_steer_another_keys_spans_by_reusing_their_ids(gw):
    # ids travel in traceparent headers: a service called by another key's service knows them
    trace, span = _trace(), secrets.token_hex(8)
    first = json_span({**GENAI, "gen_ai.usage.input_tokens": 1, "app.feature": "f-planted"}, trace=trace, span=span)
    assert _post(gw, "other", json_body([first])).status_code == 200
    assert _rows_of(gw, trace)  # the planted span is stored (to "other", who sent it)
    real = json_span(GENAI, trace=trace, span=span, start=int(first["startTimeUnixNano"]))
    later = json_span(GENAI, trace=trace)  # a second span of the victim's in the same trace, no feature given
    assert _post(gw, "plain", json_body([real, later])).status_code == 200
    rows = _rows_of(gw, trace, at_least=3)
    mine = [r for r in rows if r["cost_center"] == "cc-plain"]
    assert len(mine) == 2, rows  # neither of the victim's spans was taken for a repeat of the planted one
    assert all(r["feature"] is None for r in mine)  # nor given the feature another key claimed for the trace
    assert [r["cost_center"] for r in rows if r["span_id"] == span].count("cc-other") == 1


def test_the_same_key_retrying_an_export_is_still_counted_once(gw):
    trace = _trace()
    body = json_body([json_span(GENAI, trace=trace), json_span(GENAI, trace=trace)])
    for _ in range(3):
        assert _post(gw, "plain", body).status_code == 200
    assert len(_rows_of(gw, trace, at_least=2)) == 2


def _deep_kvlist(depth: int) -> str:
    inner = '{"stringValue": "x"}'
    for _ in range(depth):
        inner = '{"kvlistValue": {"values": [{"key": "k", "value": ' + inner + "}]}}"
    return inner


def test_hostile_json_is_a_400_and_loses_nothing(gw):
    trace = _trace()
    good = json_span(GENAI, trace=trace)
    deep_attr = json.dumps(json_span({}, trace=trace)).replace(
        '"attributes": []', '"attributes": [{"key": "a", "value": ' + _deep_kvlist(5000) + "}]"
    )
    huge_int = {**json_span({}, trace=trace), "startTimeUnixNano": "9" * 5000}
    hostile = [
        b"[" * 200_000 + b"]" * 200_000,
        b'{"resourceSpans": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        ('{"resourceSpans": [{"scopeSpans": [{"spans": [' + deep_attr + "]}]}]}").encode(),
        json_body([huge_int]),
        b'{"resourceSpans": [], "n": ' + b"9" * 5000 + b"}",  # a JSON number Python will not convert
        json_body([{**json_span({}, trace=trace), "startTimeUnixNano": "\u00b2"}]),  # a digit int() refuses
        json_body([{**json_span({}, trace=trace), "endTimeUnixNano": "--5"}]),
    ]
    assert _post(gw, "plain", json_body([good])).status_code == 200
    for body in hostile:
        r = _post(gw, "plain", body)
        assert r.status_code == 400, (r.status_code, r.text[:200])
        assert r.json()["code"] == 3 and "Traceback" not in r.text
    assert gw.alive() and len(_rows_of(gw, trace)) == 1
    assert "RecursionError" not in gw.log_text() and "Exceeds the limit" not in gw.log_text()


def test_ids_that_are_not_hex_are_rejected_not_stored(gw):
    trace = _trace()
    spans = [
        json_span(GENAI, trace="<script>alert(1)</script>xxxxxxx"),
        json_span(GENAI, trace=trace, span="../../etc/passwd"),
        json_span(GENAI, trace="é" * 32),
        json_span(GENAI, trace=trace),
    ]
    r = _post(gw, "plain", json_body(spans))
    assert r.status_code == 200 and r.json()["partialSuccess"]["rejectedSpans"] == "3", r.text
    assert len(_rows_of(gw, trace)) == 1
    assert gw.rows("trace_id LIKE '%script%' OR span_id LIKE '%/%' OR trace_id LIKE '%é%'") == []


def test_client_text_is_cut_short_in_reasons_services_and_the_receivers_memory(gw):
    # a span's name and attributes reach the unknown-cost reason, the service column and the receiver's
    # per-reason counters: a few MB each would be kept per event and held in memory for ever
    trace, big = _trace(), "N" * 2_000_000
    spans = [
        json_span({}, trace=trace, name=big),
        json_span({"gen_ai.system": "openai", "gen_ai.request.model": "M" * 500_000}, trace=trace),
        json_span({"truecost.step": "generate", "truecost.cost_usd": "x" * 500_000, "truecost.service": "S" * 500_000}),
    ]
    spans[2]["traceId"] = trace
    assert _post(gw, "plain", json_body(spans)).status_code == 200
    rows = _rows_of(gw, trace, at_least=3)
    assert len(rows) == 3
    for row in rows:
        assert len(json.dumps(row["details"])) < 4_000, str(row["details"])[:300]
        assert row["service"] is None or len(row["service"]) <= 512
        assert len(row["name"] or "") <= 1024


@pytest.fixture(scope="module")
def tight_gw(tmp_path_factory, upstream, refused_port, shared_upstream):
    """A gateway whose keys may each export 5 spans a minute to /v1/traces."""
    tmp = tmp_path_factory.mktemp("ingest-limited")
    config = main_config(tmp, upstream.url, refused_port, shared_upstream.url)
    config["limits"]["ingest_spans_per_minute"] = 5
    g = Gateway(tmp, config, env={"TC_UPSTREAM_KEY": UPSTREAM_KEY}, name="ingest-limited")
    try:
        g.start()
        yield g
    finally:
        g.stop()


def test_a_key_flooding_traces_is_held_to_its_spans_per_minute_and_nothing_over_it_is_written(tight_gw):
    trace = _trace()
    first = json_body([json_span(GENAI, trace=trace) for _ in range(3)])
    assert _post(tight_gw, "plain", first).status_code == 200
    rows = _rows_of(tight_gw, trace, at_least=3)
    flood = json_body([json_span(GENAI, trace=trace) for _ in range(3)])  # 3 more: over the 5 a minute
    r = _post(tight_gw, "plain", flood)
    assert r.status_code == 429, r.text
    assert 1 <= int(r.headers["retry-after"]) <= 60  # exporters wait and retry (OTLP/HTTP's 429 contract)
    assert r.json()["code"] == 8 and "5 spans per minute" in r.json()["message"]
    time.sleep(0.5)
    assert len(tight_gw.rows("trace_id = ? AND source = 'otlp'", (trace,))) == len(rows) == 3  # nothing written
    # another key has its own allowance; one export bigger than a minute's allowance is a 400, never retried
    assert _post(tight_gw, "other", json_body([json_span(GENAI, trace=_trace())])).status_code == 200
    big = _post(tight_gw, "noscope", json_body([json_span(GENAI, trace=_trace()) for _ in range(6)]))
    assert big.status_code == 400 and "export smaller batches" in big.json()["message"]
