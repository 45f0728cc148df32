"""A real ``truecost serve`` process for the security suite, and ways to look inside it from outside.

The gateway runs as a subprocess of the test run (the venv's python, ``-m truecost.cli.main serve``) on
127.0.0.1; its stdout and stderr go to one log file the tests grep; the ledger is read straight from the
SQLite file the gateway writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

import httpx
import yaml

REPO = Path(__file__).resolve().parents[2]
OUT_PRICE = Decimal("0.50") / 10**6  # gpt-6-luna, per output token
IN_PRICE = Decimal("0.10") / 10**6
SUCCESS_COST = Decimal("0.0000252")  # one answer of the hostile upstream's usage (100 + 20 cached in, 30 out) on luna


def python() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sha(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def today_utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d")


class Gateway:
    """One ``truecost serve`` subprocess; ``start()`` again after ``stop()``/``kill9()`` restarts it on the same
    config, ledger and log."""

    def __init__(self, workdir: Path, config: dict, env: dict[str, str] | None = None, name: str = "gw") -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.config_path = self.dir / f"{name}.yaml"
        self.log_path = self.dir / f"{name}.log"
        self.ledger_path = Path(config["ledger"])
        self.env = {
            **{k: v for k, v in os.environ.items() if "proxy" not in k.lower()},
            "NO_PROXY": "127.0.0.1,localhost",
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        if os.environ.get("TRUECOST_SECURITY_SRC"):  # run the suite against another checkout's src/ (e.g. an old main)
            self.env["PYTHONPATH"] = os.environ["TRUECOST_SECURITY_SRC"]
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.starts = 0

    # -- life ---------------------------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> "Gateway":
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False), encoding="utf-8")
        self.port = free_port()
        log = open(self.log_path, "ab")
        log.write(f"\n==== start #{self.starts + 1} on port {self.port} ====\n".encode())
        log.flush()
        self.proc = subprocess.Popen(
            [
                python(),
                "-m",
                "truecost.cli.main",
                "serve",
                "--config",
                str(self.config_path),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            cwd=str(self.dir),
            start_new_session=True,
        )
        log.close()
        self.starts += 1
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"truecost serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1.0, trust_env=False).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.kill9()
                raise RuntimeError(f"truecost serve did not answer /healthz in {timeout}s:\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self, timeout: float = 15.0) -> None:
        """A graceful stop (SIGTERM, then SIGKILL if it hangs)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9()

    def kill9(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- logs -----------------------------------------------------------------------------------------
    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def log_tail(self, n: int = 4000) -> str:
        return self.log_text()[-n:]

    # -- the ledger, read from the file the gateway writes ----------------------------------------------
    def rows(self, where: str = "1", params: tuple = ()) -> list[dict[str, Any]]:
        if not self.ledger_path.exists():
            return []
        con = sqlite3.connect(f"file:{self.ledger_path}?mode=ro", uri=True, timeout=5)
        try:
            con.row_factory = sqlite3.Row
            try:
                found = con.execute(f"SELECT * FROM cost_events WHERE {where} ORDER BY ts_us", params).fetchall()
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return []
                raise
        finally:
            con.close()
        out = []
        for r in found:
            d = dict(r)
            d["details"] = json.loads(d.get("details") or "{}")
            d["tags"] = json.loads(d.get("tags") or "{}")
            d["cost"] = None if d.get("cost") is None else Decimal(d["cost"])
            out.append(d)
        return out

    def dump_all_tables(self) -> str:
        """Every row of every table of the ledger database, as text (for secret scans)."""
        if not self.ledger_path.exists():
            return ""
        con = sqlite3.connect(f"file:{self.ledger_path}?mode=ro", uri=True, timeout=5)
        try:
            names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            parts = []
            for n in names:
                parts.append(f"## {n}")
                parts.extend(repr(row) for row in con.execute(f'SELECT * FROM "{n}"'))
            return "\n".join(parts)
        finally:
            con.close()

    def tables(self) -> list[str]:
        if not self.ledger_path.exists():
            return []
        con = sqlite3.connect(f"file:{self.ledger_path}?mode=ro", uri=True, timeout=5)
        try:
            return [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        finally:
            con.close()

    def wait_rows(
        self, where: str, params: tuple = (), *, at_least: int = 1, timeout: float = 10.0, settle: float = 0.0
    ) -> list[dict]:
        """Poll until ``at_least`` rows match (then, with ``settle``, until their count stays put that long)."""
        deadline = time.monotonic() + timeout
        rows = self.rows(where, params)
        while len(rows) < at_least and time.monotonic() < deadline:
            time.sleep(0.1)
            rows = self.rows(where, params)
        if settle:
            stable_since = time.monotonic()
            while time.monotonic() - stable_since < settle and time.monotonic() < deadline + settle:
                time.sleep(0.1)
                again = self.rows(where, params)
                if len(again) != len(rows):
                    rows, stable_since = again, time.monotonic()
        return rows

    def spent(self, field: str, value: str) -> Decimal:
        """The ledger's known cost for one attribution value today (UTC), as the budget guard should see it."""
        day_start = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
        rows = self.rows(f"{field} = ? AND ts_us >= ?", (value, int(day_start.timestamp() * 1_000_000)))
        return sum((r["cost"] for r in rows if r["cost"] is not None), Decimal(0))

    def client_rows(self, client_id: str) -> list[dict]:
        """Ledger rows of the request a client sent with ``x-request-id: <client_id>`` (a unique string)."""
        return [
            r
            for r in self.rows("details LIKE ?", (f"%{client_id}%",))
            if r["details"].get("client_request_id") == client_id
        ]

    def budget_spent(self, field: str, value: str) -> Decimal:
        """What the budget guard must hold as spent today: the ledger's known costs plus, for rows whose cost is
        unknown, the amount charged to the budget instead (``budget_charge_usd``, as the README documents)."""
        day_start = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
        rows = self.rows(f"{field} = ? AND ts_us >= ?", (value, int(day_start.timestamp() * 1_000_000)))
        return sum(
            (
                r["cost"] if r["cost"] is not None else Decimal(str(r["details"].get("budget_charge_usd") or 0))
                for r in rows
            ),
            Decimal(0),
        )

    def request_ids(self, field: str, value: str) -> set[str]:
        return {r["request_id"] for r in self.rows(f"{field} = ?", (value,))}


def http(timeout: float = 30.0, **kw) -> httpx.Client:
    return httpx.Client(timeout=timeout, trust_env=False, **kw)


def openai_client(gw: Gateway, key: str, timeout: float = 30.0):
    import openai

    return openai.OpenAI(
        api_key=key,
        base_url=gw.url + "/v1",
        max_retries=0,
        timeout=timeout,
        http_client=httpx.Client(trust_env=False, timeout=timeout),
    )


def chat_body(model: str, content: str, **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def unique(prefix: str = "cid") -> str:
    import uuid

    return f"{prefix}-{uuid.uuid4().hex}"


def post_chat(
    gw: Gateway,
    key: str | None,
    body: Any,
    *,
    headers: dict | None = None,
    timeout: float = 30.0,
    raw: bytes | None = None,
) -> httpx.Response:
    h = {"content-type": "application/json", **({"authorization": f"Bearer {key}"} if key else {}), **(headers or {})}
    with http(timeout) as c:
        return c.post(
            gw.url + "/v1/chat/completions", content=raw if raw is not None else json.dumps(body).encode(), headers=h
        )


def poll(fn: Callable[[], Any], timeout: float = 10.0, interval: float = 0.1) -> Any:
    """Call ``fn`` until it returns something truthy (or the time is up; then its last value)."""
    deadline = time.monotonic() + timeout
    value = fn()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = fn()
    return value


@contextlib.contextmanager
def ui_login(gw: Gateway, key: str):
    """``with ui_login(gw, key) as client``: a client holding a dashboard session for ``key``."""
    with http(follow_redirects=False) as c:
        r = c.post(gw.url + "/ui/login", data={"key": key})
        assert r.status_code in (200, 302, 303), (r.status_code, r.text[:300])
        yield c


def ui_pages(client: httpx.Client, gw: Gateway, extra: list[str] = (), limit: int = 40) -> dict[str, httpx.Response]:
    """/ui/ and every /ui page it links to (one level), plus ``extra`` paths."""
    pages: dict[str, httpx.Response] = {}
    todo = ["/ui/", *extra]
    while todo and len(pages) < limit:
        path = todo.pop(0)
        if path in pages:
            continue
        r = client.get(gw.url + path)
        pages[path] = r
        if path == "/ui/" and r.status_code == 200:
            for href in re.findall(r'href="(/ui/[^"#?]*)', r.text):
                if href not in pages and "logout" not in href:
                    todo.append(href)
    return pages
