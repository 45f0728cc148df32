"""Routing at the gateway: the rules router, a trained router calibrated by the CLI serving live traffic,
and the logprob cascade (accept a confident weak answer, escalate the rest)."""

import json
from decimal import Decimal

import pytest

from tests.support.gateway_stack import KEY, client, ledger_events, stack  # noqa: F401
from tests.support.mock_upstream import ServerThread, make_app
from truecost.gateway.app import build
from truecost.gateway.config import hash_key, parse_config


def test_rules_router_serves_easy_requests_from_the_weak_model_and_records_the_saving(stack):
    gw, app, _ = stack
    c = client(gw)
    easy = c.chat.completions.with_raw_response.create(model="routed", messages=[{"role": "user", "content": "hi"}])
    assert easy.headers["x-truecost-model"] == "gpt-6-luna"
    (e,) = ledger_events(app, easy.headers["x-request-id"])
    # same tokens on gpt-6.2-sol: 100 x 2/1M + 20 x 0.10/1M + 30 x 10/1M = 0.000502; on luna 0.0000252
    assert e.outcome == "routed" and e.avoided_cost == Decimal("0.000502") - Decimal("0.0000252")
    hard = c.chat.completions.with_raw_response.create(
        model="routed",
        messages=[{"role": "user", "content": "```python\ndef f(x):\n    return x\n``` debug and refactor"}],
    )
    assert hard.headers["x-truecost-model"] == "gpt-6.2-sol"


def test_trained_router_calibrated_by_the_cli_routes_live_traffic(tmp_path):
    import random

    from click.testing import CliRunner

    from truecost.cli.main import cli
    from truecost.errors import ConfigError

    rng = random.Random(7)
    data = tmp_path / "labelled.jsonl"
    with open(data, "w") as fh:
        for i in range(400):
            hard = i % 2 == 0
            prompt = (
                f"Compute step by step: {' + '.join(str(rng.randint(0, 99)) for _ in range(10))}"
                if hard
                else f"Say hello to person {i}"
            )
            fh.write(
                json.dumps(
                    {
                        "prompt": prompt,
                        "prompt_tokens": len(prompt) // 4,
                        "models": {
                            "gpt-3.5-turbo-1106": {
                                "quality": 0 if hard and rng.random() < 0.8 else 1,
                                "output_tokens": 20,
                            },
                            "gpt-4-1106-preview": {"quality": 1, "output_tokens": 30},
                        },
                    }
                )
                + "\n"
            )
    artifact = tmp_path / "router.npz"
    res = CliRunner().invoke(
        cli,
        [
            "router",
            "calibrate",
            str(data),
            "--weak",
            "gpt-3.5-turbo-1106",
            "--strong",
            "gpt-4-1106-preview",
            "--kind",
            "trained",
            "--max-strong-share",
            "0.5",
            "--out",
            str(artifact),
        ],
        catch_exceptions=False,
    )
    out = json.loads(res.output)
    assert out["artifact"] == str(artifact) and 0.4 <= out["test"]["strong_share"] <= 0.5

    def conf(route):
        return parse_config(
            {
                "ledger": str(tmp_path / "gw.db"),
                "upstreams": {"mock": {"base_url": upstream.url + "/v1"}},
                "models": {
                    "routed": {
                        "candidates": [
                            {"upstream": "mock", "model": "gpt-6.2-sol"},
                            {"upstream": "mock", "model": "gpt-6-luna"},
                        ],
                        "route": {"weak": "gpt-6-luna", "strong": "gpt-6.2-sol", **route},
                    }
                },
                "keys": [{"name": "team-a", "key_sha256": hash_key(KEY)}],
            }
        )

    easy_q, hard_q = "Say hello to person 9001", "Compute step by step: 12 + 85 + 3 + 44 + 9"

    def ask(c, content, system=None, **kw):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
        return c.chat.completions.with_raw_response.create(model="routed", messages=messages, **kw)

    with ServerThread(make_app()) as upstream:
        with pytest.raises(ConfigError, match="needs its artifact"):
            conf({"strategy": "trained", "artifact": str(tmp_path / "missing.npz")})
        with pytest.raises(ConfigError, match="threshold: a number"):
            conf({"strategy": "trained", "artifact": str(artifact), "threshold": True})
        app = build(conf({"strategy": "trained", "artifact": str(artifact)}))
        with ServerThread(app) as gw:
            c = client(gw)
            easy, hard = ask(c, easy_q), ask(c, hard_q)
            forced = ask(c, "Say hello to person 1", extra_headers={"x-truecost-route": "strong"})
            assert easy.headers["x-truecost-model"] == "gpt-6-luna"
            assert hard.headers["x-truecost-model"] == "gpt-6.2-sol"
            assert forced.headers["x-truecost-model"] == "gpt-6.2-sol"
            (e,) = ledger_events(app, easy.headers["x-request-id"])
            assert e.outcome == "routed" and e.avoided_cost > 0
        # Holding the calibrated strong-call share instead of the threshold
        with pytest.raises(ConfigError, match="route.hold"):
            conf({"strategy": "trained", "artifact": str(artifact), "hold": "budget"})
        with pytest.raises(ConfigError, match="share_window"):
            conf({"strategy": "trained", "artifact": str(artifact), "hold": "share", "share_window": 3})
        app = build(conf({"strategy": "trained", "artifact": str(artifact), "hold": "share", "share_window": 60}))
        held = app.state.pipeline.routers["routed"].router
        assert held.hold is not None and held.hold.share == out["strong_share"] and held.hold.window == 60
        with ServerThread(app) as gw:
            c = client(gw)
            served = [
                ask(c, f"Say hello to person {rng.randint(1000, 9999)}").headers["x-truecost-model"] for _ in range(130)
            ]
        # every request is easy: the calibrated threshold (while the first window fills) sends none
        # up; once 60 scores are seen, the held share sends about half of them
        assert served[:60].count("gpt-6.2-sol") == 0
        share = served[60:].count("gpt-6.2-sol") / 70
        assert abs(share - out["strong_share"]) <= 0.2, (share, out["strong_share"])
        # A quality target ranks by predicted gain per extra dollar (priced at route time).
        per_dollar = tmp_path / "per_dollar.npz"
        res = CliRunner().invoke(
            cli,
            [
                "router",
                "calibrate",
                str(data),
                "--weak",
                "gpt-3.5-turbo-1106",
                "--strong",
                "gpt-4-1106-preview",
                "--kind",
                "trained",
                "--min-quality",
                "0.95",
                "--out",
                str(per_dollar),
            ],
            catch_exceptions=False,
        )
        out = json.loads(res.output)
        assert out["order"] == "gain-per-dollar" and out["test"]["quality_vs_strong"] >= 0.9
        app = build(conf({"strategy": "trained", "artifact": str(per_dollar)}))
        router = app.state.pipeline.routers["routed"].router
        assert router.extra_cost is not None
        with ServerThread(app) as gw:
            c = client(gw)
            assert ask(c, easy_q).headers["x-truecost-model"] == "gpt-6-luna"
            assert ask(c, hard_q).headers["x-truecost-model"] == "gpt-6.2-sol"
            # the same question behind a long context costs far more on the strong model: not worth it
            pricey = ask(c, hard_q, system="Background. " * 20000)
            assert pricey.headers["x-truecost-model"] == "gpt-6-luna"
        # a model without a price cannot be ranked by gain per dollar: refused at startup, by name
        unpriced = parse_config(
            {
                "ledger": str(tmp_path / "gw2.db"),
                "upstreams": {"mock": {"base_url": upstream.url + "/v1"}},
                "models": {
                    "routed": {
                        "candidates": [
                            {"upstream": "mock", "model": "gpt-6.2-sol"},
                            {"upstream": "mock", "model": "house-model-7b"},
                        ],
                        "route": {
                            "weak": "house-model-7b",
                            "strong": "gpt-6.2-sol",
                            "strategy": "trained",
                            "artifact": str(per_dollar),
                        },
                    }
                },
                "keys": [{"name": "team-a", "key_sha256": hash_key(KEY)}],
            }
        )
        with pytest.raises(ConfigError, match="'house-model-7b' has no price in force"):
            build(unpriced)
        # a price that disappears after startup keeps the strong model, and says why
        router.extra_cost = lambda request: None
        from truecost.routing.decision import RouteRequest

        d = router.route(RouteRequest("Say hello to person 9001"))
        assert d.model == "gpt-6.2-sol" and "unknown" in d.reason
    # an answer-aware (cascade) artifact cannot route before the call: a clear error at startup
    from truecost.routing.artifacts import write_artifact
    from truecost.routing.scorer import Example, FeatureSpec, GapScorer

    cascade = write_artifact(
        GapScorer(FeatureSpec(embed=False, answer=True)).fit(
            [Example(f"q{i}", float(i % 2), {}, f"the answer is {i}") for i in range(20)]
        ),
        tmp_path / "cascade.npz",
    )
    with ServerThread(make_app()) as upstream:
        with pytest.raises(ConfigError, match="needs the weak model's answer"):
            build(conf({"strategy": "trained", "artifact": str(cascade), "threshold": 0.5}))


def test_logprob_cascade_accepts_confident_weak_answers_and_escalates_the_rest(tmp_path):
    from truecost.errors import ConfigError

    def conf(strong_wire="gpt-6.2-sol", cache=None, **route):
        return parse_config(
            {
                "ledger": str(tmp_path / "gw.db"),
                "upstreams": {"mock": {"base_url": upstream.url + "/v1", "max_retries": 0}},
                **({"cache": cache} if cache else {}),
                "models": {
                    "cascade": {
                        "candidates": [
                            {"upstream": "mock", "model": "gpt-6.2-sol", "upstream_model": strong_wire},
                            {"upstream": "mock", "model": "gpt-6-luna"},
                        ],
                        "route": {"strategy": "cascade", "weak": "gpt-6-luna", "strong": "gpt-6.2-sol", **route},
                    }
                },
                "keys": [{"name": "team-a", "key_sha256": hash_key(KEY)}],
            }
        )

    with ServerThread(make_app()) as upstream:
        for bad in ({}, {"min_mean_logprob": 0.5}, {"min_mean_logprob": "high"}):
            with pytest.raises(ConfigError, match="min_mean_logprob"):
                conf(**bad)
        app = build(conf(min_mean_logprob=-0.5))
        with ServerThread(app) as gw:
            c = client(gw)
            easy = c.chat.completions.with_raw_response.create(
                model="cascade", messages=[{"role": "user", "content": "refund?"}]
            )
            assert easy.headers["x-truecost-model"] == "gpt-6-luna"
            assert easy.parse().choices[0].logprobs is None  # asked for by the cascade, not by the client
            (e,) = ledger_events(app, easy.headers["x-request-id"])
            assert e.outcome == "routed" and e.avoided_cost > 0 and e.details["route_strategy"] == "cascade"

            hard = c.chat.completions.with_raw_response.create(
                model="cascade", messages=[{"role": "user", "content": "a hard one"}]
            )
            assert hard.headers["x-truecost-model"] == "gpt-6.2-sol"
            weak, strong = sorted(
                ledger_events(app, hard.headers["x-request-id"]), key=lambda ev: ev.service != "gpt-6-luna"
            )
            assert weak.outcome == "escalated" and weak.cost > 0  # the weak call is paid all the same
            assert "escalate" in weak.details["route_reason"] and strong.service == "gpt-6.2-sol"
            assert Decimal(hard.headers["x-truecost-cost-usd"]) == weak.cost + strong.cost

            chunks = list(
                c.chat.completions.create(
                    model="cascade",
                    messages=[{"role": "user", "content": "a hard one"}],
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
            assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices).startswith("The refund")
            assert chunks[-1].usage.completion_tokens == 30  # the tokens really spent, not a cache hit's zero
    with ServerThread(make_app()) as upstream:  # the escalation fails: the weak answer beats an error
        app = build(
            conf(
                strong_wire="fail-500",
                min_mean_logprob=-0.5,
                cache={"enabled": True, "embedder": "static", "policy": "fixed:0.97"},
            )
        )
        with ServerThread(app) as gw:
            for _ in range(2):  # served, but never cached: the cascade declined it
                r = client(gw).chat.completions.with_raw_response.create(
                    model="cascade", messages=[{"role": "user", "content": "a hard one"}]
                )
                assert r.headers["x-truecost-model"] == "gpt-6-luna" and r.parse().choices[0].message.content
                assert r.headers["x-truecost-cache"] == "miss"
            for expected in ("miss", "hit"):  # an accepted weak answer is cached like any other
                r = client(gw).chat.completions.with_raw_response.create(
                    model="cascade", messages=[{"role": "user", "content": "refund?"}]
                )
                assert r.headers["x-truecost-cache"] == expected
