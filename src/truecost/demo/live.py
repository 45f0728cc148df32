"""The whole demo, live: a local model, the gateway in front of it, and the RAG bot replaying
customer queries twice, first with cache and router off, then on.

Everything runs on this machine: SmolLM2-135M-Instruct behind llama.cpp (or, with
``local_model=False``, the replay upstream, labelled as such), the gateway on a free port
in a background thread, one SQLite ledger shared by the bot and the gateway.

The strong tier is the same local model standing in for ``gpt-6.2-sol`` and priced at that
model's list price: the demo cannot call a hosted flagship, and says so in its output.
"""

from __future__ import annotations

import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from truecost.gateway.config import hash_key, parse_config

TENANTS = ("acme", "globex", "initech")
TENANT_SHARE = (0.6, 0.3, 0.1)  # traffic is not spread evenly over customers either
BASELINE, OPTIMISED = "support-bot/baseline", "support-bot/optimised"
STRONG, WEAK = "gpt-6.2-sol", "SmolLM2-135M-Instruct"
CACHE_POLICY, CACHE_VERIFIERS = "online", "query"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """uvicorn in a daemon thread on 127.0.0.1."""

    def __init__(self, app, port: int | None = None) -> None:
        import uvicorn

        self.port = port or free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error", access_log=False, lifespan="on")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def local_llama(threads: int | None = None, timeout: float = 180.0, logprobs: bool = False) -> Iterator[str]:
    """Start llama.cpp's server with SmolLM2; yield its base URL (…/v1). ``logprobs``: for a cascade route."""
    import httpx

    from truecost.upstream.llama_local import server_command

    port = free_port()
    log = tempfile.TemporaryFile()  # llama.cpp logs a lot: a pipe nobody reads would fill up and block it
    cmd = server_command(port, n_ctx=1024, threads=threads, logprobs=logprobs)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"the local model exited: {log.read().decode(errors='replace')[-800:]}")
            try:
                if httpx.get(url + "/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"the local model did not answer within {timeout:.0f} s")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def tenant_keys() -> dict[str, str]:
    return {t: f"sk-demo-{t}" for t in TENANTS}


def split_rows(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(earlier rows, traffic rows): BANKING77's train and test splits, or halves of a file without splits."""
    train = [r for r in rows if r.get("split") == "train"]
    test = [r for r in rows if r.get("split") == "test"]
    if train and test:
        return train, test
    half = len(rows) // 2
    return rows[:half], rows[half:]


def gateway_config(
    upstream_url: str, ledger: str, wire_model: str, cache_embedder: str = "minilm", cache_policy: str = CACHE_POLICY
) -> dict[str, Any]:
    keys = tenant_keys()
    return {
        "ledger": ledger,
        "compute": "aws/c7i.xlarge",
        "upstreams": {"local": {"base_url": upstream_url, "timeout": 120, "max_retries": 1}},
        "models": {
            # cache and router off: every request to the strong tier
            BASELINE: {"candidates": [{"upstream": "local", "model": STRONG, "upstream_model": wire_model}]},
            # cache and router on: questions up to ~64 characters to the small self-hosted model, longer ones to the strong tier
            OPTIMISED: {
                "candidates": [
                    {"upstream": "local", "model": WEAK, "upstream_model": wire_model, "self_hosted": True},
                    {"upstream": "local", "model": STRONG, "upstream_model": wire_model},
                ],
                "route": {"strategy": "rules", "weak": WEAK, "strong": STRONG, "max_weak_tokens": 16},
            },
        },
        "keys": [
            {
                "name": t,
                "key_sha256": hash_key(k),
                "tenant": t,
                "cost_center": "cx-support",
                "team": "support-bot",
                # the bot opened the request itself (the SDK): the gateway's steps join it under the same id
                "allow_attribution_headers": ["request_id"],
            }
            for t, k in keys.items()
        ],
        "budgets": [{"cost_center": "cx-support", "period": "month", "limit_usd": 50, "hard": False}],
        # the online policy learns from the query-pair verifier: no labelled pairs, no calibration before the run
        # (SmolLM2-135M's answers to two paraphrases agree about as little as to two different questions, so
        # answer agreement would teach it nothing)
        "cache": {
            "enabled": True,
            "embedder": cache_embedder,
            "policy": cache_policy,
            "target_error": 0.01,
            "equivalence": CACHE_VERIFIERS,
        },
    }


@dataclass
class PassStats:
    name: str
    requests: int = 0
    hits: int = 0
    false_hits: int = 0
    errors: int = 0
    served: Counter = field(default_factory=Counter)
    header_cost: float = 0.0
    unknown_cost: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "cache_hits": self.hits,
            "cache_hit_rate": self.hits / self.requests if self.requests else None,
            "false_hits": self.false_hits,
            "false_hit_rate": self.false_hits / self.requests if self.requests else None,
            "errors": self.errors,
            "served_by": dict(self.served),
            "seconds": round(self.seconds, 1),
        }


def make_generate(client, alias: str, bypass_cache: bool, feature: str) -> Callable:
    keys = tenant_keys()

    def generate(system: str, question: str, req) -> tuple[str, dict]:
        tenant = req.attribution.tenant
        headers = {"authorization": f"Bearer {keys[tenant]}", "x-request-id": req.id, "x-truecost-feature": feature}
        if bypass_cache:
            headers["x-truecost-cache"] = "bypass"
        # one paragraph: an answer that ends at its stop sequence is complete and may be cached;
        # one cut at max_tokens is truncated and never is
        body = {
            "model": alias,
            "temperature": 0,
            "max_tokens": 64,
            "stop": ["\n\n"],
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
        }
        resp = client.post("/v1/chat/completions", json=body, headers=headers)
        if resp.status_code != 200:
            raise RuntimeError(f"gateway answered {resp.status_code}: {resp.text[:300]}")
        return resp.json()["choices"][0]["message"]["content"] or "", dict(resp.headers)

    return generate


def replay_pass(
    pipeline,
    rows: list[dict],
    stats: PassStats,
    answers_by_text: dict[str, str] | None,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Answer every row; with ``answers_by_text``, judge cache hits against the known intents."""
    from truecost.types import Attribution

    import random

    tenants = random.Random(7).choices(TENANTS, weights=TENANT_SHARE, k=len(rows))  # the same in both passes
    t0 = time.perf_counter()
    for i, row in enumerate(rows):
        attribution = Attribution(
            cost_center="cx-support", team="support-bot", feature=stats.name, tenant=tenants[i], environment="demo"
        )
        try:
            _req, answer, _top, headers = pipeline.answer(row["text"], attribution)
        except RuntimeError:
            stats.errors += 1
            continue
        stats.requests += 1
        stats.served[headers.get("x-truecost-model", "?")] += 1
        if headers.get("x-truecost-cache") == "hit":
            stats.hits += 1
            source_intent = (answers_by_text or {}).get(f"{attribution.tenant}\x00{answer}")
            stats.false_hits += source_intent is not None and (source_intent != row["intent"])
        elif answers_by_text is not None:
            answers_by_text.setdefault(f"{attribution.tenant}\x00{answer}", row["intent"])
        if progress:
            progress(i + 1)
    stats.seconds = time.perf_counter() - t0


class ReplayLabel:
    """How the replay upstream answered, for every line of output that names the upstream."""

    def __init__(self, counter) -> None:
        self.counter = counter

    def __str__(self) -> str:
        return (
            f"REPLAY upstream (--no-local-model; no model runs): {self.counter.recorded} answers recorded from "
            f"SmolLM2-135M-Instruct, {self.counter.template} from a template; tokens counted with a real tokenizer"
        )


def needs_logprobs(models: dict[str, Any]) -> bool:
    """Whether a model alias routes by cascade: the only reader of the weak model's logprobs."""
    return any((m.get("route") or {}).get("strategy") == "cascade" for m in models.values())


def start_stack(
    stack: ExitStack,
    local_model: bool,
    db: Path,
    count_tokens,
    cache_embedder: str = "minilm",
    cache_policy: str = CACHE_POLICY,
):
    """Upstream + gateway; returns (gateway ServerThread, upstream label)."""
    from truecost.gateway.app import build
    from truecost.upstream.llama_local import MODEL_ALIAS

    label: str | ReplayLabel  # a fixed text, or the replay's counts when shown
    if local_model:
        # llama.cpp keeps every token's logits only if a cascade will ask for logprobs: an answer with them
        # costs about 3x the CPU here, and keeping them costs some even when nobody asks
        logprobs = needs_logprobs(gateway_config("http://127.0.0.1:1/v1", str(db), MODEL_ALIAS)["models"])
        upstream_url, wire, label = (
            stack.enter_context(local_llama(logprobs=logprobs)),
            MODEL_ALIAS,
            "SmolLM2-135M-Instruct via llama.cpp (local)",
        )
    else:
        from truecost.demo.replay import REPLAY_MODEL, ReplayCounter, create_replay_app

        counter = ReplayCounter()
        replay = stack.enter_context(ServerThread(create_replay_app(count_tokens, counter)))
        upstream_url, wire = replay.url + "/v1", REPLAY_MODEL
        label = ReplayLabel(counter)
    config = parse_config(gateway_config(upstream_url, str(db), wire, cache_embedder, cache_policy), "demo gateway")
    gateway = stack.enter_context(ServerThread(build(config)))
    return gateway, label, config
