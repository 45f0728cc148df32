"""The gateway end-to-end suites' shared stack: a gateway over a loopback mock upstream, its keys, and the
helpers that read the ledger behind a response (used by tests/e2e/test_gateway*.py)."""

import pytest

from tests.support.mock_upstream import ServerThread, make_app
from tests.support.requires import need
from truecost.gateway.app import build
from truecost.gateway.config import hash_key, parse_config
from truecost.ledger import LedgerFilter

openai = need("openai", "openai")
KEY, REVOKED = "sk-test-team-a", "sk-old"


def mock_state(stack):
    """The mock upstream's call record (``n``, ``cancelled``) behind a ``stack``."""
    return stack[2].server.config.app.state.calls


@pytest.fixture
def stack(tmp_path):
    with ServerThread(make_app()) as upstream:
        config = parse_config(
            {
                "ledger": str(tmp_path / "gw.db"),
                "upstreams": {"mock": {"base_url": upstream.url + "/v1", "timeout": 1.0, "max_retries": 1}},
                "models": {
                    "support": {"candidates": [{"upstream": "mock", "model": "gpt-6-luna"}]},
                    "routed": {
                        "candidates": [
                            {"upstream": "mock", "model": "gpt-6.2-sol"},
                            {"upstream": "mock", "model": "gpt-6-luna"},
                        ],
                        "route": {"strategy": "rules", "weak": "gpt-6-luna", "strong": "gpt-6.2-sol"},
                    },
                    "embed": {"candidates": [{"upstream": "mock", "model": "text-embedding-3-small"}]},
                    "with-fallback": {
                        "candidates": [
                            {"upstream": "mock", "model": "gpt-6.2-sol", "upstream_model": "fail-500"},
                            {"upstream": "mock", "model": "gpt-6-luna"},
                        ]
                    },
                    "all-fail": {
                        "candidates": [{"upstream": "mock", "model": "gpt-6-luna", "upstream_model": "fail-500"}]
                    },
                    "cut": {"candidates": [{"upstream": "mock", "model": "gpt-6-luna", "upstream_model": "cut"}]},
                    "slow": {"candidates": [{"upstream": "mock", "model": "gpt-6-luna", "upstream_model": "slow"}]},
                    "drip": {"candidates": [{"upstream": "mock", "model": "gpt-6-luna", "upstream_model": "drip"}]},
                },
                "keys": [
                    {"name": "team-a", "key_sha256": hash_key(KEY), "cost_center": "cx", "tenant": "acme"},
                    {"name": "old", "key_sha256": hash_key(REVOKED), "revoked": True},
                    {"name": "budgeted", "key_sha256": hash_key("sk-budget"), "tenant": "budgeted"},
                ],
                "budgets": [{"tenant": "budgeted", "period": "day", "limit_usd": "0.0001"}],
                "max_body_bytes": 50_000,
            }
        )
        app = build(config)
        with ServerThread(app) as gw:
            yield gw, app, upstream


@pytest.fixture
def cached_stack(tmp_path):
    with ServerThread(make_app()) as upstream:
        config = parse_config(
            {
                "ledger": str(tmp_path / "gw.db"),
                "upstreams": {"mock": {"base_url": upstream.url + "/v1", "timeout": 2.0, "max_retries": 0}},
                "models": {
                    "support": {"candidates": [{"upstream": "mock", "model": "gpt-6-luna"}]},
                    "all-fail": {
                        "candidates": [{"upstream": "mock", "model": "gpt-6-luna", "upstream_model": "fail-500"}]
                    },
                },
                "cache": {"enabled": True, "embedder": "static", "policy": "fixed:0.97"},
                "compute": "aws/c7i.xlarge",  # prices the lookup's CPU time
            }
        )
        app = build(config)
        with ServerThread(app) as gw:
            yield gw, app, upstream


def client(gw, key=KEY):
    return openai.OpenAI(api_key=key, base_url=gw.url + "/v1", max_retries=0)


def ledger_events(app, request_id):
    app.state.writer.flush()
    return app.state.store.query(LedgerFilter(request_id=request_id))
