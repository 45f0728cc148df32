"""The LiteLLM logger against the real litellm, in its own environment (.venv-litellm, made by
scripts/setup_integrations.sh): the SDK (sync, async, streaming, embeddings, a failure) and the
proxy, both talking to the loopback mock. LiteLLM is told to use its bundled price map, so
nothing leaves the machine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import time
from decimal import Decimal
from pathlib import Path

import httpx

from tests.support.mock_upstream import ServerThread, free_port, make_app
from tests.unit.integrations.spans import write_prices
from truecost.ledger.sqlite import SQLiteLedgerStore

ROOT = Path(__file__).resolve().parents[2]
PY = ROOT / ".venv-litellm" / "bin" / "python"
ENV = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR", "NO_PROXY": "127.0.0.1,localhost"}
if not PY.exists():  # a missing environment fails the run loudly; it is never a silent skip
    raise ImportError(f"{PY} is missing: run scripts/setup_integrations.sh (LiteLLM's own venv; scripts/test.sh does)")

SDK_DRIVER = textwrap.dedent("""
    import asyncio, json, sys, time
    import litellm
    from truecost.integrations.litellm import ledger_logger

    mock, db, prices = sys.argv[1:4]
    logger = ledger_logger(db, prices_files=(prices,), environment="test")
    litellm.callbacks = [logger]
    kw = dict(api_base=mock + "/v1", api_key="sk-test")
    msgs = [{"role": "user", "content": "How long does a refund take?"}]
    litellm.completion(model="openai/tc-chat", messages=msgs, metadata={"cost_center": "cc-1", "tags": ["faq"]},
                       user="u-42", **kw)
    text = "".join(c.choices[0].delta.content or "" for c in litellm.completion(
        model="openai/tc-chat", messages=msgs, stream=True, stream_options={"include_usage": True}, **kw))
    assert "refund" in text, text
    litellm.embedding(model="openai/tc-embed", input=["refund", "card"], **kw)
    try:
        litellm.completion(model="openai/fail-500", messages=msgs, num_retries=0, **kw)
    except Exception:
        pass

    async def main():
        await litellm.acompletion(model="openai/tc-chat", messages=msgs, **kw)
        stream = await litellm.acompletion(model="openai/tc-chat", messages=msgs, stream=True,
                                           stream_options={"include_usage": True}, **kw)
        async for _ in stream:
            pass
        deadline = time.time() + 30  # async success events run as tasks on this loop
        while logger.writer._submitted < 6 and time.time() < deadline:
            await asyncio.sleep(0.1)
    asyncio.run(main())
    deadline = time.time() + 30
    while logger.writer._submitted < 6 and time.time() < deadline:
        time.sleep(0.1)
    assert logger.writer.flush(30)
    print(json.dumps({"submitted": logger.writer._submitted, "errors": logger.errors}))
""")


def _events(db: Path):
    store = SQLiteLedgerStore(db)
    try:
        return store.query()
    finally:
        store.close()


def test_litellm_sdk_calls_are_priced_streaming_included(tmp_path):
    (tmp_path / "driver.py").write_text(SDK_DRIVER)
    db = tmp_path / "ledger.db"
    with ServerThread(make_app()) as mock:
        out = subprocess.run(
            [str(PY), str(tmp_path / "driver.py"), mock.url, str(db), write_prices(tmp_path)],
            capture_output=True,
            text=True,
            timeout=300,
            env=ENV,
            cwd=tmp_path,
        )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["errors"] == 0
    events = _events(db)
    gen = [e for e in events if e.step == "generate" and e.cost is not None]
    # mock usage: 120 prompt (20 cached), 30 completion: 100 x 1 + 20 x 0.1 + 30 x 4 per 1M; sync, stream, async, async stream
    assert [e.cost for e in gen] == [Decimal("0.000222")] * 4
    assert sum(1 for e in gen if e.details.get("streamed")) == 2
    (emb,) = [e for e in events if e.step == "embed"]
    assert emb.cost == Decimal("3.2E-7")  # 16 tokens x 0.02/1M
    failed = [e for e in events if e.cost is None]
    assert len(failed) == 1 and "call failed" in failed[0].details["unknown_reason"]
    first = min(gen, key=lambda e: e.ts)
    assert (first.attribution.cost_center, first.attribution.user) == ("cc-1", "u-42")
    assert dict(first.attribution.tags)["litellm_tags"] == "faq"
    assert all(e.source == "litellm" and e.attribution.environment == "test" for e in events)
    assert len({e.request_id for e in events}) == len(events)  # one request per call


def test_litellm_proxy_with_the_logger_in_its_callbacks(tmp_path):
    db = tmp_path / "ledger.db"
    prices = write_prices(tmp_path)
    (tmp_path / "truecost_callbacks.py").write_text(
        "from truecost.integrations.litellm import ledger_logger\n"
        f"handler = ledger_logger({str(db)!r}, prices_files=({prices!r},), feature='proxy')\n"
    )
    port = free_port()
    with ServerThread(make_app()) as mock:
        (tmp_path / "config.yaml").write_text(
            json.dumps(
                {
                    "model_list": [
                        {
                            "model_name": "tc-chat",
                            "litellm_params": {
                                "model": "openai/tc-chat",
                                "api_base": f"{mock.url}/v1",
                                "api_key": "sk-mock",
                            },
                        }
                    ],
                    "litellm_settings": {"callbacks": "truecost_callbacks.handler"},
                    "general_settings": {"master_key": "sk-master"},
                }
            )
        )
        log = open(tmp_path / "proxy.log", "wb")
        proxy = subprocess.Popen(
            [
                str(PY.parent / "litellm"),
                "--config",
                "config.yaml",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--num_workers",
                "1",
            ],
            cwd=tmp_path,
            env=ENV,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.time() + 180
            while True:
                try:
                    if httpx.get(f"{url}/health/liveliness", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert proxy.poll() is None and time.time() < deadline, (tmp_path / "proxy.log").read_text()[-3000:]
                time.sleep(0.5)
            headers = {"authorization": "Bearer sk-master"}
            body = {
                "model": "tc-chat",
                "messages": [{"role": "user", "content": "refund?"}],
                "user": "u-9",
                "metadata": {"tags": ["proxy-test"], "tenant": "acme"},
            }
            assert httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=60).status_code == 200
            with httpx.stream(
                "POST",
                f"{url}/v1/chat/completions",
                headers=headers,
                timeout=60,
                json={**body, "stream": True, "stream_options": {"include_usage": True}},
            ) as r:
                assert r.status_code == 200 and "refund" in "".join(r.iter_text())
            deadline = time.time() + 60
            while len(_events(db)) < 2 and time.time() < deadline:
                time.sleep(0.5)
        finally:
            os.killpg(proxy.pid, signal.SIGTERM)
            proxy.wait(30)
            log.close()
    events = _events(db)
    assert [e.cost for e in events] == [Decimal("0.000222")] * 2, (tmp_path / "proxy.log").read_text()[-3000:]
    for e in events:
        assert e.source == "litellm" and e.attribution.feature == "proxy"
        assert e.attribution.tenant == "acme" and e.attribution.user == "u-9"
