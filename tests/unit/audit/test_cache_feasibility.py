import json
from decimal import Decimal

import numpy as np
import pytest

from truecost.audit.cache_feasibility import (
    components,
    figures_at,
    nearest_earlier,
    recommend,
    size_distribution,
    top_clusters,
)
from truecost.audit.cache_report import SavingsInputs, projected_savings, run_cache_audit
from truecost.audit.sources import AuditInputError, QueryRow, ReadStats, read_queries
from truecost.pricing.catalog import PriceCatalog


def table_embedder(vectors: dict[str, list[float]]):
    def embed(texts):
        return np.array([vectors[t] for t in texts], dtype=np.float32)

    return embed


def brute_force(vecs):
    v = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    nn, sim = [-1], [-1.0]
    for i in range(1, len(v)):
        s = v[:i] @ v[i]
        nn.append(int(s.argmax()))
        sim.append(float(s.max()))
    return np.array(nn), np.array(sim)


@pytest.mark.parametrize("batch", [1, 3, 7, 64])
def test_nearest_earlier_matches_brute_force_across_batches(batch):
    rng = np.random.default_rng(1)
    vecs = rng.normal(size=(40, 8)).astype(np.float32)
    rows = [QueryRow(str(i), f"q{i}") for i in range(40)]
    nb = nearest_earlier(rows, table_embedder({f"q{i}": vecs[i] for i in range(40)}), batch=batch)
    nn, sim = brute_force(vecs)
    assert nb.index.tolist() == nn.tolist()
    assert np.allclose(nb.sim, sim, atol=1e-3)  # past vectors are kept as float16


def test_approximate_index_agrees_with_exact_on_clustered_data():
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(50, 32))
    vecs = (centres[rng.integers(0, 50, 3000)] + 0.15 * rng.normal(size=(3000, 32))).astype(np.float32)
    rows = [QueryRow(str(i), f"q{i}") for i in range(3000)]
    embed = table_embedder({f"q{i}": vecs[i] for i in range(3000)})
    exact = nearest_earlier(rows, embed, batch=256)
    approx = nearest_earlier(rows, embed, batch=256, exact_below=0)
    for t in (0.8, 0.9):
        a, b = figures_at(exact, t), figures_at(approx, t)
        assert abs(a.hit_rate - b.hit_rate) < 0.01 and abs(a.clustered_share - b.clustered_share) < 0.01


def test_figures_by_hand():
    # a b c d e: b ~ a (0.95), c ~ b (0.9), d new, e ~ d (0.8)
    class NB:
        index = np.array([-1, 0, 1, -1, 3])
        sim = np.array([-1.0, 0.95, 0.9, -1.0, 0.8], dtype=np.float32)

    nb = NB()
    assert components(nb, 0.85).tolist() == [0, 0, 0, 3, 4]
    f = figures_at(nb, 0.85, labels=["x", "x", "y", "z", "z"])
    assert f.hit_rate == pytest.approx(2 / 5)
    assert f.clustered_share == pytest.approx(3 / 5)
    assert f.clusters == 3
    assert f.false_hit_rate == pytest.approx(1 / 5)  # c's neighbour b has another label
    assert figures_at(nb, 0.75).clustered_share == 1.0
    dist = {d["size"]: d for d in size_distribution(nb, 0.85)}
    assert dist["1"]["clusters"] == 2 and dist["3-5"]["queries"] == 3
    rows = [QueryRow(str(i), t, lb) for i, (t, lb) in enumerate(zip("abcde", "xxyzz"))]
    top = top_clusters(rows, nb, 0.85)
    assert top[0]["size"] == 3 and top[0]["examples"] == ["a", "b", "c"] and top[0]["purity"] == pytest.approx(2 / 3)


def test_oos_label_is_never_a_correct_hit():
    class NB:
        index = np.array([-1, 0])
        sim = np.array([-1.0, 0.99], dtype=np.float32)

    assert figures_at(NB(), 0.9, labels=["oos", "oos"]).false_hit_rate == 0.5


def test_recommendation_rule_thresholds():
    assert recommend(0.31, 0.85, None)["level"] == "strong"
    assert recommend(0.30, 0.85, None)["level"] == "moderate"
    assert recommend(0.05, 0.85, None)["level"] == "weak"
    assert "wrong answer" in recommend(0.5, 0.85, 0.02)["recommendation"]


def test_savings_priced_from_catalog_and_unknown_model_is_reported_not_zero():
    cat = PriceCatalog.bundled()
    s = projected_savings(cat, SavingsInputs("gpt-4o-mini", 1000, 100, 200), 0.5, 10)
    # gpt-4o-mini: $0.15 in, $0.60 out per 1M -> 100 * 0.15e-6 + 200 * 0.6e-6 = 0.000135
    assert s["cost_per_request_usd"] == Decimal("0.000135")
    assert float(s["monthly_avoided_usd"]) == pytest.approx(0.000135 * 30_000 * 0.5, abs=0.01)
    unknown = projected_savings(cat, SavingsInputs("no-such-model"), 0.5, 10)
    assert unknown["monthly_net_savings_usd"] is None and unknown["unknown_price"]


def test_unlabelled_audit_writes_borderline_pairs(tmp_path):
    vec = {
        "refund policy": [1, 0, 0],
        "money back": [0.86, 0.51, 0],
        "cancel order": [0, 1, 0],
        "cancel sub": [0, 0.85, 0.53],
    }
    rows = [QueryRow(str(i), t) for i, t in enumerate(vec)]
    r = run_cache_audit(rows, ReadStats(rows=4, kept=4), table_embedder(vec), "table", (0.85,), out_dir=tmp_path)
    assert r["labelled"] is False and r["thresholds"][0]["false_hit_rate"] is None
    pairs = (tmp_path / "borderline_pairs.csv").read_text().splitlines()
    assert pairs[0].startswith("similarity") and len(pairs) == 1 + r["borderline_pairs"]["count"] >= 2
    json.dumps(r, default=str)


def test_read_queries_formats_and_bad_input(tmp_path):
    j = tmp_path / "q.jsonl"
    j.write_bytes(
        b'{"id": "1", "text": "hello", "intent": "greet"}\n{"id": "1", "text": "caf\xe9"}\nnot json\n'
        b'{"other": 1}\n{"id": "3", "text": ""}\n' + b'{"id": "4", "text": "' + b"x" * 100_000 + b'"}\n'
    )
    rows, st = read_queries(j, label_field="intent")
    assert [r.text[:4] for r in rows] == ["hell", "caf\xe9", "xxxx"]
    assert st.skipped == {"invalid_json": 1, "no_text_field": 1, "empty_text": 1}
    assert st.notes == {"decoded_latin1": 1, "duplicate_id": 1, "truncated": 1}
    assert len(rows[2].text) == 8000
    c = tmp_path / "q.csv"
    c.write_text("id,question\n1,hi\n")
    with pytest.raises(AuditInputError, match="no column 'text'.*question"):
        read_queries(c)
    assert read_queries(c, text_field="question")[0][0].text == "hi"
    e = tmp_path / "empty.txt"
    e.write_text("\n\n")
    with pytest.raises(AuditInputError, match="no queries found"):
        read_queries(e)
    t = tmp_path / "q.txt"
    t.write_text("one\ntwo\n")
    assert [r.text for r in read_queries(t)[0]] == ["one", "two"]
