import asyncio
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from truecost.clock import FixedClock
from truecost.errors import InvalidAttributionError, InvalidQuantityError
from truecost.ledger import MemoryLedgerStore
from truecost.pricing import PriceCatalog
from truecost.tracking import Tracker, current_request, tracked
from truecost.tracking.infra import CapacityPool, egress_path
from truecost.types import Attribution

AT = datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)


@pytest.fixture
def env():
    store = MemoryLedgerStore()
    tracker = Tracker(PriceCatalog.bundled(), lambda e: store.append([e]), clock=FixedClock(AT))
    return tracker, store


def test_every_step_carries_one_request_id_and_attribution(env):
    tracker, store = env
    with tracker.request(cost_center="cc1", feature="rag", tenant="acme") as req:
        with req.step("generate") as s:
            s.tokens("gpt-6-luna", {"prompt_tokens": 1000, "completion_tokens": 100})
        with req.step("embed") as s:
            s.tokens("text-embedding-3-small", {"prompt_tokens": 50})
    events = store.query()
    assert {e.request_id for e in events} == {req.id}
    assert {e.trace_id for e in events} == {req.trace_id}
    assert all(e.attribution == Attribution(cost_center="cc1", feature="rag", tenant="acme") for e in events)
    # 1000 x 0.10/1M + 100 x 0.50/1M = 0.00015 ; 50 x 0.02/1M = 0.000001
    assert [e.cost for e in events] == [Decimal("0.00015"), Decimal("0.000001")]
    assert req.total == Decimal("0.000151")


def test_unknown_model_gives_none_cost_with_a_reason(env):
    tracker, store = env
    with tracker.request() as req:
        with req.step("generate") as s:
            s.tokens("my-private-model", {"prompt_tokens": 10, "completion_tokens": 1})
    (e,) = store.query()
    assert e.cost is None and "unknown model" in e.details["unknown_reason"]


def test_a_step_without_usage_is_priced_as_compute_or_reported_unknown(env):
    tracker, store = env
    with tracker.request() as req:
        with req.step("sanitize"):
            pass
    assert store.query()[0].cost is None
    tracker.compute = "aws/m7i.large"
    events = tracker.record("context_assembly", latency_ms=3_600_000.0)
    # one vCPU-hour of a 2-vCPU m7i.large at $0.1008/h = 0.0504
    assert events[0].cost == Decimal("0.0504")


def test_failed_step_is_recorded_with_error_outcome(env):
    tracker, store = env
    with pytest.raises(RuntimeError):
        with tracker.request() as req:
            with req.step("generate") as s:
                s.tokens("gpt-6-luna", {"prompt_tokens": 100, "completion_tokens": 0})
                raise RuntimeError("upstream reset")
    (e,) = store.query()
    assert e.outcome == "error" and "upstream reset" in e.details["error"] and e.cost == Decimal("0.00001")


def test_contextvars_flow_through_async_and_decorators(env):
    tracker, store = env

    @tracked("vector_search")
    async def search():
        assert current_request() is not None
        return current_request().id

    async def main():
        async with tracker.request(team="t") as req:
            rid = await search()
            return req.id, rid

    from truecost.tracking import configure

    configure(tracker)
    req_id, seen = asyncio.run(main())
    assert req_id == seen
    assert store.query()[0].request_id == req_id and store.query()[0].step == "vector_search"


def test_egress_paths_and_free_allowance(env):
    tracker, store = env
    assert egress_path("us-east-1", "eu-west-1") == "inter_region"
    assert egress_path("us-east-1", "us-east-1", "a", "b") == "cross_zone"
    assert egress_path("us-east-1", "us-east-1", "a", "a") == "same_zone"
    assert egress_path("us-east-1", "internet") == "internet"
    with tracker.request() as req:
        with req.step("egress") as s:
            s.egress(5 * 10**9, "us-east-1", "eu-west-1")  # 5 GB x $0.02 = 0.10
        with req.step("egress") as s:
            s.egress(150 * 10**9, "us-east-1", "internet")  # 100 GB free, 50 GB x $0.09 = 4.50
        with req.step("egress") as s:
            s.egress(10 * 10**9, "us-east-1", "internet")  # allowance used up: 10 x 0.09 = 0.90
    assert [e.cost for e in store.query()] == [Decimal("0.1"), Decimal("4.5"), Decimal("0.9")]


def test_log_storage_is_bytes_x_price_x_retention_x_replicas(env):
    tracker, store = env
    with tracker.request() as req:
        with req.step("log_storage") as s:
            # 50 KB = 0.00005 GB; x 365/30 months x 3 replicas = 0.001825 GB-months x $0.023 = 0.000041975
            # ingest 0.00005 GB x $0.50 = 0.000025
            s.log_storage(50_000, retention_days=365, replicas=3, ingest="aws/cloudwatch-logs")
    costs = [e.cost for e in store.query()]
    assert costs == [Decimal("0.000041975"), Decimal("0.000025")]


def test_reserved_capacity_is_shared_and_idle_time_is_unallocated(env):
    tracker, store = env
    pool = CapacityPool(tracker, "aws/g5.xlarge", instances=3, owner=Attribution(cost_center="platform"))
    reqs = [tracker.request(tenant=f"t{i}") for i in range(2)]
    pool.use(reqs[0], 1800)  # half an instance-hour
    pool.use(reqs[1], 3600)  # one instance-hour
    events = pool.settle(AT, AT + timedelta(hours=1))
    # 3 instances x 1 h x $1.006 = 3.018 in the window; 0.503 + 1.006 allocated; 1.509 idle
    assert [e.cost for e in events] == [Decimal("0.503"), Decimal("1.006"), Decimal("1.509")]
    assert events[-1].request_id is None and events[-1].details["unallocated"]
    assert sum(e.cost for e in events) == Decimal("3.018")


@pytest.mark.parametrize("bad", [-1, float("nan"), "ten", True])
def test_bad_quantities_are_refused(env, bad):
    tracker, _ = env
    with tracker.request() as req:
        with req.step("vector_search") as s:
            with pytest.raises(InvalidQuantityError):
                s.quantity("pinecone-serverless", "read_unit", bad)


def test_non_utf8_tags_are_refused():
    with pytest.raises(InvalidAttributionError):
        Attribution(tags={"team": b"\xff\xfe"})
    with pytest.raises(InvalidAttributionError):
        Attribution(feature="\udcff")
    assert Attribution(tags={"k": "wert-ü".encode()}).tags == (("k", "wert-ü"),)


def test_unknown_step_kind_is_refused(env):
    tracker, _ = env
    with pytest.raises(ValueError, match="unknown step kind"):
        tracker.request().step("gpu_magic")


def test_cache_lookup_records_lookup_cost_and_avoided_cost(env):
    from truecost.tracking.cache_accounting import record_cache_lookup

    tracker, store = env
    tracker.compute = "aws/m7i.large"
    with tracker.request(tenant="acme") as req:
        avoided = record_cache_lookup(
            req,
            hit=True,
            status="hit_semantic",
            embed_model="text-embedding-3-small",
            embed_tokens=1000,
            embed_ms=5.0,
            search_ms=3600_000.0,
            answer_model="gpt-6.2-sol",
            answer_usage={"prompt_tokens": 1000, "completion_tokens": 200},
        )
    # avoided: 1000 x 2/1M + 200 x 10/1M = 0.004; embedding 1000 x 0.02/1M = 0.00002;
    # search: one vCPU-hour of m7i.large (2 vCPU, $0.1008/h) = 0.0504
    assert avoided == Decimal("0.004")
    events = store.query()
    assert [e.cost for e in events] == [Decimal("0.00002"), Decimal("0.0504")]
    assert events[0].avoided_cost == Decimal("0.004") and events[0].outcome == "cache_hit"


def test_events_say_where_they_were_recorded(env):
    tracker, store = env
    with tracker.request(tenant="acme") as req:  # the SDK's own
        with req.step("generate") as s:
            s.tokens("gpt-6-luna", {"prompt_tokens": 10, "completion_tokens": 1})
        tracker.record("vector_search", cost=Decimal("0.001"))  # a step of the current request: its source
        tracker.record("validate", cost=Decimal("0.002"), source="my-batch")  # said explicitly: that one
    with tracker.request(source="langchain") as other:  # an integration sharing the tracker
        with other.step("embed") as s:
            s.tokens("text-embedding-3-small", {"prompt_tokens": 5})
    tracker.record("other", cost=Decimal("0.003"), source="litellm")  # a lone request of its own
    assert [(e.step, e.source) for e in store.query()] == [
        ("generate", "sdk"),
        ("vector_search", "sdk"),
        ("validate", "my-batch"),
        ("embed", "langchain"),
        ("other", "litellm"),
    ]
    assert "source" not in store.query()[-1].details
    gateway = Tracker(PriceCatalog.bundled(), lambda e: store.append([e]), clock=FixedClock(AT), source="gateway")
    pool = CapacityPool(gateway, "aws/g5.xlarge", instances=1, owner=Attribution(cost_center="platform"))
    pool.use(gateway.request(), 60)
    assert {e.source for e in pool.settle(AT, AT + timedelta(hours=1))} == {"gateway"}


def test_a_bad_source_is_refused_where_it_is_given(env):
    tracker, _ = env
    with pytest.raises(ValueError, match="bad event source"):
        tracker.request(source="Not a source")
    with pytest.raises(ValueError, match="bad event source"):
        tracker.record("other", cost=Decimal(0), source="")
    with pytest.raises(ValueError, match="bad event source"):
        Tracker(PriceCatalog.bundled(), lambda e: None, source="x" * 65)
