"""Fixtures shared by every suite: the real PostgreSQL and Redis servers (started on first use)."""

from tests.support.servers import postgres_server, redis_server  # noqa: F401
