"""A trained router's inputs at the gateway: metadata fields come from the headers the route maps, or it
refuses to start (no silent fall-back to the average for a feature the scorer was trained on)."""

import json
import random

import httpx
import pytest
from click.testing import CliRunner

from tests.support.mock_upstream import ServerThread, make_app
from truecost.cli.main import cli
from truecost.errors import ConfigError
from truecost.gateway.app import build
from truecost.gateway.config import hash_key, parse_config

KEY = "sk-test-router"
WEAK, STRONG = "gpt-3.5-turbo-1106", "gpt-4-1106-preview"


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """Calibrated on traffic whose prompts look alike: the product area decides who copes."""
    tmp = tmp_path_factory.mktemp("router")
    rng = random.Random(3)
    data = tmp / "labelled.jsonl"
    with open(data, "w") as fh:
        for i in range(400):
            area = "billing" if i % 2 else "greeting"
            weak_ok = 1 if area == "greeting" or rng.random() < 0.1 else 0
            fh.write(
                json.dumps(
                    {
                        "prompt": f"Customer message {i}: please help me",
                        "prompt_tokens": 8,
                        "area": area,
                        "models": {
                            WEAK: {"quality": weak_ok, "output_tokens": 20},
                            STRONG: {"quality": 1, "output_tokens": 20},
                        },
                    }
                )
                + "\n"
            )
    (tmp / "labelled.schema.json").write_text(json.dumps({"features": ["area"]}))
    res = CliRunner().invoke(
        cli,
        [
            "router",
            "calibrate",
            str(data),
            "--weak",
            WEAK,
            "--strong",
            STRONG,
            "--kind",
            "trained",
            "--max-strong-share",
            "0.5",
            "--out",
            str(tmp / "r.npz"),
        ],
        catch_exceptions=False,
    )
    assert json.loads(res.output)["artifact"] == str(tmp / "r.npz")
    return tmp / "r.npz"


def _config(tmp_path, upstream, route):
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
                    "route": {"strategy": "trained", "weak": "gpt-6-luna", "strong": "gpt-6.2-sol", **route},
                }
            },
            "keys": [{"name": "team-a", "key_sha256": hash_key(KEY)}],
        }
    )


def _served_by(gw, text, headers):
    r = httpx.post(
        gw.url + "/v1/chat/completions",
        timeout=10,
        headers={"authorization": f"Bearer {KEY}", **headers},
        json={"model": "routed", "messages": [{"role": "user", "content": text}]},
    )
    assert r.status_code == 200, r.text
    return r.headers["x-truecost-model"]


def test_an_artifact_reading_metadata_the_route_does_not_map_refuses_to_start(tmp_path, artifact):
    with ServerThread(make_app()) as upstream:
        with pytest.raises(
            ConfigError, match=r"reads the request metadata area.*metadata_headers: \{area: x-truecost-area\}"
        ):
            build(_config(tmp_path, upstream, {"artifact": str(artifact)}))
        with pytest.raises(ConfigError, match="maps tier, which its scorer does not read"):
            build(
                _config(
                    tmp_path,
                    upstream,
                    {"artifact": str(artifact), "metadata_headers": {"area": "x-area", "tier": "x-tier"}},
                )
            )


def test_mapped_headers_supply_the_metadata_the_scorer_was_trained_on(tmp_path, artifact):
    with ServerThread(make_app()) as upstream:
        app = build(
            _config(tmp_path, upstream, {"artifact": str(artifact), "metadata_headers": {"area": "X-Product-Area"}})
        )
        assert app.state.pipeline.routers["routed"].metadata_headers == (("area", "x-product-area"),)
        with ServerThread(app) as gw:
            text = "Customer message 9001: please help me"
            assert _served_by(gw, text, {"x-product-area": "billing"}) == "gpt-6.2-sol"
            assert _served_by(gw, text, {"x-product-area": "greeting"}) == "gpt-6-luna"
            # the header is read under the route's name only: the same value elsewhere is not the field
            assert _served_by(gw, text, {"x-truecost-area": "billing"}) == _served_by(gw, text, {})
