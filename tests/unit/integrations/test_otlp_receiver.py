import gzip
from decimal import Decimal
import json

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from truecost.integrations.otlp_decode import OTLPPayloadError, decode
from truecost.integrations.otlp_receiver import otlp_app, otlp_routes
from truecost.types import Attribution

from .spans import GENAI, json_body, json_span, protobuf_body

PB = {"content-type": "application/x-protobuf"}
JS = {"content-type": "application/json"}


@pytest.fixture
def client(ledger):
    tracker, store = ledger
    return TestClient(otlp_app(tracker)), store


def test_protobuf_and_json_exports_are_priced(client):
    c, store = client
    r = c.post("/v1/traces", content=protobuf_body([json_span(GENAI)], {"service.name": "a"}), headers=PB)
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-protobuf" and r.content == b""
    r = c.post("/v1/traces", content=json_body([json_span(GENAI)]), headers=JS)
    assert r.status_code == 200 and r.json() == {}
    events = store.query()
    assert len(events) == 2 and all(e.cost == Decimal("0.0018") for e in events)
    stats = c.get("/stats").json()
    assert stats["payloads"] == 2 and stats["priced"] == 2


def test_protobuf_and_json_decode_to_the_same_spans():
    spans = [json_span({**GENAI, "flag": True, "ratio": 0.5, "list": ["a", "b"]}, parent="00000000000000aa")]
    a, b = decode(protobuf_body(spans), "application/x-protobuf"), decode(json_body(spans), "application/json")
    fields = ("trace_id", "span_id", "parent_span_id", "name", "kind", "start_ns", "end_ns", "attrs")
    assert [getattr(a[0], f) for f in fields] == [getattr(b[0], f) for f in fields]


def test_gzip_bodies_are_accepted(client):
    c, store = client
    r = c.post(
        "/v1/traces", content=gzip.compress(json_body([json_span(GENAI)])), headers={**JS, "content-encoding": "gzip"}
    )
    assert r.status_code == 200 and len(store.query()) == 1


def test_malformed_payloads_get_a_clear_400_and_lose_nothing_already_accepted(client):
    c, store = client
    assert c.post("/v1/traces", content=json_body([json_span(GENAI)]), headers=JS).status_code == 200
    bad_json = json.dumps(
        {
            "resourceSpans": [
                {"scopeSpans": [{"spans": [json_span(GENAI), {**json_span(GENAI), "startTimeUnixNano": "soon"}]}]}
            ]
        }
    )
    r = c.post("/v1/traces", content=bad_json, headers=JS)
    assert r.status_code == 400
    assert r.json()["code"] == 3 and "spans[1].startTimeUnixNano" in r.json()["message"]
    r = c.post("/v1/traces", content=b"\xff\xfe not protobuf", headers=PB)
    assert r.status_code == 400 and b"protobuf" in r.content  # a google.rpc.Status message
    assert c.post("/v1/traces", content=b"{", headers=JS).status_code == 400
    assert c.post("/v1/traces", content=b"[]", headers=JS).status_code == 400
    assert c.post("/v1/traces", content=b"x", headers={"content-type": "text/plain"}).status_code == 415
    assert c.post("/v1/traces", content=b"x", headers={**JS, "content-encoding": "br"}).status_code == 415
    assert c.post("/v1/traces", content=b"xx", headers={**JS, "content-encoding": "gzip"}).status_code == 400
    assert len(store.query()) == 1  # the first export, and nothing from the bad ones
    assert c.get("/stats").json()["bad_payloads"] == 7


def test_spans_that_cannot_be_steps_are_reported_in_partial_success(client):
    c, store = client
    spans = [json_span(GENAI), json_span(GENAI, trace="0" * 32), json_span(GENAI, span="abcd")]
    r = c.post("/v1/traces", content=json_body(spans), headers=JS)
    assert r.status_code == 200
    partial = r.json()["partialSuccess"]
    assert partial["rejectedSpans"] == "2" and "invalid trace id" in partial["errorMessage"]
    r = c.post("/v1/traces", content=protobuf_body(spans[1:]), headers=PB)
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

    assert ExportTraceServiceResponse.FromString(r.content).partial_success.rejected_spans == 2
    assert len(store.query()) == 1


def test_a_retried_export_is_not_counted_twice(client):
    c, store = client
    body = json_body([json_span(GENAI), json_span(GENAI)])
    for _ in range(3):
        assert c.post("/v1/traces", content=body, headers=JS).status_code == 200
    assert len(store.query()) == 2 and c.get("/stats").json()["duplicates"] == 4


def test_oversized_payloads_are_refused(ledger):
    tracker, store = ledger
    app = Starlette(routes=otlp_routes(tracker, max_body_bytes=100))
    r = TestClient(app).post("/v1/traces", content=json_body([json_span(GENAI)]), headers=JS)
    assert r.status_code == 413 and store.query() == []


def test_authorize_refuses_or_pins_attribution(ledger):
    tracker, store = ledger

    async def authorize(request):
        return Attribution(tenant="acme") if request.headers.get("authorization") == "Bearer good" else None

    c = TestClient(Starlette(routes=otlp_routes(tracker, authorize=authorize)))
    body = json_body([json_span({**GENAI, "tenant.id": "other"})])
    assert c.post("/v1/traces", content=body, headers=JS).status_code == 401
    assert c.post("/v1/traces", content=body, headers={**JS, "authorization": "Bearer bad"}).status_code == 401
    assert c.post("/v1/traces", content=body, headers={**JS, "authorization": "Bearer good"}).status_code == 200
    (e,) = store.query()
    assert e.attribution.tenant == "acme"


def test_a_closed_writer_answers_503_so_the_exporter_retries(catalog):
    from truecost.ledger import BatchWriter, MemoryLedgerStore
    from truecost.tracking import Tracker

    writer = BatchWriter(MemoryLedgerStore())
    writer.close()
    c = TestClient(otlp_app(Tracker(catalog, writer)))
    body = json_body([json_span(GENAI)])
    assert c.post("/v1/traces", content=body, headers=JS).status_code == 503
    stats = c.get("/stats").json()
    assert stats["spans"] == 0  # nothing counted as accepted; a retry is not a duplicate


def test_json_errors_name_the_place():
    with pytest.raises(OTLPPayloadError, match=r"resourceSpans\[0\].scopeSpans\[0\].spans\[0\].attributes\[0\]"):
        decode(
            json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [{"attributes": [{"value": {}}]}]}]}]}).encode(),
            "application/json",
        )


class _StuckStore:
    """A store that never answers in time: what a receiver killed before its batch was stored leaves behind."""

    def append(self, events):
        raise __import__("truecost.errors", fromlist=["LedgerError"]).LedgerError("down")


def test_the_journal_replays_what_a_killed_receiver_accepted_and_counts_nothing_twice(catalog, tmp_path):
    from truecost.integrations.otlp_receiver import OTLPReceiver
    from truecost.ledger import BatchWriter, MemoryLedgerStore
    from truecost.tracking import Tracker

    journal = tmp_path / "journal"
    stuck = BatchWriter(_StuckStore(), max_backoff=60)  # no spool: the batch waits in memory, as in a crash
    first = OTLPReceiver(Tracker(catalog, stuck), journal_dir=journal)
    spans = [json_span(GENAI), json_span(GENAI)]
    first.ingest(json_body(spans), "application/json", pinned=Attribution(tenant="pinned"))
    first.ingest(gzip.compress(json_body([json_span(GENAI)])), "application/json", "gzip")
    assert len(list(journal.glob("otlp-*.bin"))) == 2  # "killed" here: nothing stored

    store = MemoryLedgerStore()  # one of the spans did reach the ledger before the kill
    store.append(first.mapper.map(decode(json_body(spans[:1]), "application/json"), Attribution(tenant="pinned")))
    writer = BatchWriter(store, spool_path=tmp_path / "spool.jsonl")
    second = OTLPReceiver(Tracker(catalog, writer), journal_dir=journal)
    assert second.replay_journal() == 2
    assert writer.flush(30)
    writer.close()
    # the batch with the repeat was refused whole and spooled; the spool replays one by one, skipping repeats
    BatchWriter(store, spool_path=tmp_path / "spool.jsonl").close()
    events = store.query()
    assert len(events) == 3 and len({e.id for e in events}) == 3  # the one already stored is not doubled
    assert sum(1 for e in events if e.attribution.tenant == "pinned") == 2
    second.settle_journal()
    assert list(journal.glob("otlp-*.bin")) == []


def test_a_journaled_payload_is_deleted_once_stored(catalog, tmp_path):
    from truecost.integrations.otlp_receiver import OTLPReceiver
    from truecost.ledger import BatchWriter, MemoryLedgerStore
    from truecost.tracking import Tracker

    writer = BatchWriter(MemoryLedgerStore(), interval=0.01)
    receiver = OTLPReceiver(Tracker(catalog, writer), journal_dir=tmp_path)
    receiver.ingest(json_body([json_span(GENAI)]), "application/json")
    assert writer.flush(30)
    receiver.settle_journal()
    assert list(tmp_path.glob("otlp-*.bin")) == []
    writer.close()


def test_hostile_values_are_rejected_or_trimmed_not_a_500(client):
    c, store = client
    far = json_span(GENAI, start=10**30)
    long_tenant = json_span({**GENAI, "tenant.id": "t" * 5000}, name="n" * 5000)
    r = c.post("/v1/traces", content=json_body([far, long_tenant]), headers=JS)
    assert r.status_code == 200 and r.json()["partialSuccess"]["rejectedSpans"] == "1"
    (e,) = store.query()
    assert len(e.attribution.tenant) == 512 and len(e.name) == 1024
