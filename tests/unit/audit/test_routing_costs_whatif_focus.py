import json
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from truecost.audit import routing_audit as ra
from truecost.audit.costs import events_from_litellm_csv, events_from_otel, render_costs_html, run_cost_audit
from truecost.audit.focus import export_rows, lines_of, read_bill, reconcile
from truecost.audit.sources import AuditInputError, QueryRow
from truecost.audit.whatif import ScenarioError, load_scenario, monthly_stack, run_whatif
from truecost.ledger.events import CostEvent
from truecost.ledger.store import MemoryLedgerStore
from truecost.pricing.catalog import PriceCatalog
from truecost.types import Attribution

ROOT = Path(__file__).resolve().parents[3]
FOCUS_BILL = ROOT / "tests" / "data" / "focus_per_token_ai_model_api.csv"
T0 = datetime(2025, 5, 10, tzinfo=timezone.utc)


def ev(step="generate", cost="0.01", request_id="r1", service="gpt-4o", **kw):
    return CostEvent(
        id=kw.pop("id", f"{request_id}-{step}-{service}"),
        request_id=request_id,
        ts=kw.pop("ts", T0),
        step=step,
        service=service,
        provider=kw.pop("provider", "openai"),
        cost=None if cost is None else Decimal(cost),
        **kw,
    )


# ---------------------------------------------------------------- routing audit


def test_wilson_interval_known_value():
    lo, hi = ra.wilson(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)


def test_routing_audit_costs_by_hand(tmp_path):
    sample = [QueryRow(str(i), "what is my balance") for i in range(10)]
    labels = {str(i): "small" if i < 6 else "large" for i in range(8)} | {"8": "skip"}
    r = ra.run_routing_audit(sample, labels, ra.Prices("gpt-4o-mini", "gpt-4o", 1000, 100, 1000), "test")
    assert (r["labelled"], r["skipped"], r["unlabelled"]) == (8, 1, 1)
    assert r["small_capable_share"] == 0.75 and r["recommendation"]["level"] == "build"
    st = {s["strategy"]: s for s in r["strategies"]}
    small = Decimal("1000") * Decimal("0.15") / 10**6 + 100 * Decimal("0.60") / 10**6
    large = Decimal("1000") * Decimal("2.50") / 10**6 + 100 * Decimal("10.00") / 10**6
    assert st["always large"]["cost_per_request_usd"] == large
    assert st["ideal router"]["cost_per_request_usd"] == Decimal("0.75") * small + Decimal("0.25") * large
    assert st["always small"]["misrouted_share"] == 0.25
    assert st["rules router"]["small_share"] == 1.0  # short lookups all go small under the rules


def test_routing_audit_without_labels_is_an_error():
    with pytest.raises(AuditInputError, match="no usable labels"):
        ra.run_routing_audit([QueryRow("1", "x")], {"1": "skip"}, ra.Prices("gpt-4o-mini", "gpt-4o", 10, 10, 1), "t")


def test_labels_csv_join_and_bad_label(tmp_path):
    sample = [QueryRow("a", "one"), QueryRow("b", "two")]
    f = tmp_path / "l.csv"
    f.write_text("text,label\none,small\ntwo,L\n")
    assert ra.labels_from_csv(f, sample) == {"a": "small", "b": "large"}
    f.write_text("text,label\none,maybe\n")
    with pytest.raises(AuditInputError, match="unknown label 'maybe'"):
        ra.labels_from_csv(f, sample)
    f.write_text("question,label\n")
    with pytest.raises(AuditInputError, match="'id' or 'text' column"):
        ra.labels_from_csv(f, sample)


def test_interactive_labeller_resumes_from_its_file(tmp_path):
    sample = [QueryRow(str(i), f"q{i}") for i in range(4)]
    store = ra.LabelFile(tmp_path / "labels.csv")
    keys = iter("sxlq")  # x is ignored, q stops
    got = ra.label_interactively(sample, store, lambda: next(keys), lambda *a: None)
    assert got == {"0": "small", "1": "large"}
    shown = []
    keys = iter("kl")
    got = ra.label_interactively(sample, store, lambda: next(keys), lambda i, n, r: shown.append(r.id))
    assert shown == ["2", "3"] and got == {"0": "small", "1": "large", "2": "skip", "3": "large"}


def test_judge_labels_parse_replies():
    replies = iter(["SMALL", "large.", "I am not sure"])
    sample = [QueryRow(str(i), "x") for i in range(3)]
    assert ra.labels_from_judge(sample, lambda p: next(replies)) == {"0": "small", "1": "large", "2": "skip"}


# ---------------------------------------------------------------- costs


def test_cost_audit_by_hand():
    store = MemoryLedgerStore()
    a = Attribution(cost_center="cc1", feature="faq")
    store.append(
        [
            ev("generate", "0.006", attribution=a),
            ev("egress", "0.002", service="aws/inter_region", attribution=a),
            ev("log_storage", "0.002", service="s3", attribution=a),
            ev("generate", None, request_id="r2", service="mystery", details={"unknown_reason": "no price"}),
        ]
    )
    r = run_cost_audit(store)
    assert r["total_usd"] == Decimal("0.010") and r["requests"] == 2
    assert r["generation_share"] == pytest.approx(0.6)
    cats = {c["category"]: c["share"] for c in r["categories"]}
    assert cats["data movement"] == pytest.approx(0.2) and cats["observability"] == pytest.approx(0.2)
    assert r["unknown_requests"] == 1 and r["unknown_request_ids"] == ["r2"]
    assert [(x["key"], x["events"]) for x in r["by_source"]] == [("unknown", 4)]  # built by hand: no source
    assert "By source" in render_costs_html(r)


def test_otel_import_prices_tokens_when_no_cost(tmp_path):
    def attr(k, v):
        key = "intValue" if isinstance(v, int) else "stringValue"
        return {"key": k, "value": {key: str(v) if key == "intValue" else v}}

    spans = [
        {
            "traceId": "t1",
            "spanId": "s1",
            "name": "chat",
            "startTimeUnixNano": "1747000000000000000",
            "endTimeUnixNano": "1747000000500000000",
            "attributes": [
                attr("gen_ai.request.model", "gpt-4o"),
                attr("gen_ai.usage.input_tokens", 1000),
                attr("gen_ai.usage.output_tokens", 100),
                attr("truecost.attribution.team", "t"),
            ],
        },
        {"traceId": "t1", "spanId": "s2", "name": "noise", "attributes": []},
    ]
    f = tmp_path / "otel.json"
    f.write_text(json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": spans}]}]}))
    events, skipped = events_from_otel(f, PriceCatalog.bundled())
    assert len(events) == 1 and skipped["no_cost_or_tokens"] == 1
    assert events[0].cost == Decimal("0.0035") and events[0].latency_ms == pytest.approx(500)
    assert events[0].attribution.team == "t" and events[0].source == "otlp"


def test_litellm_csv_needs_its_columns(tmp_path):
    f = tmp_path / "spend.csv"
    f.write_text("request_id,model\nx,gpt-4o\n")
    with pytest.raises(AuditInputError, match="missing column.*spend"):
        events_from_litellm_csv(f)
    f.write_text(
        'request_id,model,spend,total_tokens,startTime,metadata\nx,gpt-4o,0.5,10,2025-05-01T00:00:00Z,"{""feature"": ""faq""}"\n'
    )
    events, _ = events_from_litellm_csv(f)
    assert events[0].cost == Decimal("0.5") and events[0].attribution.feature == "faq" and events[0].source == "litellm"


# ---------------------------------------------------------------- what-if


def test_seed_scenario_log_storage_by_hand():
    sc = load_scenario(ROOT / "examples" / "whatif_support_bot.yaml")
    stack = monthly_stack(sc, PriceCatalog.bundled())
    # 100k req/day * 50 KB = 5 GB/day -> 150 GB/month, x2 replicas = 300 GB; ingest $0.50/GB = $150;
    # stored at steady state: 300/30 * 90 days = 900 GB * $0.023 = $20.70
    assert stack["log_storage"] == Decimal("170.70")
    assert stack["generate"] == Decimal(3_000_000) * (1800 * Decimal("2.5") + 250 * Decimal("10")) / 10**6
    r = run_whatif(sc)
    assert r["sensitivity"][0]["swing_usd"] >= r["sensitivity"][-1]["swing_usd"]
    assert r["alternative"]["serve"] == "self_hosted"
    assert float(sum(s["monthly_usd"] for s in r["stack"])) == pytest.approx(float(r["monthly_total_usd"]), abs=0.05)


def test_scenario_with_unknown_model_names_it(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("requests_per_day: 10\ngeneration: {model: gpt-99}\n")
    with pytest.raises(ScenarioError, match="gpt-99"):
        run_whatif(load_scenario(f))
    f.write_text("hello: 1\n")
    with pytest.raises(ScenarioError, match="requests_per_day"):
        load_scenario(f)


# ---------------------------------------------------------------- FOCUS


def solora_event(request_id, input_tokens, output_tokens, ts=T0):
    cost = Decimal(input_tokens) * Decimal("0.000005") + Decimal(output_tokens) * Decimal("0.000025")
    return CostEvent(
        id=request_id,
        request_id=request_id,
        ts=ts,
        step="generate",
        provider="solora",
        service="solora-saturn-4.8",
        quantity=Decimal(input_tokens + output_tokens),
        unit="tokens",
        cost=cost,
        details={
            "tokens": {"input": input_tokens, "output": output_tokens},
            "unit_prices": {"input": "0.000005", "output": "0.000025"},
        },
    )


def test_lines_of_split_add_up_exactly():
    e = solora_event("r", 1234, 567)
    lines = lines_of(e)
    assert {ln.component for ln in lines} == {"input", "output"}
    assert sum(ln.cost for ln in lines) == e.cost


def test_reconcile_against_the_focus_example():
    bill = read_bill(FOCUS_BILL)  # May 2025: 8.4M in ($42), 2.1M out ($52.50)
    store = MemoryLedgerStore()
    store.append([solora_event(f"r{i}", 840_000, 200_000, T0.replace(day=1 + i)) for i in range(10)])
    r = reconcile(bill, store)
    rows = {x["token_class"]: x for x in r["rows"]}
    assert rows["input"]["status"] == "matched" and rows["input"]["billed_usd"] == Decimal("42.00")
    assert rows["output"]["status"] == "unattributed"
    assert rows["output"]["difference_usd"] == Decimal("2.50")  # 100k output tokens the ledger never saw
    assert r["totals"]["unattributed"] == Decimal("2.50") and r["totals"]["billed"] == Decimal("94.50")


def test_bill_in_the_wrong_format_names_the_missing_column(tmp_path):
    f = tmp_path / "bill.csv"
    f.write_text("Cost,Service\n1,x\n")
    with pytest.raises(AuditInputError, match="ChargePeriodStart.*EffectiveCost or BilledCost"):
        read_bill(f)


def test_focus_export_round_trips_through_reconcile(tmp_path):
    import csv

    events = [solora_event(f"r{i}", 1000 * (i + 1), 100, T0.replace(hour=i)) for i in range(5)]
    events.append(ev("egress", "0.25", service="aws/inter_region", unit="GB"))
    rows = list(export_rows(events))
    assert sum(Decimal(r["BilledCost"]) for r in rows) == sum(e.cost for e in events)
    path = tmp_path / "focus.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    store = MemoryLedgerStore()
    store.append(events)
    r = reconcile(read_bill(path), store)
    assert {x["status"] for x in r["rows"]} == {"matched"} and r["matched_share"] == 1.0


def test_rules_curve_spans_always_large_to_always_small():
    texts = [
        "hi",
        "what is my balance",
        "please analyze and derive step by step the optimal tax strategy " * 3,
        "def f(x): return x",
        "card lost",
        "compute the integral of x^2 step by step",
    ]
    sample = [QueryRow(str(i), t) for i, t in enumerate(texts)]
    labels = ["small", "small", "large", "large", "small", "large"]
    r = ra.run_routing_audit(
        sample, dict(zip(map(str, range(6)), labels)), ra.Prices("gpt-4o-mini", "gpt-4o", 100, 100, 1), "t"
    )
    curve = r["rules_curve"]
    assert curve[0]["small_share"] == 0 and curve[-1]["small_share"] == 1
    assert curve[-1]["misrouted_share"] == 0.5  # everything small: the three large-needed ones are misrouted
    assert [p["small_share"] for p in curve] == sorted(p["small_share"] for p in curve)
    assert curve[0]["cost_per_request_usd"] == r["prices"]["large_cost_per_request_usd"]
