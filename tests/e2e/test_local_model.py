"""The gateway in front of a real local LLM: SmolLM2-135M-Instruct served by llama.cpp."""

from tests.support.requires import need
import socket
import subprocess
import time
from decimal import Decimal

import httpx
import pytest

from tests.support.mock_upstream import ServerThread
from truecost.cli.local_model import server_command
from truecost.gateway.app import build
from truecost.gateway.config import parse_config
from truecost.ledger import LedgerFilter

pytestmark = pytest.mark.slow  # a real local LLM (llama.cpp + SmolLM2)

openai = need("openai", "openai")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def local_model():
    port = _port()
    proc = subprocess.Popen(server_command(port, n_ctx=1024), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(url + "/models", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    else:
        proc.kill()
        raise RuntimeError("llama.cpp server did not start")
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def gateway(local_model, tmp_path):
    config = parse_config(
        {
            "ledger": str(tmp_path / "gw.db"),
            "compute": "aws/c7i.xlarge",
            "upstreams": {"local": {"base_url": local_model, "timeout": 60}},
            "models": {
                "smol": {"candidates": [{"upstream": "local", "model": "SmolLM2-135M-Instruct", "self_hosted": True}]}
            },
        }
    )
    app = build(config)
    with ServerThread(app) as gw:
        yield gw, app


def test_real_local_model_through_the_gateway_is_priced_as_compute(gateway):
    gw, app = gateway
    c = openai.OpenAI(api_key="none", base_url=gw.url + "/v1", max_retries=0)
    raw = c.chat.completions.with_raw_response.create(
        model="smol",
        messages=[{"role": "user", "content": "How do I get a refund?"}],
        max_tokens=24,
        logprobs=True,
        top_logprobs=1,
    )
    resp = raw.parse()
    assert resp.choices[0].message.content.strip()
    assert resp.usage.completion_tokens > 0 and resp.choices[0].logprobs.content  # logprobs for the cascade
    app.state.writer.flush()
    tokens, compute = app.state.store.query(LedgerFilter(request_id=raw.headers["x-request-id"]))
    assert (
        tokens.service == "SmolLM2-135M-Instruct" and tokens.details["tokens"]["output"] == resp.usage.completion_tokens
    )
    assert tokens.cost == 0 and compute.service == "c7i.xlarge" and compute.cost > 0  # tokens free, CPU time not
    assert Decimal(raw.headers["x-truecost-cost-usd"]) == compute.cost


def test_real_local_model_streams_through_the_sdk(gateway):
    gw, app = gateway
    c = openai.OpenAI(api_key="none", base_url=gw.url + "/v1", max_retries=0)
    raw = c.chat.completions.with_raw_response.create(
        model="smol", messages=[{"role": "user", "content": "Say hello."}], max_tokens=12, stream=True
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in raw.parse() if ch.choices)
    assert text.strip()
    app.state.writer.flush()
    tokens, compute = app.state.store.query(LedgerFilter(request_id=raw.headers["x-request-id"]))
    assert tokens.details["usage_estimated_from_chunks"] and tokens.details["tokens"]["output"] > 0
    assert compute.cost > 0


@pytest.mark.parametrize("min_mean_logprob, served", [(-50.0, "SmolLM2-135M-Instruct"), (-1e-6, "gpt-6.2-sol")])
def test_cascade_reads_the_real_local_models_logprobs(local_model, tmp_path, min_mean_logprob, served):
    from tests.support.mock_upstream import make_app

    with ServerThread(make_app()) as strong_upstream:
        config = parse_config(
            {
                "ledger": str(tmp_path / "gw.db"),
                "compute": "aws/c7i.xlarge",
                "upstreams": {
                    "local": {"base_url": local_model, "timeout": 60},
                    "cloud": {"base_url": strong_upstream.url + "/v1"},
                },
                "models": {
                    "smart": {
                        "candidates": [
                            {"upstream": "cloud", "model": "gpt-6.2-sol"},
                            {"upstream": "local", "model": "SmolLM2-135M-Instruct", "self_hosted": True},
                        ],
                        "route": {
                            "strategy": "cascade",
                            "weak": "SmolLM2-135M-Instruct",
                            "strong": "gpt-6.2-sol",
                            "min_mean_logprob": min_mean_logprob,
                        },
                    }
                },
            }
        )
        app = build(config)
        with ServerThread(app) as gw:
            c = openai.OpenAI(api_key="none", base_url=gw.url + "/v1", max_retries=0)
            raw = c.chat.completions.with_raw_response.create(
                model="smart", messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=16
            )
            assert raw.headers["x-truecost-model"] == served and raw.parse().choices[0].message.content.strip()
            app.state.writer.flush()
            events = app.state.store.query(LedgerFilter(request_id=raw.headers["x-request-id"]))
            local = [e for e in events if e.service == "SmolLM2-135M-Instruct"]
            assert local and local[0].details["route_score"] < 0  # a real mean token log-probability
            assert local[0].outcome == ("routed" if served.startswith("Smol") else "escalated")


def test_the_demos_local_model_keeps_no_logits_unless_a_cascade_reads_them(tmp_path):
    from truecost.demo.live import gateway_config, local_llama, needs_logprobs
    from truecost.upstream.llama_local import MODEL_ALIAS, default_threads
    from truecost.upstream.llama_local import server_command as llama_command

    demo = gateway_config("http://127.0.0.1:1/v1", str(tmp_path / "demo.db"), MODEL_ALIAS)["models"]
    assert not needs_logprobs(demo)  # rules routing: nobody reads logprobs
    assert needs_logprobs({**demo, "smart": {"candidates": [], "route": {"strategy": "cascade"}}})
    cmd = llama_command(1, logprobs=False)
    assert cmd[cmd.index("--logits_all") + 1] == "false"
    # generation and the prompt both on half the CPUs: llama.cpp's spinning threads lose on a busy machine
    assert cmd[cmd.index("--n_threads") + 1] == cmd[cmd.index("--n_threads_batch") + 1] == str(default_threads())
    with local_llama(logprobs=False) as url:
        body = {"model": MODEL_ALIAS, "max_tokens": 8, "messages": [{"role": "user", "content": "Say hello."}]}
        answer = httpx.post(url + "/chat/completions", json=body, timeout=120)
        assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] > 0
        asked = httpx.post(url + "/chat/completions", json={**body, "logprobs": True, "top_logprobs": 1}, timeout=120)
        assert asked.status_code != 200  # the server really keeps no logits: only a cascade pays for them
