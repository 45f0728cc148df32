"""The gateway against upstreams that fail: timeouts, a stream cut midway, a client hanging up, 429s,
connection resets, slow drips and stalled streams. Each failure is an error in OpenAI shape (or a fallback),
never a hang, and what was spent is on record."""

import time
from decimal import Decimal

import httpx
import pytest

from tests.support.gateway_stack import KEY, client, ledger_events, mock_state, stack  # noqa: F401
from tests.support.mock_upstream import ServerThread, make_app
from tests.support.requires import need
from truecost.gateway.app import build
from truecost.gateway.config import parse_config

openai = need("openai", "openai")


def test_upstream_timeout_is_an_error_not_a_hang(stack):
    gw, _, _ = stack
    with pytest.raises(openai.APIStatusError) as info:
        client(gw).chat.completions.create(model="slow", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 502 and "timed out" in info.value.message


def test_stream_cut_midway_ends_with_an_error_event_and_partial_cost(stack):
    gw, app, _ = stack
    raw = client(gw).chat.completions.with_raw_response.create(
        model="cut", messages=[{"role": "user", "content": "x"}], stream=True
    )
    with pytest.raises(openai.APIError):
        for _ in raw.parse():
            pass
    (e,) = ledger_events(app, raw.headers["x-request-id"])
    assert e.outcome == "error" and e.details.get("usage_estimated_from_chunks") and e.cost > 0


def test_client_disconnect_mid_stream_records_the_partial_cost(stack):
    gw, app, _ = stack
    with httpx.stream(
        "POST",
        gw.url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {KEY}"},
        json={"model": "drip", "stream": True, "messages": [{"role": "user", "content": "x"}]},
    ) as r:
        request_id = r.headers["x-request-id"]
        lines = r.iter_lines()
        got = [next(lines) for _ in range(3)]  # two chunks (and a blank separator), then hang up
        assert got[0].startswith("data: ")
    deadline = time.time() + 5
    events = []
    while time.time() < deadline and not events:
        events = ledger_events(app, request_id)
        time.sleep(0.1)
    (e,) = events
    assert e.outcome == "error" and e.details.get("usage_estimated_from_chunks") and 0 < e.cost
    # the upstream call was cancelled, not left running
    deadline = time.time() + 5
    while time.time() < deadline and not mock_state(stack).get("cancelled"):
        time.sleep(0.05)
    assert mock_state(stack).get("cancelled") == 1


def test_429_is_retried_honouring_retry_after_then_passed_on(tmp_path):
    with ServerThread(make_app()) as upstream:
        config = parse_config(
            {
                "ledger": str(tmp_path / "gw.db"),
                "upstreams": {"mock": {"base_url": upstream.url + "/v1", "max_retries": 2}},
                "models": {
                    "busy": {"candidates": [{"upstream": "mock", "model": "gpt-6-luna", "upstream_model": "fail-429"}]}
                },
            }
        )
        with ServerThread(build(config)) as gw:
            r = httpx.post(
                gw.url + "/v1/chat/completions", json={"model": "busy", "messages": [{"role": "user", "content": "x"}]}
            )
        assert r.status_code == 429 and r.json()["error"]["code"] == "upstream_failed"
        assert upstream.server.config.app.state.calls["n"] == 3  # the first try and two retries


class ResetServer:
    """Accepts TCP connections and resets them at once (SO_LINGER 0): a peer that drops the line."""

    def __init__(self) -> None:
        import socket
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        import socket
        import struct

        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.recv(65536)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()


def test_connection_reset_falls_back_to_the_next_candidate_and_is_recorded(tmp_path):
    reset = ResetServer()
    with ServerThread(make_app()) as upstream:
        config = parse_config(
            {
                "ledger": str(tmp_path / "gw.db"),
                "upstreams": {
                    "flaky": {"base_url": f"http://127.0.0.1:{reset.port}/v1", "timeout": 2, "max_retries": 1},
                    "mock": {"base_url": upstream.url + "/v1", "timeout": 2},
                },
                "models": {
                    "support": {
                        "candidates": [
                            {"upstream": "flaky", "model": "gpt-6.2-sol"},
                            {"upstream": "mock", "model": "gpt-6-luna"},
                        ]
                    }
                },
            }
        )
        app = build(config)
        with ServerThread(app) as gw:
            r = httpx.post(
                gw.url + "/v1/chat/completions",
                timeout=10,
                json={"model": "support", "messages": [{"role": "user", "content": "hello"}]},
            )
            assert r.status_code == 200 and r.headers["x-truecost-model"] == "gpt-6-luna"
            assert reset.accepted >= 1
            events = ledger_events(app, r.headers["x-request-id"])
            failed = [e for e in events if e.outcome == "error"]
            assert failed and failed[0].service == "gpt-6.2-sol" and failed[0].cost is None  # the reset is on record
            # a failed attempt's cost is not known (never silently 0), so the request's total is reported as unknown
            assert r.headers["x-truecost-cost-usd"] == "unknown"
            assert [e.outcome for e in events if e.service == "gpt-6-luna"] == ["ok"]


def test_slow_drip_stream_longer_than_the_timeouts_is_not_cut(stack):
    """The upstream drips (0.2 s a chunk, ~2.2 s in all) past its 1 s first-byte timeout: a stream that keeps
    flowing is never cut by a total timeout, only by an idle gap."""
    gw, app, _ = stack
    raw = client(gw).chat.completions.with_raw_response.create(
        model="drip", messages=[{"role": "user", "content": "x"}], stream=True, stream_options={"include_usage": True}
    )
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert text.startswith("The refund")
    (e,) = ledger_events(app, raw.headers["x-request-id"])
    assert e.outcome == "ok" and e.cost == Decimal("0.0000252")


def test_a_stalled_stream_is_cut_by_the_idle_timeout_and_charged(tmp_path):
    from tests.support.hostile_upstream import HostileUpstream

    with HostileUpstream() as up:
        config = parse_config(
            {
                "ledger": str(tmp_path / "gw.db"),
                "upstreams": {
                    "h": {"base_url": up.url + "/v1", "first_byte_timeout": 2, "idle_timeout": 0.5, "max_retries": 0}
                },
                "models": {
                    "stall": {"candidates": [{"upstream": "h", "model": "gpt-6-luna", "upstream_model": "stall"}]}
                },
            }
        )
        app = build(config)
        with ServerThread(app) as gw:
            raw = client(gw).chat.completions.with_raw_response.create(
                model="stall", messages=[{"role": "user", "content": "x"}], stream=True
            )
            got = []
            started = time.time()
            with pytest.raises(openai.APIError, match="timed out"):
                for c in raw.parse():
                    got.append(c)
            assert len(got) == 2 and time.time() - started < 5
            (e,) = ledger_events(app, raw.headers["x-request-id"])
            assert e.outcome == "error" and e.details.get("usage_estimated_from_chunks") and e.cost > 0
