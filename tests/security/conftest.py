"""Fixtures of the security suite: a hostile raw-socket upstream and a real ``truecost serve`` process.

One gateway serves the whole session (each test uses its own key, cost center and marker, so tests do not
share budgets or counts); tests that restart a gateway or need other settings start their own with
``make_gateway``. Every process started here is stopped at teardown.
"""

from __future__ import annotations

import pytest

from tests.security.harness import Gateway, chat_body, post_chat
from tests.security.sec_config import CACHE_KEYS, UPSTREAM_KEY, cache_config, main_config
from tests.security.upstreams import HostileUpstream, refusing_socket


@pytest.fixture(scope="session")
def upstream():
    with HostileUpstream() as up:
        yield up


@pytest.fixture(scope="session")
def shared_upstream():
    from tests.support.hostile_upstream import HostileUpstream as SharedHostileUpstream

    with SharedHostileUpstream() as up:
        yield up


@pytest.fixture(scope="session")
def refused_port():
    s = refusing_socket()
    yield s.getsockname()[1]
    s.close()


@pytest.fixture(scope="session")
def gw(tmp_path_factory, upstream, refused_port, shared_upstream):
    tmp = tmp_path_factory.mktemp("gateway")
    g = Gateway(
        tmp, main_config(tmp, upstream.url, refused_port, shared_upstream.url), env={"TC_UPSTREAM_KEY": UPSTREAM_KEY}
    )
    try:
        g.start()
        yield g
    finally:
        g.stop()


@pytest.fixture(scope="session")
def cache_gw(tmp_path_factory, upstream):
    """A second gateway with the semantic cache on (the cache changes the request path)."""
    tmp = tmp_path_factory.mktemp("cache-gateway")
    g = Gateway(tmp, cache_config(tmp, upstream.url), env={"TC_UPSTREAM_KEY": UPSTREAM_KEY}, name="cache")
    try:
        g.start()
        # the first lookup loads the embedding model (seconds): do it here, not inside a timed test
        post_chat(
            g,
            CACHE_KEYS["tenant"],
            chat_body("chat", "warm-up: what is the time in Lisbon?", max_tokens=5),
            timeout=120,
        )
        yield g
    finally:
        g.stop()


@pytest.fixture
def make_gateway(tmp_path):
    """``make_gateway(config, name=...)`` -> a started Gateway with the upstream key in its environment."""
    started: list[Gateway] = []

    def make(config: dict, name: str = "gw", start: bool = True) -> Gateway:
        g = Gateway(tmp_path, config, env={"TC_UPSTREAM_KEY": UPSTREAM_KEY}, name=name)
        started.append(g)
        return g.start() if start else g

    yield make
    for g in started:
        g.kill9()
