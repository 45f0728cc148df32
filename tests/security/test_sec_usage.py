"""Issue 15, point 7: the ledger never misses a paid call -- malformed or contradictory usage from the
upstream gives the client its answer and the ledger a row with cost NULL, a reason, and the raw usage."""

from __future__ import annotations

import json

import pytest

from tests.security.harness import chat_body, post_chat
from tests.security.sec_config import key

RAW = {
    "usage-float": "120.5",
    "usage-cached-gt": "500",
    "usage-negative": "-30",
    "usage-string": "lots",
    # the shared hostile upstream, as an OpenAI-compatible and as an Anthropic upstream
    "sh-usage-float": "12.5",
    "sh-usage-cached-over": "50",
    "sha-usage-float": "12.5",
}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("model", list(RAW))
def test_malformed_usage_is_answered_and_recorded_with_an_unknown_cost(gw, upstream, model, stream):
    marker = f"usage-{model}-{stream}"
    body = chat_body(model, marker, max_tokens=20, stream=stream)
    if stream:
        body["stream_options"] = {"include_usage": True}
    r = post_chat(gw, key("plain"), body)
    assert r.status_code == 200, f"{model}: {r.status_code} {r.text[:300]}"
    if stream:
        events = [ln[6:] for ln in r.text.splitlines() if ln.startswith("data: ")]
        assert events[-1] == "[DONE]" and not any("error" in json.loads(e) for e in events[:-1]), events[-3:]
        text = "".join(
            c.get("delta", {}).get("content") or "" for e in events[:-1] for c in json.loads(e).get("choices") or []
        )
    else:
        text = r.json()["choices"][0]["message"]["content"]
    assert text.strip().startswith(
        "answer #" if model in ("usage-float", "usage-cached-gt", "usage-negative", "usage-string") else "The refund"
    ), text
    assert r.headers.get("x-truecost-cost-usd") in ("unknown", None)
    rows = gw.wait_rows("request_id = ?", (r.headers["x-request-id"],))
    assert rows, f"{model}: the provider billed a call the ledger does not have"
    (gen,) = [row for row in rows if row["step"] == "generate"]
    assert gen["cost"] is None, f"{model}: priced ${gen['cost']} from usage it cannot trust"
    assert gen["details"].get("unknown_reason"), gen["details"]
    assert RAW[model] in json.dumps(gen["details"]), f"the raw usage is not kept: {gen['details']}"
