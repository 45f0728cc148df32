"""The LiteLLM logger on a proxy: the team a LiteLLM key belongs to pays for its calls.

A proxy client's request ``metadata`` reaches the logger (in ``litellm_params.metadata`` and as
``requester_metadata``); it may add cost center, feature, tenant and tags (documented), but the key's team
comes from the proxy, and a ``truecost`` block in the metadata must not replace it. Real logger, real
tracker and ledger store; the kwargs are shaped as the LiteLLM proxy hands them to a CustomLogger.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from tests.unit.integrations.spans import PRICES
from truecost.integrations.litellm import record_call
from truecost.ledger import MemoryLedgerStore
from truecost.pricing import PriceCatalog
from truecost.tracking import Tracker

T = datetime(2026, 11, 20, 12, 0)
USAGE = {"prompt_tokens": 100, "completion_tokens": 10}


@pytest.fixture
def ledger(tmp_path):
    path = tmp_path / "prices.yaml"
    path.write_text(PRICES)
    store = MemoryLedgerStore()
    return Tracker(PriceCatalog.load(path), lambda e: store.append([e])), store


def _proxy_kwargs(client_metadata: dict) -> dict:
    return {
        "model": "tc-chat",
        "call_type": "acompletion",
        "litellm_call_id": "call-x",
        "litellm_params": {"custom_llm_provider": "openai", "metadata": dict(client_metadata)},
        "standard_logging_object": {
            "id": "call-x",
            "call_type": "acompletion",
            "metadata": {
                "user_api_key_alias": "support-key",
                "user_api_key_team_alias": "support",
                "user_api_key_team_id": "team-123",
                "requester_metadata": dict(client_metadata),
            },
        },
    }


@pytest.mark.parametrize("claim", [{"truecost": {"team": "t-victim"}}, {"truecost": {"team": "t-victim"}, "team": "x"}])
def test_request_metadata_cannot_move_a_call_off_its_keys_team(ledger, claim):
    tracker, store = ledger
    record_call(tracker, _proxy_kwargs({**claim, "feature": "f-1"}), {"model": "tc-chat", "usage": USAGE}, T, T)
    (e,) = store.query()
    assert e.attribution.team == "support"  # the LiteLLM key's team
    assert e.attribution.feature == "f-1"  # metadata still adds what the README says it adds


def test_the_operators_own_team_still_stands_over_the_keys(ledger):
    tracker, store = ledger
    kw = _proxy_kwargs({"truecost": {"team": "t-victim"}})
    record_call(
        tracker, kw, {"model": "tc-chat", "usage": USAGE}, T, T + timedelta(seconds=1), defaults={"team": "ops"}
    )
    (e,) = store.query()
    assert e.attribution.team == "ops"


@pytest.mark.parametrize("claim", [{"truecost": {"team": "t-victim"}}, {"truecost": {"team": "t-victim"}, "team": "x"}])
def test_a_key_without_a_team_cannot_bill_one_through_request_metadata(ledger, claim):
    # a LiteLLM key that belongs to no team (a personal or service key): its client named the team to bill
    tracker, store = ledger
    kw = _proxy_kwargs({**claim, "feature": "f-1"})
    for name in ("user_api_key_team_alias", "user_api_key_team_id"):
        del kw["standard_logging_object"]["metadata"][name]
    record_call(tracker, kw, {"model": "tc-chat", "usage": USAGE}, T, T)
    (e,) = store.query()
    assert e.attribution.team is None  # no team: unattributed, not the team the client named
    assert e.attribution.feature == "f-1"
