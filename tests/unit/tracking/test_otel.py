from tests.support.requires import need
from decimal import Decimal


from truecost.ledger import MemoryLedgerStore
from truecost.pricing import PriceCatalog
from truecost.tracking import Tracker

sdk_trace = need("opentelemetry.sdk.trace", "otel")
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402


def test_one_span_per_step_with_genai_and_cost_attributes():
    exporter = InMemorySpanExporter()
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    store = MemoryLedgerStore()
    tracker = Tracker(PriceCatalog.bundled(), lambda e: store.append([e]), otel_tracer=provider.get_tracer("t"))
    with tracker.request(cost_center="cc1", tenant="acme") as req:
        with req.step("generate") as s:
            s.tokens(
                "gpt-6-luna",
                {"prompt_tokens": 1000, "completion_tokens": 100, "prompt_tokens_details": {"cached_tokens": 400}},
            )
        with req.step("egress") as s:
            s.egress(10**9, "us-east-1", "eu-west-1")
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"truecost.request", "truecost.step.generate", "truecost.step.egress"}
    gen = spans["truecost.step.generate"].attributes
    assert gen["gen_ai.provider.name"] == "openai" and gen["gen_ai.request.model"] == "gpt-6-luna"
    assert gen["gen_ai.usage.input_tokens"] == 1000 and gen["gen_ai.usage.output_tokens"] == 100
    assert gen["gen_ai.usage.cache_read.input_tokens"] == 400
    # 600 x 0.10/1M + 400 x 0.01/1M + 100 x 0.50/1M = 0.00006 + 0.000004 + 0.00005 = 0.000114
    assert Decimal(gen["truecost.cost_usd"]) == Decimal("0.000114")
    assert gen["truecost.attribution.cost_center"] == "cc1"
    root = spans["truecost.request"]
    assert spans["truecost.step.egress"].parent.span_id == root.context.span_id
    # ledger and traces join on ids
    events = store.query()
    assert {e.trace_id for e in events} == {f"{root.context.trace_id:032x}"}
    assert events[0].span_id == f"{spans['truecost.step.generate'].context.span_id:016x}"
