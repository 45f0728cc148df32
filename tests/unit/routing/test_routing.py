import json

import numpy as np
import pytest
from click.testing import CliRunner

from truecost.cli.bench import load_bench_module
from truecost.cli.main import cli
from truecost.errors import UnknownModelError
from truecost.routing.artifacts import read_artifact, write_artifact
from truecost.routing.calibrate import apgr, choose, tradeoff_curve
from truecost.routing.decision import RouteRequest
from truecost.routing.features import ANSWER_FEATURES, answer_features
from truecost.routing.rules import RulesRouter
from truecost.routing.scorer import Example, FeatureSpec, GapScorer, ScoredRouter, TrainingDataError


def test_answer_features_recompute_the_arithmetic():
    q = "Janet has 16 eggs and eats 3. How many are left?"
    good = answer_features(q, "16 - 3 = 13\nThe answer is 13")
    bad = answer_features(q, "16 - 3 = 12\nThe answer is 12")
    i = ANSWER_FEATURES.index
    assert good[i("eq_good")] == 1 and good[i("eq_bad")] == 0 and good[i("final_marker")] == 1
    assert bad[i("eq_bad")] == 1 and bad[i("eq_bad_share")] == 1.0
    assert good[i("question_numbers_used")] == 1.0
    assert answer_features(q, "__import__('os').system('x') = 1")[i("eq_good")] == 0  # nothing is executed


def test_apgr_of_random_oracle_and_anti_oracle():
    rng = np.random.default_rng(0)
    qw = rng.integers(0, 2, 2000).astype(float)
    qs = np.maximum(qw, rng.integers(0, 2, 2000)).astype(float)
    c = np.ones(2000)
    gap = qs - qw
    span = (qw.mean(), qs.mean())
    # the oracle recovers the whole gap linearly over the first mean(gap) share, then stays at 1
    assert apgr(tradeoff_curve(gap, qw, qs, c, c * 10), *span) == pytest.approx(1 - gap.mean() / 2, abs=1e-3)
    assert 0.45 < apgr(tradeoff_curve(rng.random(2000), qw, qs, c, c * 10), *span) < 0.55
    assert apgr(tradeoff_curve(-gap, qw, qs, c, c * 10), *span) == pytest.approx(gap.mean() / 2, abs=1e-3)


def test_cascade_curve_pays_the_weak_call_always():
    qw, qs = np.array([0.0, 1.0]), np.array([1.0, 1.0])
    cw, cs = np.array([1.0, 1.0]), np.array([10.0, 10.0])
    plain = tradeoff_curve(np.array([1.0, 0.0]), qw, qs, cw, cs)
    cascade = tradeoff_curve(np.array([1.0, 0.0]), qw, qs, cw, cs, cascade=True)
    assert plain.cost.tolist() == [1.0, 5.5, 10.0]
    assert cascade.cost.tolist() == [1.0, 6.0, 11.0]
    assert choose(plain, max_strong_share=0.5) == 1 and choose(plain, min_quality=1.0) == 1
    assert choose(plain, max_cost=1.0) == 0


def test_quality_target_is_read_where_the_curve_settles_not_where_it_first_touches():
    # the two top-scored rows are lucky: the raw curve touches 70% quality at 2 of 10 rows,
    # falls back (the strong model is worse on the next two) and holds 70% only from 6 rows on
    gaps = np.array([1, 1, -1, -1, 1, 1, 1, 0, 0, 0], dtype=float)
    qw = np.where(gaps > 0, 0.0, 1.0)
    qs = qw + gaps
    scores = -np.arange(10.0)
    curve = tradeoff_curve(scores, qw, qs, np.ones(10), np.ones(10) * 5)
    assert curve.quality[2] == pytest.approx(0.7) and curve.quality[4] == pytest.approx(0.5)
    assert choose(curve, min_quality=0.7) == 6
    assert choose(curve, min_quality=0.9) is None
    # block smoothing spreads a block's gains evenly over its rows, keeping the block totals
    smooth = tradeoff_curve(scores, qw, qs, np.ones(10), np.ones(10) * 5, smooth=2)
    assert smooth.quality[5] == pytest.approx(curve.quality[5]) and smooth.quality[-1] == pytest.approx(
        curve.quality[-1]
    )
    assert np.allclose(np.diff(smooth.quality[:6]), 0.02) and np.allclose(np.diff(smooth.quality[5:]), 0.04)


def _synthetic(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        hard = rng.random() < 0.4
        text = ("prove step by step " * 3 + "x" * 300) if hard else f"hi there {i}"
        out.append(Example(text, 1.0 if hard and rng.random() < 0.9 else 0.0, {"topic": "math" if hard else "chat"}))
    return out


def test_scorer_learns_ranks_saves_and_loads(tmp_path):
    train, test = _synthetic(300), _synthetic(200, seed=1)
    scorer = GapScorer(FeatureSpec(embed=False, categorical=("topic",))).fit(train)
    s = scorer.score(test)
    gaps = np.array([e.gap for e in test])
    assert s[gaps == 1].mean() > s[gaps == 0].mean() + 0.3
    path = write_artifact(scorer, tmp_path / "r.npz", weak="w", strong="s")
    again = read_artifact(path)
    np.testing.assert_allclose(again.score(test), s)
    router = ScoredRouter(again, "w", "s", threshold=0.5)
    assert router.route(RouteRequest("hi there")).model == "w"
    assert router.route(RouteRequest("prove step by step " * 3 + "x" * 300, metadata={"topic": "math"})).model == "s"


@pytest.mark.parametrize(
    "examples,match",
    [
        ([], "at least 10"),
        ([Example("a", 1.0)] * 20, "degenerate labels"),
        ([Example("a", float("nan"))] * 20, "finite"),
    ],
)
def test_scorer_refuses_bad_training_sets(examples, match):
    with pytest.raises(TrainingDataError, match=match):
        GapScorer(FeatureSpec(embed=False)).fit(examples)


def test_rules_router_headers_budget_and_difficulty():
    r = RulesRouter("small", "large")
    assert r.route(RouteRequest("hello")).model == "small"
    assert r.route(RouteRequest("```python\ndef f(x):\n    return x\n``` please debug and refactor")).model == "large"
    assert r.route(RouteRequest("hello", metadata={"x-truecost-route": "strong"})).model == "large"
    assert r.route(RouteRequest("```def f(): pass``` debug", budget_used=0.95)).model == "small"
    assert r.route(RouteRequest("hello")).candidates == ("small", "large")


def _write_routing_file(path, n=200, weak="gpt-3.5-turbo-1106", strong="gpt-4-1106-preview", seed=0):
    rng = np.random.default_rng(seed)
    with open(path, "w") as fh:
        for i in range(n):
            hard = rng.random() < 0.5
            prompt = (
                ("Compute step by step: " + " + ".join(str(x) for x in rng.integers(0, 99, 12)))
                if hard
                else f"Say hello to person {i}"
            )
            fh.write(
                json.dumps(
                    {
                        "prompt_id": str(i),
                        "prompt": prompt,
                        "prompt_tokens": len(prompt) // 4,
                        "category": "math" if hard else "chat",
                        "quality_kind": "correct_0_1",
                        "models": {
                            weak: {"quality": 0 if hard and rng.random() < 0.8 else 1, "output_tokens": 20},
                            strong: {"quality": 1, "output_tokens": 30},
                        },
                    }
                )
                + "\n"
            )
    path.with_suffix(".schema.json").write_text(json.dumps({"features": ["category"]}))


def run(*args, **kwargs):
    """The routing benchmark protocol, loaded from the repository's bench/ folder as `truecost bench` does."""
    return load_bench_module("routing").run(*args, **kwargs)


def test_bench_router_cli_end_to_end(tmp_path):
    f = tmp_path / "r.jsonl"
    _write_routing_file(f)
    res = CliRunner().invoke(
        cli,
        [
            "bench",
            "router",
            "--data",
            str(f),
            "--weak",
            "gpt-3.5-turbo-1106",
            "--strong",
            "gpt-4-1106-preview",
            "--json",
        ],
        catch_exceptions=False,
    )
    d = json.loads(res.output)
    assert d["test"] == 100 and d["strategies"]["cascade"]["available"] is False
    assert d["strategies"]["trained"]["apgr"] > d["random"]["apgr"] + 0.2
    assert d["oracle"]["apgr"] >= d["strategies"]["trained"]["apgr"]
    assert 0 < d["cost_saving_at_95"] < 1 and d["best_strategy"] in ("rules", "trained")


def test_bench_router_names_unknown_models(tmp_path):
    f = tmp_path / "r.jsonl"
    _write_routing_file(f, weak="our-private-llm")
    with pytest.raises(UnknownModelError, match="our-private-llm"):
        run(f, "our-private-llm", "gpt-4-1106-preview")
    res = CliRunner().invoke(
        cli, ["bench", "router", "--data", str(f), "--weak", "nope", "--strong", "gpt-4-1106-preview"]
    )
    assert res.exit_code == 1 and "model 'nope' is not in" in res.output


def test_calibration_meets_targets_on_the_held_out_half(tmp_path):
    f = tmp_path / "r.jsonl"
    _write_routing_file(f, n=2000, seed=3)  # 1,000 held-out prompts: sampling noise ~1.5pp
    d = run(f, "gpt-3.5-turbo-1106", "gpt-4-1106-preview", "trained")
    checks = {c["target"]: c for c in d["strategies"]["trained"]["calibration"]}
    assert abs(checks["strong_share<=0.30"]["error_pp"]) <= 1.0
    assert abs(checks["quality>=0.95*strong"]["error_pp"]) <= 3.0
    lo, hi = checks["quality>=0.95*strong"]["expected_error_pp_90pct"]
    assert lo < hi


def test_router_calibrate_cli(tmp_path):
    f = tmp_path / "r.jsonl"
    _write_routing_file(f, n=400, seed=4)
    res = CliRunner().invoke(
        cli,
        [
            "router",
            "calibrate",
            str(f),
            "--weak",
            "gpt-3.5-turbo-1106",
            "--strong",
            "gpt-4-1106-preview",
            "--kind",
            "rules",
            "--max-strong-share",
            "0.25",
        ],
        catch_exceptions=False,
    )
    d = json.loads(res.output)
    assert abs(d["test"]["strong_share"] - 0.25) <= 0.01 and d["curve_test"]
    band = d["quality_vs_strong_expected_90pct"]
    assert band["requests"] == 200 and band["low"] <= band["median"] <= band["high"]
    assert d["order"] == "gap"  # a strong-share target ranks by the predicted gap
    res = CliRunner().invoke(
        cli,
        [
            "router",
            "calibrate",
            str(f),
            "--weak",
            "gpt-3.5-turbo-1106",
            "--strong",
            "gpt-4-1106-preview",
            "--kind",
            "trained",
            "--min-quality",
            "0.95",
            "--report",
            str(tmp_path / "rep"),
        ],
        catch_exceptions=False,
    )
    d = json.loads(res.output)
    assert d["order"] == "gain-per-dollar" and len(d["curve_test"]) == 21
    page = (tmp_path / "rep" / "router_calibration.html").read_text()
    assert page.count("<svg") == 2 and "Cost-quality curve" in page and "quality &gt;= 95% of strong" in page
    assert json.loads((tmp_path / "rep" / "router_calibration.json").read_text())["strong_share"] == d["strong_share"]
    bad = CliRunner().invoke(
        cli, ["router", "calibrate", str(f), "--weak", "gpt-3.5-turbo-1106", "--strong", "gpt-4-1106-preview"]
    )
    assert bad.exit_code != 0 and "exactly one" in bad.output


def test_logprob_cascade_accepts_confident_answers_and_calibrates():
    from truecost.routing.cascade import LogprobCascade, mean_logprob

    confident = {
        "choices": [{"logprobs": {"content": [{"token": "a", "logprob": -0.1}, {"token": "b", "logprob": -0.3}]}}]
    }
    unsure = {"choices": [{"logprobs": {"content": [{"token": "a", "logprob": -2.5}]}}]}
    assert mean_logprob(confident) == pytest.approx(-0.2) and mean_logprob({"choices": [{}]}) is None
    c = LogprobCascade(threshold=-1.0)
    assert c.accept(confident)[0] and not c.accept(unsure)[0] and not c.accept({"choices": [{}]})[0]
    rng = np.random.default_rng(0)
    lp = rng.normal(-1, 0.5, 1000)
    good = rng.random(1000) < 1 / (1 + np.exp(-(lp + 1) * 4))
    by_share = LogprobCascade.calibrate(lp, good, max_escalation=0.3)
    assert abs(np.mean(lp < by_share.threshold) - 0.3) < 0.01
    precise = LogprobCascade.calibrate(lp, good, min_accepted_precision=0.9)
    assert good[lp >= precise.threshold].mean() >= 0.9


def test_ridge_penalty_chosen_by_leave_one_out_follows_the_signal():
    from truecost.routing.scorer import loo_ridge_l2

    rng = np.random.default_rng(0)
    z = rng.standard_normal((400, 30))
    signal = z[:, 0] * 2 + rng.standard_normal(400) * 0.1
    noise = rng.standard_normal(400)
    l2_signal, errors = loo_ridge_l2(z, signal - signal.mean())
    l2_noise, _ = loo_ridge_l2(z, noise - noise.mean())
    assert l2_signal <= 3 and l2_noise >= 1000
    # the closed form equals refitting without each row (columns centred, as standardised ones are)
    l2 = 10.0
    n = 40
    zz, yy = z[:n, :5] - z[:n, :5].mean(0), signal[:n] - signal[:n].mean()
    _, errs = loo_ridge_l2(zz, yy, grid=(l2,))
    brute = []
    for i in range(n):
        keep = np.arange(n) != i
        a = np.hstack([zz[keep], np.ones((n - 1, 1))])
        reg = l2 * np.eye(6)
        reg[-1, -1] = 0
        w = np.linalg.solve(a.T @ a + reg, a.T @ yy[keep])
        brute.append((yy[i] - np.append(zz[i], 1) @ w) ** 2)
    assert errs[l2] == pytest.approx(np.mean(brute), rel=1e-6)


def test_bench_router_rejects_an_unknown_embedder(tmp_path):
    f = tmp_path / "r.jsonl"
    _write_routing_file(f)
    res = CliRunner().invoke(
        cli,
        [
            "bench",
            "router",
            "--data",
            str(f),
            "--weak",
            "gpt-3.5-turbo-1106",
            "--strong",
            "gpt-4-1106-preview",
            "--embedder",
            "word2vec",
            "--json",
        ],
    )
    assert res.exit_code == 2 and "unknown embedder 'word2vec'" in res.output


def test_artifact_round_trip_keeps_the_embedding_tail(tmp_path):
    from truecost.cache.embedders import StaticEmbedder

    rng = np.random.default_rng(1)
    train = [
        Example("preamble " * 300 + ("hard proof " if i % 2 else "hi ") + str(i), float(i % 2) + rng.normal(0, 0.1))
        for i in range(60)
    ]
    emb = StaticEmbedder()
    s = GapScorer(FeatureSpec(embed=True, embed_tail_chars=200), emb).fit(train)
    p = write_artifact(s, tmp_path / "r.npz")
    back = read_artifact(p, emb)
    assert back.spec.embed_tail_chars == 200 and back.meta["l2_chosen_by"] == "leave-one-out"
    assert np.allclose(back.score(train), s.score(train))
    assert np.corrcoef(s.score(train), [e.gap for e in train])[0, 1] > 0.8


def test_cost_aware_order_puts_the_most_gain_per_dollar_first():
    from truecost.routing.calibrate import gain_per_dollar

    scores = np.array([0.4, 0.3, -0.2, 0.0, 0.1])
    extra = np.array([4.0, 1.0, 1.0, 1.0, 0.1])  # dollars the strong call would add
    order = np.argsort(-gain_per_dollar(scores, extra), kind="stable").tolist()
    assert order == [4, 1, 0, 3, 2]  # 1.0/$, 0.3/$, 0.1/$, then no expected gain, then a loss


def test_bench_router_reports_both_orders_and_the_oracle(tmp_path):
    f = tmp_path / "r.jsonl"
    _write_routing_file(f, n=400, seed=5)
    d = run(f, "gpt-3.5-turbo-1106", "gpt-4-1106-preview", "trained")
    t = d["strategies"]["trained"]
    assert (
        t["cost_aware"]["cost_saving_at_95"] is not None
        and d["cost_saving_at_95"] == t["cost_aware"]["cost_saving_at_95"]
    )
    assert d["cost_saving_at_95_share_ranked"] == t["cost_saving_at_95"]
    assert d["oracle"]["cost_aware"]["cost_saving_at_95"] >= t["cost_aware"]["cost_saving_at_95"]


def test_bench_router_warns_when_prompts_carry_no_signal(tmp_path):
    rng = np.random.default_rng(11)
    f = tmp_path / "noise.jsonl"
    with open(f, "w") as fh:
        for i in range(300):  # who needs the strong model is a coin flip, unrelated to the prompt
            fh.write(
                json.dumps(
                    {
                        "prompt": f"question number {i} about {rng.choice(['cats', 'tax', 'code'])}",
                        "prompt_tokens": 8,
                        "models": {
                            "gpt-3.5-turbo-1106": {"quality": int(rng.random() < 0.6), "output_tokens": 10},
                            "gpt-4-1106-preview": {"quality": int(rng.random() < 0.9), "output_tokens": 10},
                        },
                    }
                )
                + "\n"
            )
    d = run(f, "gpt-3.5-turbo-1106", "gpt-4-1106-preview")
    assert d["signal_out_of_fold"] is False and "no strategy beats random" in d["warning"]
    g = tmp_path / "signal.jsonl"
    _write_routing_file(g, n=300, seed=2)
    assert run(g, "gpt-3.5-turbo-1106", "gpt-4-1106-preview")["signal_out_of_fold"] is True


def test_choice_features_read_the_last_item_only():
    from truecost.routing.features import CHOICE_FEATURES, choice_features

    shot = "Which is a fruit?\nA) apple\nB) car\nC) road\nD) wall\nAnswer:\nA"
    item = "Which of these is NOT a prime?\nA. 2\nB. 3\nC. 9\nD. all of the above\nAnswer:"
    f = dict(zip(CHOICE_FEATURES, choice_features(shot + "\n\n" + item)))
    assert f["options"] == 4 and f["negated_stem"] == 1.0 and f["all_of_the_above"] == 1.0
    assert f["numeric_options"] == 0.75 and f["statements"] == 0.0
    # the preamble's options say nothing about this request
    assert choice_features(shot + "\n\n" + item) == choice_features(item)
    plain = dict(zip(CHOICE_FEATURES, choice_features("Tell me a story about a dragon.")))
    assert plain["options"] == 0 and plain["option_overlap"] == 0.0
    two = dict(
        zip(CHOICE_FEATURES, choice_features("Statement 1 | x. Statement 2 | y.\nA. True, True\nB. True, False"))
    )
    assert two["statements"] == 1.0 and two["option_overlap"] == pytest.approx(1 / 3)


def test_embedding_weight_is_lowered_only_when_leave_one_out_says_so():
    from truecost.routing.scorer import choose_embed_weight

    rng = np.random.default_rng(0)
    n = 600
    named = rng.standard_normal((n, 3))
    noise_block = rng.standard_normal((n, 200))
    y = named[:, 0] + rng.standard_normal(n) * 0.5
    z = np.hstack([named, noise_block])
    weight, _ = choose_embed_weight(z, y - y.mean(), slice(3, 203))
    assert weight < 1.0  # 200 noise columns drown one useful feature at equal weight
    # the signal spread thinly over the embedding block: equal weight stays
    y2 = noise_block[:, :100].sum(1) * 0.2 + rng.standard_normal(n) * 0.5
    weight2, _ = choose_embed_weight(z, y2 - y2.mean(), slice(3, 203))
    assert weight2 == 1.0


def test_scorer_records_its_embedding_weight_and_old_artifacts_still_load(tmp_path):
    from truecost.cache.embedders import StaticEmbedder
    from truecost.errors import TruecostError
    from truecost.routing.artifacts import BASE_PROMPT_FEATURES

    emb = StaticEmbedder()
    train = _synthetic(300)
    s = GapScorer(FeatureSpec(embed=True), emb).fit(train)
    assert s.meta["embed_weight"] in (0.1, 0.3, 1.0)
    back = read_artifact(write_artifact(s, tmp_path / "new.npz"), emb)
    np.testing.assert_allclose(back.score(train), s.score(train))
    assert back.embed_weight == s.embed_weight
    small = GapScorer(FeatureSpec(embed=True), emb).fit(train[:100])
    assert small.embed_weight == 1.0  # too few rows to measure a second hyperparameter
    # A version 2 artifact knew only the six base prompt features.
    old = GapScorer(FeatureSpec(embed=False))
    old.prompt_features = BASE_PROMPT_FEATURES
    old.fit(train)
    p = write_artifact(old, tmp_path / "v2.npz")
    data = dict(np.load(p))
    meta = json.loads(str(data["meta"]))
    meta["version"] = 2
    np.savez(tmp_path / "v2.npz", **{**data, "meta": np.array(json.dumps(meta))})
    again = read_artifact(tmp_path / "v2.npz")
    assert again.prompt_features == BASE_PROMPT_FEATURES
    np.testing.assert_allclose(again.score(train), old.score(train))
    meta["prompt_features"] = list(BASE_PROMPT_FEATURES) + ["sentiment"]
    np.savez(tmp_path / "bad.npz", **{**data, "meta": np.array(json.dumps(meta))})
    with pytest.raises(TruecostError, match="sentiment"):
        read_artifact(tmp_path / "bad.npz")


def test_quality_range_is_the_sampling_spread_and_narrows_with_traffic():
    from truecost.routing.calibrate import quality_range

    rng = np.random.default_rng(3)
    n = 4000
    scores = rng.random(n)
    qs = (rng.random(n) < 0.9).astype(float)
    qw = np.where(scores > 0.7, 0.0, qs)  # the weak model fails on the top 30% of scores
    truth = np.where(scores > 0.5, qs, qw).mean() / qs.mean()  # route the top half: every failure covered
    small = quality_range(scores, qw, qs, 0.5, 100)
    large = quality_range(scores, qw, qs, 0.5, 3000)
    assert small[0] <= truth + 1e-9 and large[0] <= truth + 1e-9 and small[2] <= 1.0 + 1e-9
    qw2 = np.where(scores > 0.3, 0.0, qs)  # now routing half leaves a fifth of the traffic failing
    truth2 = np.where(scores > 0.5, qs, qw2).mean() / qs.mean()
    small, large = quality_range(scores, qw2, qs, 0.5, 100), quality_range(scores, qw2, qs, 0.5, 3000)
    assert small[0] < truth2 < small[2] and large[0] < truth2 < large[2]
    assert (large[2] - large[0]) < (small[2] - small[0]) / 3


def test_scored_router_ranks_by_gain_per_dollar_when_given_prices():
    train = _synthetic(300)
    scorer = GapScorer(FeatureSpec(embed=False, categorical=("topic",))).fit(train)
    hard = "prove step by step " * 3 + "x" * 300
    gap = float(scorer.score([Example(hard, 0.0, {"topic": "math"})])[0])
    assert gap > 0
    cheap = ScoredRouter(scorer, "w", "s", threshold=gap / 0.002, extra_cost=lambda r: 0.001)
    dear = ScoredRouter(scorer, "w", "s", threshold=gap / 0.002, extra_cost=lambda r: 0.01)
    request = RouteRequest(hard, metadata={"topic": "math"})
    # the same predicted gain is worth the strong call when it costs little, not when it costs much
    assert cheap.route(request).model == "s" and dear.route(request).model == "w"
    assert "per expected extra $0.010000" in dear.route(request).reason


def test_share_holder_keeps_the_strong_share_when_traffic_drifts():
    from truecost.routing.scorer import ShareHolder

    rng = np.random.default_rng(5)
    fixed_threshold = 0.7  # 30% of uniform(0, 1) scores
    hold = ShareHolder(0.3, fixed_threshold, window=500, warmup=100)
    assert hold.threshold() == fixed_threshold  # no traffic seen yet: the calibrated threshold
    calm, harder = rng.random(2000), rng.random(2000) + 0.4  # then the traffic gets harder
    routed_fixed, routed_held = [], []
    for s in np.concatenate([calm, harder]):
        routed_held.append(hold.strong(float(s)))
        routed_fixed.append(s >= fixed_threshold)
        hold.add(float(s))
    late = slice(2600, None)  # a window after the shift
    assert np.mean(routed_fixed[late]) > 0.65  # a fixed threshold follows the scores up
    assert abs(np.mean(routed_held[late]) - 0.3) < 0.04
    assert len(hold._sorted) == 500 and sorted(hold._recent) == hold._sorted
    with pytest.raises(ValueError, match="between 0 and 1"):
        ShareHolder(1.5, 0.0)


def test_scored_router_reads_a_held_threshold():
    from truecost.routing.scorer import ShareHolder

    train = _synthetic(300)
    scorer = GapScorer(FeatureSpec(embed=False, categorical=("topic",))).fit(train)
    hold = ShareHolder(0.5, fallback=1e9, window=50, warmup=10)
    router = ScoredRouter(scorer, "w", "s", threshold=1e9, hold=hold)
    decisions = [router.route(RouteRequest(e.text, metadata=e.metadata)).model for e in _synthetic(200, seed=2)]
    assert decisions[:10] == ["w"] * 10  # warming up on the calibrated (here: unreachable) threshold
    assert 0.4 < decisions[60:].count("s") / len(decisions[60:]) < 0.6  # many scores tie: shared out at random
    assert "holding a 50% strong share" in router.route(RouteRequest("hi")).reason
