"""The dashboard names where each request was recorded: a per-source breakdown on the overview, a
source column on the requests page and on a request's steps, and a source filter."""

import asyncio
import re
from datetime import datetime, timezone
from decimal import Decimal

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from truecost.audit.overview import overview
from truecost.dashboard.app import create_dashboard
from truecost.ledger import CostEvent, MemoryLedgerStore
from truecost.ledger.sqlite import SQLiteLedgerStore
from truecost.types import Attribution

T = datetime(2026, 11, 20, 9, tzinfo=timezone.utc)
ROWS = [  # (request, step, cost, source): rq-1 is an SDK step joined to the gateway's call by its request id
    ("rq-1", "embed", "0.25", "sdk"),
    ("rq-1", "generate", "1.5", "gateway"),
    ("rq-2", "generate", "0.5", "gateway"),
    ("rq-3", "generate", "2", "langchain"),
    ("rq-4", "generate", "0.125", "otlp"),
    ("rq-5", "generate", None, "litellm"),
    ("rq-6", "embed", "0.0625", "llamaindex"),
]


@pytest.fixture(params=["memory", "sqlite"])
def store(request, tmp_path):
    s = MemoryLedgerStore() if request.param == "memory" else SQLiteLedgerStore(tmp_path / "l.db")
    s.append(
        [
            CostEvent(
                id=f"e{i}",
                request_id=rid,
                ts=T,
                step=step,
                service="gpt-6-luna",
                cost=None if cost is None else Decimal(cost),
                source=source,
                attribution=Attribution(tenant="acme", cost_center="cx"),
            )
            for i, (rid, step, cost, source) in enumerate(ROWS)
        ]
    )
    yield s
    s.close()


def _get(store, *paths):
    async def go():
        app = Starlette(routes=[Mount("/ui", create_dashboard(store, insecure_open=True))])
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dash") as c:
            return [await c.get(p) for p in paths]

    responses = asyncio.run(go())
    assert all(r.status_code == 200 for r in responses), [r.status_code for r in responses]
    return [r.text for r in responses]


def _by_source(html):
    table = html[html.index("<table id='by-source'>") :]
    table = table[: table.index("</table>")]
    return {
        m[0]: (int(m[1]), int(m[2]), Decimal(m[3]))
        for m in re.findall(
            r'<tr data-source="([^"]+)" data-requests="(\d+)" data-events="(\d+)" data-cost-usd="([^"]+)"', table
        )
    }


def test_the_overview_breaks_requests_and_spend_down_by_source(store):
    (html,) = _get(store, "/ui/")
    assert "By source" in html
    assert _by_source(html) == {
        "gateway": (2, 2, Decimal("2.0")),
        "langchain": (1, 1, Decimal(2)),
        "sdk": (1, 1, Decimal("0.25")),
        "otlp": (1, 1, Decimal("0.125")),
        "llamaindex": (1, 1, Decimal("0.0625")),
        "litellm": (1, 1, Decimal(0)),
    }
    assert re.search(r'data-key="requests" data-value="6"', html)  # the joined request counts once in the total
    (by_gateway,) = _get(store, "/ui/?source=gateway&by=source")
    assert _by_source(by_gateway) == {"gateway": (2, 2, Decimal("2.0"))}
    assert Decimal(re.search(r'data-key="total_usd" data-value="([^"]+)"', by_gateway).group(1)) == 2
    assert 'name="source" value="gateway"' in by_gateway and '<option value="source" selected>' in by_gateway


def test_the_requests_list_and_a_request_name_their_sources(store):
    listing, one = _get(store, "/ui/requests", "/ui/request/rq-1")
    rows = dict(re.findall(r'>(rq-\d)</a></td><td class="source">([^<]*)</td>', listing))
    assert rows == {
        "rq-1": "gateway, sdk",
        "rq-2": "gateway",
        "rq-3": "langchain",
        "rq-4": "otlp",
        "rq-5": "litellm",
        "rq-6": "llamaindex",
    }
    assert re.search(r'data-key="source" data-value="gateway, sdk"', one)
    steps = one[one.index("<h2>Steps</h2>") :]
    assert '<th class="">source</th>' in steps
    cells = re.findall(r"<tr><td(.*?)</tr>", steps[: steps.index("</table>")])
    assert [re.findall(r">([^<]*)</td>", c)[-1] for c in cells] == ["sdk", "gateway"]


def test_overview_data_has_requests_and_cost_per_source(store):
    data = overview(store, now=T, series_by="source")
    assert {r["key"]: (r["requests"], r["cost_usd"]) for r in data["by_source"]}["gateway"] == (2, Decimal("2.0"))
    assert set(data["spend_over_time"]["series"]) == {"gateway", "sdk", "langchain", "otlp", "litellm", "llamaindex"}
    assert {r["request_id"]: r["sources"] for r in data["expensive_requests"]}["rq-1"] == ["gateway", "sdk"]


def test_unpriced_steps_show_as_unknown_never_as_zero(store):
    """rq-5's only step has no price: the tables say unknown, with how many steps, not $0.00."""
    store.append(
        [
            CostEvent(
                id="e-extra",
                request_id="rq-3",
                ts=T,
                step="validate",
                service="judge-x",
                cost=None,
                source="langchain",
                attribution=Attribution(tenant="acme", cost_center="cx"),
            )
        ]
    )
    overview_html, listing = _get(store, "/ui/", "/ui/requests")
    cells = dict(
        re.findall(
            r'>(rq-\d)</a></td><td class="source">[^<]*</td><td class="n" data-unpriced="\d+">(.*?)</td>', listing
        )
    )
    assert cells["rq-5"] == "unknown (<span class='unknown'>1 unpriced</span>)"
    assert cells["rq-3"] == "$2.00 + <span class='unknown'>1 unpriced</span>"
    assert cells["rq-2"] == "$0.50"
    by_source = overview_html[overview_html.index("<table id='by-source'>") :]
    row = re.search(r'<tr data-source="litellm"[^>]*data-unpriced="(\d+)">(.*?)</tr>', by_source)
    assert row and row.group(1) == "1" and "unknown (" in row.group(2) and "$0.00" not in row.group(2)
    data = overview(store, now=T)
    assert {r["request_id"]: r["unknown"] for r in data["expensive_requests"]}["rq-5"] == 1
    # the headline sums leave the unpriced steps out, and say so
    assert re.search(
        r'data-key="total_usd" data-value="[^"]+">[^<]*</div><div class="k">spend \(priced steps only\)', overview_html
    )
    assert "cost per request (priced steps only)" in overview_html


def test_headline_figures_carry_no_caveat_when_every_step_is_priced(tmp_path):
    s = MemoryLedgerStore()
    s.append([CostEvent(id="p1", request_id="rq-p", ts=T, step="generate", service="m", cost=Decimal("0.5"))])
    (html,) = _get(s, "/ui/")
    assert "priced steps only" not in html and '<div class="k">spend</div>' in html
