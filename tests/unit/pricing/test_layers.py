"""Layers: genai-prices beneath truecost's data beneath LiteLLM imports beneath the user's files;
`prices show` names the layer, `prices update` saves a dated snapshot and prints the diff (no
network: a file URL or an injected fetcher), `prices check` lists what a log cannot price."""

import json
import sqlite3
from datetime import date, datetime, timezone
from decimal import Decimal

import pytest
from click.testing import CliRunner

from truecost.cli.prices import prices
from truecost.pricing import LAYERS, PriceCatalog, price_tokens
from truecost.pricing.genai_layer import dump_snapshot, plain
from truecost.pricing.litellm_import import import_litellm
from truecost.pricing.snapshots import latest, update
from truecost.types import TokenUsage

AT = datetime(2026, 11, 20, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def catalog():
    return PriceCatalog.bundled()


def test_layer_order_is_explicit_and_every_price_is_dated_and_sourced(catalog):
    assert LAYERS == ("genai-prices", "truecost", "litellm", "user")
    origins = {v.origin for e in catalog.entries() for v in e.versions}
    assert origins == {"genai-prices", "truecost"}
    for e in catalog.entries():
        for v in e.versions:
            assert v.source and v.effective_from.tzinfo is not None
            assert v.origin == "genai-prices" or not v.undated  # only the source data may be undated
    # the genai-prices layer prices what truecost's own files no longer hand-write
    assert catalog.price_for("gpt-4o-mini", AT).origin == "genai-prices"
    assert catalog.price_for("pinecone-serverless", AT).origin == "truecost"


def test_truecost_history_sits_above_genai_prices_without_dropping_it(catalog):
    # claude-sonnet-5.5: truecost's cache-read $0.20 until 2026-10-07, genai-prices' $0.10 after.
    before = catalog.price_for("claude-sonnet-5-5", datetime(2026, 9, 15, tzinfo=timezone.utc))
    after = catalog.price_for("claude-sonnet-5-5", AT)
    assert (before.origin, before.rates["cached_input"]) == ("truecost", Decimal("0.20"))
    assert (after.origin, after.rates["cached_input"]) == ("genai-prices", Decimal("0.1"))


def test_litellm_import_keeps_every_tier_batch_and_tier_cache_price(tmp_path):
    f = tmp_path / "prices.json"
    f.write_text(
        json.dumps(
            {
                "acme-chat": {
                    "litellm_provider": "acme",
                    "mode": "chat",
                    "input_cost_per_token": 1e-06,
                    "output_cost_per_token": 5e-06,
                    "cache_read_input_token_cost": 1e-07,
                    "cache_creation_input_token_cost": 1.25e-06,
                    "input_cost_per_token_above_128k_tokens": 2e-06,
                    "input_cost_per_token_above_272k_tokens": 3e-06,
                    "cache_read_input_token_cost_above_272k_tokens": 3e-07,
                    "input_cost_per_token_batches": 5e-07,
                    "output_cost_per_token_batches": 2.5e-06,
                    "input_cost_per_token_flex": 5e-07,
                    "input_cost_per_audio_token": 3.2e-05,
                    "output_cost_per_second": 0.01,
                },
                "acme/acme-chat": {"litellm_provider": "acme", "mode": "chat", "input_cost_per_token": 1e-06},
            }
        )
    )
    result = import_litellm(f, effective_from=date(2026, 1, 1))
    (entry,) = result.entries  # 'acme-chat' and 'acme/acme-chat': one model, one entry
    assert entry.aliases == ("acme/acme-chat",)
    v = entry.versions[0]
    assert [t.above_prompt_tokens for t in v.tiers] == [128_000, 272_000]
    assert v.tiers[1].rates == {"input": Decimal("3"), "cached_input": Decimal("0.3")}
    assert v.rates["cache_write"] == Decimal("1.25") and v.rates["input_audio"] == Decimal("32")
    batch = next(x for x in v.variants if x.when == {"processing": "batch"})
    assert batch.rates == {"input": Decimal("0.5"), "output": Decimal("2.5")}
    assert result.unmapped == {"acme-chat": ["output_cost_per_second"]}  # said, not dropped silently
    # batch: 100,000 in x 0.5/1M = 0.05; 100,000 out x 2.5/1M = 0.25 -> 0.3
    assert price_tokens(v, TokenUsage(input=100_000, output=100_000), batch=True).cost == Decimal("0.3")


def test_litellm_layer_never_drops_bundled_history_or_tiers(tmp_path, catalog):
    f = tmp_path / "prices.json"
    f.write_text(
        json.dumps(
            {
                "gpt-6.2-sol": {
                    "litellm_provider": "openai",
                    "mode": "chat",
                    "input_cost_per_token": 2.2e-06,
                    "output_cost_per_token": 1.1e-05,
                }
            }
        )
    )
    c = PriceCatalog.bundled()
    c.add(import_litellm(f, effective_from=date(2026, 12, 1)).entries)
    before = c.price_for("gpt-6.2-sol", AT)
    assert before.origin == "truecost" and before.tiers  # the bundled version and its tier survive
    assert c.price_for("gpt-6.2-sol", datetime(2026, 12, 2, tzinfo=timezone.utc)).origin == "litellm"


def test_user_file_sits_above_a_litellm_import_added_later(tmp_path):
    user = tmp_path / "ours.yaml"
    user.write_text(
        "provider: openai\nkind: chat\nunit: 1M tokens\nentries:\n  - name: gpt-6.2-sol\n    versions:\n"
        "      - {effective_from: 2026-01-01, source: contract, rates: {input: '1', output: '5'}}\n"
    )
    lite = tmp_path / "prices.json"
    lite.write_text(json.dumps({"gpt-6.2-sol": {"litellm_provider": "openai", "input_cost_per_token": 9e-06}}))
    c = PriceCatalog.load(user)
    c.add(import_litellm(lite, effective_from=date(2026, 12, 1)).entries)
    assert c.price_for("gpt-6.2-sol", datetime(2026, 12, 5, tzinfo=timezone.utc)).origin == "user"


def test_prices_show_says_which_layer(tmp_path):
    out = CliRunner().invoke(prices, ["show", "claude-haiku-4-5-20251001", "--json", "--genai-snapshot", "bundled"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    assert doc["resource"] == "chat:anthropic/claude-haiku-4-5"
    assert doc["layer_in_force"] == "genai-prices"
    assert all(v["layer"] and v["source"] for v in doc["versions"])


def _snapshot(tmp_path, change_luna: bool) -> str:
    from genai_prices.data import providers

    data = [plain(p) for p in providers if p.id in ("openai", "anthropic")]
    if change_luna:
        luna = next(m for m in data[[p["id"] for p in data].index("openai")]["models"] if m["id"] == "gpt-6-luna")
        luna["prices"]["output_mtok"] = {"base": "0.40", "tiers": [{"start": 272000, "price": "0.60"}]}
    path = tmp_path / "data.json"
    dump_snapshot(data, path)
    return path.as_uri()


def test_prices_update_saves_a_dated_snapshot_and_prints_the_diff(tmp_path):
    folder = tmp_path / "prices"
    url = _snapshot(tmp_path, change_luna=True)
    out = CliRunner().invoke(prices, ["update", "--url", url, "--prices-dir", str(folder), "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    saved = latest(folder)
    assert saved is not None and saved.name.startswith("genai-prices-") and doc["saved"] == str(saved)
    assert {"model": "chat:openai/gpt-6-luna", "what": "output", "old": "0.5", "new": "0.40"} in doc["changes"]
    # the CLI's catalog now uses the saved snapshot; pinning 'bundled' goes back to the package's data
    now = CliRunner().invoke(prices, ["show", "gpt-6-luna", "--json", "--prices-dir", str(folder)])
    assert json.loads(now.output)["versions"][-1]["rates"]["output"] == "0.40"
    pinned = CliRunner().invoke(
        prices, ["show", "gpt-6-luna", "--json", "--prices-dir", str(folder), "--genai-snapshot", "bundled"]
    )
    assert json.loads(pinned.output)["versions"][-1]["rates"]["output"] == "0.5"


def test_update_refuses_data_that_is_not_a_snapshot(tmp_path):
    with pytest.raises(ValueError):
        update(tmp_path / "prices", "x", fetch=lambda url: b'{"not": "providers"}', today=date(2026, 12, 1))
    assert latest(tmp_path / "prices") is None


def test_prices_check_on_a_litellm_spend_log(tmp_path):
    log = tmp_path / "spend.json"
    log.write_text(
        json.dumps(
            [
                {
                    "model": "claude-haiku-4-5-20251001",
                    "spend": 0.0015,
                    "prompt_tokens": 1000,
                    "completion_tokens": 100,
                },
                {"model": "acme-secret-model", "spend": 0.5, "prompt_tokens": 10, "completion_tokens": 10},
                {
                    "model": "gpt-6.2-sol",
                    "spend": 0.01,
                    "metadata": {
                        "usage_object": {
                            "prompt_tokens": 1000,
                            "completion_tokens": 10,
                            "prompt_tokens_details": {"audio_tokens": 500},
                        }
                    },
                },
                {"model": "gpt-6-luna", "spend": 0.2},
            ]
        )
    )
    out = CliRunner().invoke(prices, ["check", str(log), "--json", "--genai-snapshot", "bundled"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    assert (doc["rows"], doc["priced"], doc["unpriced"]) == (4, 1, 3)
    gaps = {g["model"]: g for g in doc["gaps"]}
    assert gaps["acme-secret-model"]["spend"] == "0.5" and "unknown model" in gaps["acme-secret-model"]["reason"]
    assert gaps["gpt-6.2-sol"]["usage_fields"] == ["input_audio"]
    assert "no usage" in gaps["gpt-6-luna"]["reason"]


def test_prices_check_on_a_ledger(tmp_path):
    from truecost.clock import FixedClock
    from truecost.ledger.sqlite import SQLiteLedgerStore
    from truecost.tracking import Tracker

    db = tmp_path / "ledger.db"
    store = SQLiteLedgerStore(db)
    tracker = Tracker(PriceCatalog.bundled(), lambda e: store.append([e]), clock=FixedClock(AT))
    tracker.record("generate", model="gpt-6-luna", usage={"prompt_tokens": 10, "completion_tokens": 1})
    tracker.record("generate", model="mystery-model", usage={"prompt_tokens": 10, "completion_tokens": 1})
    store.close() if hasattr(store, "close") else None
    assert sqlite3.connect(db).execute("select count(*) from sqlite_master").fetchone()[0] > 0
    out = CliRunner().invoke(prices, ["check", str(db), "--json", "--genai-snapshot", "bundled"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    assert doc["rows"] == 2 and doc["unpriced"] == 1
    assert doc["gaps"][0]["model"] == "mystery-model"


def test_the_update_path_reads_genai_prices_published_format(tmp_path):
    """The snapshot format is genai-prices' published one (prices/new_data/v2/data.json, a list of raw
    providers): genai-prices' own parser of that download reads the file truecost writes back into the
    very providers it ships (every model, price, variant and match clause; only its usage extractors,
    which truecost does not use, carry a registry), and `prices update` reads that file into a catalog
    that prices like the bundled one."""
    from genai_prices.data import providers as shipped
    from genai_prices.types import _providers_from_raw

    from truecost.pricing.genai_layer import dump_snapshot, plain

    path = tmp_path / "data.json"
    dump_snapshot([plain(p) for p in shipped], path)
    parsed = _providers_from_raw(json.loads(path.read_text()))
    strip = [{k: v for k, v in plain(p).items() if k != "extractors"} for p in parsed]
    assert strip == [{k: v for k, v in plain(p).items() if k != "extractors"} for p in shipped]
    folder = tmp_path / "prices"
    out = CliRunner().invoke(prices, ["update", "--url", path.as_uri(), "--prices-dir", str(folder), "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    assert doc["changes"] == [] and doc["models"] > 1000
    shown = CliRunner().invoke(prices, ["show", "claude-haiku-4-5-20251001", "--json", "--prices-dir", str(folder)])
    assert json.loads(shown.output)["versions"][-1]["rates"]["input"] == "1"
