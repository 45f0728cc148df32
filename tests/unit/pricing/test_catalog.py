import json
from datetime import date, datetime, timezone
from decimal import Decimal

import pytest

from truecost.errors import PriceFileError, UnknownModelError
from truecost.pricing import PriceCatalog, load_price_file
from truecost.pricing.litellm_import import import_litellm_prices

AT = datetime(2026, 11, 20, tzinfo=timezone.utc)


def test_every_bundled_entry_has_a_source_and_a_start_date():
    c = PriceCatalog.bundled()
    assert len(c.entries()) > 50
    for e in c.entries():
        for v in e.versions:
            assert v.source and v.effective_from.tzinfo is not None
            assert all(isinstance(r, Decimal) for r in v.rates.values())


def test_catalog_covers_every_kind():
    kinds = {e.resource.kind for e in PriceCatalog.bundled().entries()}
    assert kinds == {"chat", "embedding", "vector_db", "egress", "storage", "log_ingest", "compute", "cache_service"}


def test_models_used_by_the_shared_data_are_priced():
    c = PriceCatalog.bundled()
    for m in [
        "gpt-4-1106-preview",
        "gpt-3.5-turbo-1106",
        "Mixtral-8x7B-Instruct-v0.1",
        "claude-v2",
        "claude-instant-v1",
        "llama-2-70b-chat",
        "mixtral-8x7b-chat",
        "Yi-34B-Chat",
        "code-llama-instruct-34b-chat",
        "mistral-7b-chat",
        "WizardLM-13B-V1.2",
    ]:
        assert c.price_for(m, datetime(2024, 6, 1, tzinfo=timezone.utc)) is not None, m


def test_dated_snapshot_names_fall_back_to_their_family():
    c = PriceCatalog.bundled()
    assert c.resolve("gpt-4o-mini-2024-07-18").resource.name == "gpt-4o-mini"


def test_unknown_model_names_itself():
    with pytest.raises(UnknownModelError, match="no-such-model"):
        PriceCatalog.bundled().price_for("no-such-model")


def test_user_override_replaces_the_bundled_price(tmp_path):
    f = tmp_path / "ours.yaml"
    f.write_text("""
provider: openai
kind: chat
unit: 1M tokens
entries:
  - name: gpt-6.2-sol
    versions:
      - {effective_from: 2026-01-01, source: "our negotiated contract #42", rates: {input: "1.50", output: "8"}}
  - name: our-private-model
    provider: internal
    versions:
      - {effective_from: 2026-01-01, source: "internal chargeback", rates: {input: "0.5", output: "1"}}
""")
    c = PriceCatalog.load(f)
    assert c.price_for("gpt-6.2-sol", AT).rates["input"] == Decimal("1.50")
    assert c.price_for("our-private-model", AT).source == "internal chargeback"


@pytest.mark.parametrize(
    "body,problem",
    [
        (
            "entries: [{name: x, provider: p, kind: chat, unit: 1M tokens, versions: [{effective_from: 2026-01-01, rates: {input: 1}}]}]",
            "source",
        ),
        (
            "entries: [{name: x, provider: p, kind: chat, unit: 1M tokens, versions: [{source: s, rates: {input: 1}}]}]",
            "effective_from",
        ),
        (
            "entries: [{name: x, provider: p, kind: chat, unit: 1M tokens, versions: [{effective_from: 2026-01-01, source: s, rates: {input: -1}}]}]",
            "non-negative",
        ),
        (
            "entries: [{name: x, provider: p, kind: chat, unit: 1M tokens, versions: [{effective_from: 2026-01-01, source: s, rates: {input: abc}}]}]",
            "must be a number",
        ),
        ("entries: [{name: x, provider: p, kind: spaceship, versions: []}]", "kind must be one of"),
        (
            "entries: [{name: x, provider: p, kind: chat, unit: 1M tokens, versions: [{effective_from: 2026-01-01, source: s, rates: {input: 1}}, {effective_from: 2025-06-01, effective_to: 2026-06-01, source: s, rates: {input: 1}}]}]",
            "overlap",
        ),
        (
            "entries: [{name: x, provider: p, kind: chat, unit: 1M tokens, versions: [{effective_from: yesterday, source: s, rates: {input: 1}}]}]",
            "date",
        ),
        ("{{{{", "not valid YAML"),
    ],
)
def test_malformed_price_file_names_file_and_entry(tmp_path, body, problem):
    f = tmp_path / "bad.yaml"
    f.write_text(body)
    with pytest.raises(PriceFileError, match=problem) as info:
        load_price_file(f)
    assert "bad.yaml" in str(info.value)


def test_litellm_import_converts_per_token_floats_exactly(tmp_path):
    f = tmp_path / "prices.json"
    f.write_text(
        json.dumps(
            {
                "sample_spec": {"input_cost_per_token": 0},
                "acme-chat": {
                    "litellm_provider": "acme",
                    "mode": "chat",
                    "input_cost_per_token": 3e-07,
                    "output_cost_per_token": 1.5e-06,
                    "cache_read_input_token_cost": 3e-08,
                    "input_cost_per_token_above_200k_tokens": 6e-07,
                },
                "acme/embedder": {"litellm_provider": "acme", "mode": "embedding", "input_cost_per_token": 2e-08},
                "image-thing": {"mode": "image_generation", "output_cost_per_image": 0.04},
            }
        )
    )
    entries, skipped = import_litellm_prices(f, effective_from=date(2026, 1, 1))
    c = PriceCatalog(entries)
    v = c.price_for("acme-chat", AT)
    assert v.rates == {"input": Decimal("0.3"), "output": Decimal("1.5"), "cached_input": Decimal("0.03")}
    assert v.tiers[0].rates["input"] == Decimal("0.6")
    assert c.price_for("acme/embedder", AT).resource.kind == "embedding"
    assert skipped == ["image-thing"]
