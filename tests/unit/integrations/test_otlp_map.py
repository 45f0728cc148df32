import gc
import json
import tracemalloc
from decimal import Decimal

import pytest

from truecost.errors import ConfigError
from truecost.integrations.otlp_config import parse_config
from truecost.integrations.otlp_map import MapStats, SpanMapper
from truecost.types import Attribution

from .spans import GENAI, record, trace_id


def _map(tracker, spans, config=None, pinned=None):
    stats = MapStats()
    events = SpanMapper(tracker, parse_config(config)).map(spans, pinned, stats)
    return events, stats


def test_a_genai_span_is_a_priced_generate_step(ledger):
    tracker, _ = ledger
    span = record(
        GENAI, name="chat tc-chat", kind=3, resource={"service.name": "rag", "deployment.environment.name": "prod"}
    )
    (e,), stats = _map(tracker, [span])
    assert e.step == "generate" and e.service == "tc-chat" and e.provider == "openai"
    assert e.cost == Decimal("0.0018")  # 1000 x 1/1M + 200 x 4/1M
    assert e.request_id == span.trace_id and e.span_id == span.span_id and e.trace_id == span.trace_id
    assert e.id == f"{span.start_ns:016x}{span.trace_id[:8]}{span.span_id}"  # the same span, the same id
    assert e.source == "otlp" and e.details["tokens"]["input"] == 1000
    assert e.attribution.environment == "prod" and dict(e.attribution.tags) == {"service": "rag"}
    assert e.latency_ms == 10.0 and e.ts.year == 2026
    assert (stats.priced, stats.unpriced) == (1, 0)


def test_cache_reads_and_writes_are_priced_at_their_own_rates(ledger):
    tracker, _ = ledger
    attrs = {**GENAI, "gen_ai.usage.cache_read.input_tokens": 600, "gen_ai.usage.cache_creation.input_tokens": 100}
    (e,), _ = _map(tracker, [record(attrs)])
    # 300 x 1 + 600 x 0.1 + 100 x 1.25 + 200 x 4 (per 1M)
    assert e.cost == Decimal("0.001285")


def test_anthropic_span_and_embedding_span(ledger):
    tracker, _ = ledger
    claude = record(
        {
            "gen_ai.provider.name": "anthropic",
            "gen_ai.request.model": "tc-claude",
            "gen_ai.usage.input_tokens": 26000,
            "gen_ai.usage.output_tokens": 800,
            "gen_ai.usage.cache_read.input_tokens": 20000,
            "gen_ai.usage.cache_creation.input_tokens": 5000,
        }
    )
    embed = record(
        {"openinference.span.kind": "EMBEDDING", "embedding.model_name": "tc-embed", "llm.token_count.total": 5000}
    )
    (c, e), _ = _map(tracker, [claude, embed])
    # 1000 x 3 + 20000 x 0.3 + 5000 x 3.75 + 800 x 15 (per 1M)
    assert c.cost == Decimal("0.03975")
    assert e.step == "embed" and e.cost == Decimal("0.0001")


def test_unpriced_spans_are_recorded_with_a_reason_never_zero(ledger):
    tracker, _ = ledger
    spans = [
        record({"gen_ai.request.model": "no-such-model-xyz", "gen_ai.usage.input_tokens": 5}),
        record({"gen_ai.request.model": "tc-chat"}),
        record({"gen_ai.system": "ollama", "gen_ai.request.model": "llama3", "gen_ai.usage.input_tokens": 5}),
        record({"gen_ai.request.model": "tc-chat", "gen_ai.usage.input_tokens": -3}),
        record({"http.request.method": "GET"}, name="GET /x", kind=3),
    ]
    events, stats = _map(tracker, spans)
    assert len(events) == 5 and all(e.cost is None for e in events)
    reasons = [e.details["unknown_reason"] for e in events]
    assert "no-such-model-xyz" in reasons[0]
    assert "no token counts" in reasons[1]
    assert "self-hosted" in reasons[2]
    assert "negative" in reasons[3]
    assert "no rule prices span 'GET /x'" in reasons[4] and events[4].step == "other"
    assert stats.unpriced == 5 and sum(stats.reasons.values()) == 5


def test_container_spans_are_counted_not_recorded(ledger):
    tracker, _ = ledger
    spans = [
        record({"http.route": "/chat"}, kind=2),
        record({"openinference.span.kind": "CHAIN"}),
        record({"traceloop.span.kind": "workflow"}),
        record(GENAI),
    ]
    events, stats = _map(tracker, spans)
    assert [e.step for e in events] == ["generate"] and stats.skipped == 3


def test_default_pinecone_rule_prices_read_units(ledger):
    tracker, _ = ledger
    config = {
        "rules": [
            {
                "match": {"db.system.name": "pinecone"},
                "step": "vector_search",
                "price": {
                    "resource": "tc-vdb",
                    "component": "read_unit",
                    "kind": "vector_db",
                    "quantity_from": "db.pinecone.usage.read_units",
                },
            }
        ]
    }
    (e,), _ = _map(tracker, [record({"db.system.name": "pinecone", "db.pinecone.usage.read_units": 5}, kind=3)], config)
    assert e.step == "vector_search" and e.cost == Decimal("0.00008") and e.unit == "read units"
    (m,), _ = _map(tracker, [record({"db.system.name": "pinecone"}, kind=3)], config)
    assert m.cost is None and "no db.pinecone.usage.read_units attribute" in m.details["unknown_reason"]


def test_egress_compute_cost_from_and_name_rules(ledger):
    tracker, _ = ledger
    config = {
        "rules": [
            {
                "match": {"kind": "client", "server.address": "*.eu-west-1.amazonaws.com"},
                "step": "egress",
                "egress": {
                    "bytes_from": ["http.request.body.size", "http.response.body.size"],
                    "src_region": "us-east-1",
                    "dst_region_from": "cloud.region",
                },
            },
            {"match": {"name": "pii.*"}, "step": "sanitize", "compute": True},
            {"match": {"name": "judge"}, "step": "validate", "cost_from": "app.cost_usd"},
            {"match": {"name": "noise*"}, "skip": True},
        ]
    }
    spans = [
        record(
            {
                "server.address": "s3.eu-west-1.amazonaws.com",
                "http.request.body.size": 400_000_000,
                "http.response.body.size": 100_000_000,
            },
            kind=3,
            resource={"cloud.region": "eu-west-1"},
        ),
        record({}, name="pii.scrub", duration_ms=500),
        record({"app.cost_usd": "0.0042"}, name="judge"),
        record({}, name="noise.tick"),
    ]
    events, stats = _map(tracker, spans, config)
    egress, pii, judge = events
    assert egress.step == "egress" and egress.region == "us-east-1->eu-west-1"
    assert egress.quantity == Decimal("0.5") and egress.details["bytes"] == 500_000_000
    assert egress.cost is not None and egress.cost > 0  # the bundled inter-region price
    assert pii.step == "sanitize" and pii.cost == Decimal("0.00005")  # 0.5 s x 0.36/h on one vCPU
    assert judge.step == "validate" and judge.cost == Decimal("0.0042")
    assert stats.skipped == 1


def test_user_rules_come_before_the_genai_mapping(ledger):
    tracker, _ = ledger
    config = {"rules": [{"match": {"gen_ai.system": "ollama"}, "step": "generate", "compute": "acme/tc-cpu"}]}
    (e,), _ = _map(
        tracker,
        [
            record(
                {"gen_ai.system": "ollama", "gen_ai.request.model": "llama3", "gen_ai.usage.input_tokens": 5},
                duration_ms=1000,
            )
        ],
        config,
    )
    assert e.cost == Decimal("0.0001") and e.unit == "vCPU-seconds"


def test_attribution_is_per_trace_from_spans_resource_and_association_properties(ledger):
    tracker, _ = ledger
    t = trace_id()
    spans = [
        record(GENAI, trace=t, resource={"service.name": "rag"}),
        record({"traceloop.association.properties.tenant.id": "acme", "team": "search"}, trace=t, name="root", kind=2),
    ]
    events, _ = _map(tracker, spans)
    (e,) = events
    assert (e.attribution.tenant, e.attribution.team) == ("acme", "search")
    config = {"attribution": {"cost_center": ["app.cc"], "feature": "app.feature"}, "tags": {"svc": "service.name"}}
    (f,), _ = _map(
        tracker, [record({**GENAI, "app.cc": "cc-7", "app.feature": "faq"}, resource={"service.name": "bot"})], config
    )
    assert (f.attribution.cost_center, f.attribution.feature, dict(f.attribution.tags)) == (
        "cc-7",
        "faq",
        {"svc": "bot"},
    )


def test_attribution_carries_to_later_batches_of_the_same_trace(ledger):
    tracker, _ = ledger
    mapper = SpanMapper(tracker, parse_config(None))
    t = trace_id()
    mapper.map([record({**GENAI, "tenant.id": "acme"}, trace=t)])
    (later,) = mapper.map([record(GENAI, trace=t)])
    assert later.attribution.tenant == "acme"


def test_pinned_attribution_overrides_what_spans_claim(ledger):
    tracker, _ = ledger
    pinned = Attribution(tenant="key-tenant", cost_center="cc-key")
    (e,), _ = _map(tracker, [record({**GENAI, "tenant.id": "someone-else", "team": "t1"})], pinned=pinned)
    assert (e.attribution.tenant, e.attribution.cost_center, e.attribution.team) == ("key-tenant", "cc-key", "t1")


def test_spans_exported_by_truecost_keep_their_cost(ledger):
    tracker, _ = ledger
    own = record({"truecost.step": "egress", "truecost.cost_usd": "0.25", "truecost.request_id": "r1"})
    root = record({"truecost.request_id": "r1"}, name="truecost.request")
    events, stats = _map(tracker, [own, root])
    assert [(e.step, e.cost) for e in events] == [("egress", Decimal("0.25"))] and stats.skipped == 1


def test_error_status_and_unmatched_policies(ledger):
    tracker, _ = ledger
    (e,), _ = _map(tracker, [record(GENAI, status=2)])
    assert e.outcome == "error"
    events, stats = _map(tracker, [record({"x": 1})], {"unmatched": "skip"})
    assert events == [] and stats.skipped == 1
    (c,), _ = _map(tracker, [record({"x": 1}, duration_ms=2000)], {"unmatched": "compute"})
    assert c.cost == Decimal("0.0002")


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"rules": [{"match": {}, "step": "generate"}]}, "non-empty"),
        ({"rules": [{"match": {"a": "b"}, "step": "nope"}]}, "step"),
        ({"rules": [{"match": {"kind": "sideways"}}]}, "kind"),
        ({"rules": [{"match": {"a": "b"}, "price": {"resource": "x"}}]}, "resource and component"),
        ({"rules": [{"match": {"a": "b"}, "compute": True, "cost_from": "c"}]}, "one of"),
        ({"rules": [{"match": {"a": "b"}, "egress": {"bytes_from": "n", "src_region": "a"}}]}, "dst_region"),
        ({"unmatched": "drop"}, "unmatched"),
        ({"attribution": {"colour": "x"}}, "not an attribution field"),
        ({"surprise": 1}, "unknown key"),
    ],
)
def test_config_is_validated_with_the_place_named(bad, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(bad)


def test_an_export_file_maps_like_the_receiver(ledger, tmp_path):
    import json

    from truecost.integrations.otlp_decode import OTLPPayloadError
    from truecost.integrations.otlp_map import map_export_file

    from .spans import json_doc, json_span

    tracker, _ = ledger
    lines = tmp_path / "traces.jsonl"
    lines.write_text("\n".join(json.dumps(json_doc([json_span(GENAI), json_span({"x": 1})])) for _ in range(2)))
    events, stats = map_export_file(lines, tracker)
    assert [e.cost for e in events if e.step == "generate"] == [Decimal("0.0018")] * 2
    assert (stats.spans, stats.priced, stats.unpriced) == (4, 2, 2)
    skipped, _ = map_export_file(lines, tracker, parse_config({"unmatched": "skip"}))
    assert len(skipped) == 2
    bad = tmp_path / "bad.json"
    bad.write_text('{"resourceSpans": [{"scopeSpans": [{"spans": [{"kind": "sideways"}]}]}]}')
    with pytest.raises(OTLPPayloadError, match="bad.json: .*unknown span kind"):
        map_export_file(bad, tracker)


def test_long_model_provider_and_tier_names_are_neither_kept_in_memory_nor_stored(ledger):
    # a span's model, provider and service tier were memo keys (the mapper's, the catalog's, the price tables')
    # and text in details, uncut: a sender with distinct long names grew the process by MBs per span
    tracker, _ = ledger
    mapper = SpanMapper(tracker, parse_config(None))

    def spans(i: int) -> list:
        big = f"{i}-" + "x" * 200_000
        return [
            record({**GENAI, "gen_ai.request.model": big}),
            record({**GENAI, "openai.request.service_tier": big}),
            record({"gen_ai.operation.name": "chat", "gen_ai.provider.name": big}),
        ]

    mapper.map(spans(-1))  # the first call's one-off allocations are not what is measured
    gc.collect()
    tracemalloc.start()
    try:
        for i in range(20):
            events = mapper.map(spans(i))
            assert [e.cost for e in events] == [None, None, None]
            for e in events:
                assert len(json.dumps(e.details)) < 2_000 and len(e.service or "") <= 512
        del events
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert retained < 1_000_000  # 60 spans with 200 KB names each: ~20 MB kept before


@pytest.mark.parametrize("amount", ["1e30", "1e999999", "1e-999999", "2000000"])
def test_a_cost_a_span_states_out_of_range_is_unknown_not_a_ledger_poison(ledger, amount):
    # the exporting SDK's truecost.cost_usd and a cost_from rule take the amount from the span: finite and not
    # negative was all that was checked, so one span could state $1e30 -- past what a ledger column holds, a
    # batch that could never be stored (and its batch-mates with it), or a total that overflows every sum
    tracker, _ = ledger
    config = {"rules": [{"match": {"name": "judge"}, "step": "validate", "cost_from": "app.cost_usd"}]}
    spans = [
        record({"truecost.step": "generate", "truecost.cost_usd": amount}),
        record({"app.cost_usd": amount}, name="judge"),
        record({"truecost.step": "generate", "truecost.cost_usd": "999999.5"}),
    ]
    events, stats = _map(tracker, spans, config)
    assert [e.cost for e in events] == [None, None, Decimal("999999.5")]
    assert all("out of range" in e.details["unknown_reason"] for e in events[:2])
    assert stats.unpriced == 2
