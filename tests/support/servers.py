"""Session-wide real servers for the contract suites: PostgreSQL 18 + pgvector, Redis Stack.

Started from their PyPI wheels by the tests themselves (no manual step); a server that cannot
start is a failure, never a skip.
"""

from __future__ import annotations

import uuid

import pytest

from truecost.servers.postgres import EmbeddedPostgres
from truecost.servers.redis_stack import RedisStack


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    pg = EmbeddedPostgres(tmp_path_factory.mktemp("pgdata"))
    pg.start()
    yield pg
    pg.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    with RedisStack(tmp_path_factory.mktemp("redis")) as r:
        yield r


def fresh_name(prefix: str = "t") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"
