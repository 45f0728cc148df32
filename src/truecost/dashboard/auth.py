"""Who may look at the dashboard: principals, the login seam, and server-side sessions.

A ``DashboardAuth`` turns a presented key into a ``Principal`` (or refuses it). An admin sees
everything; any other principal sees only its own tenant's and cost center's data, and must
name both (a scoped principal without them is refused at login: nothing to restrict it to).
Sessions live in memory on the server; the browser holds only a random token.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol

HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Principal:
    name: str
    admin: bool
    tenant: str | None = None
    cost_center: str | None = None

    @property
    def scope(self) -> tuple[tuple[str, str], ...]:
        """The (field, value) pairs every query of this principal is restricted to; () for an admin."""
        if self.admin:
            return ()
        return (("tenant", self.tenant or ""), ("cost_center", self.cost_center or ""))

    @property
    def usable(self) -> bool:
        return self.admin or bool(self.tenant and self.cost_center)


class DashboardAuth(Protocol):
    def login(self, presented_key: str) -> Principal | None:
        """The principal this key logs in as, or None. Compare in constant time."""


def key_sha256(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _check_digest(digest: str) -> str:
    d = digest.strip().lower()
    if not HEX64.fullmatch(d):
        raise ValueError("a key digest is 64 hex characters (sha256)")
    return d


class KeyTableAuth:
    """A fixed table of key digests (sha256 hex) to principals; every entry is compared, in constant time."""

    def __init__(self, entries: Iterable[tuple[str, Principal]]) -> None:
        self._entries = [(_check_digest(d).encode(), p) for d, p in entries]

    def login(self, presented_key: str) -> Principal | None:
        if not presented_key:
            return None
        presented = key_sha256(presented_key).encode()
        found = None
        for digest, principal in self._entries:  # no early exit: the time does not depend on which matched
            if hmac.compare_digest(presented, digest) and found is None:
                found = principal
        return found


class StaticKeyAuth(KeyTableAuth):
    """One admin key, known by its sha256: the standalone ``truecost dashboard`` and the demo."""

    def __init__(self, admin_key_sha256: str, name: str = "admin") -> None:
        super().__init__([(admin_key_sha256, Principal(name=name, admin=True))])


class DenyAllAuth:
    """No credentials configured: nobody logs in (the dashboard fails closed)."""

    def login(self, presented_key: str) -> Principal | None:
        return None


class SessionStore:
    """Server-side sessions: random 32-byte tokens (the store keeps only their sha256), an expiry,
    and a bound on how many are kept (the oldest go first)."""

    def __init__(
        self, ttl_seconds: float = 12 * 3600, max_sessions: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if ttl_seconds <= 0 or max_sessions < 1:
            raise ValueError("ttl_seconds > 0 and max_sessions >= 1")
        self.ttl = ttl_seconds
        self.max_sessions = max_sessions
        self._clock = clock
        self._sessions: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _id(token: str) -> str:
        return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()

    def create(self, principal: Principal) -> str:
        token = secrets.token_urlsafe(32)
        now = self._clock()
        with self._lock:
            self._expire(now)
            while len(self._sessions) >= self.max_sessions:
                self._sessions.popitem(last=False)
            self._sessions[self._id(token)] = (principal, now + self.ttl)
        return token

    def get(self, token: str | None) -> Principal | None:
        if not token or len(token) > 128:
            return None
        sid = self._id(token)
        with self._lock:
            entry = self._sessions.get(sid)
            if entry is None:
                return None
            if entry[1] <= self._clock():
                del self._sessions[sid]
                return None
            return entry[0]

    def revoke(self, token: str | None) -> None:
        if token and len(token) <= 128:
            with self._lock:
                self._sessions.pop(self._id(token), None)

    def revoke_principal(self, name: str) -> int:
        """End every session of the principal called ``name`` (its key was revoked or rotated); returns how many."""
        with self._lock:
            gone = [sid for sid, (p, _) in self._sessions.items() if p.name == name]
            for sid in gone:
                del self._sessions[sid]
        return len(gone)

    def _expire(self, now: float) -> None:
        # insertion order is expiry order (one ttl for all): drop from the front while expired
        while self._sessions:
            sid, (_, expires) = next(iter(self._sessions.items()))
            if expires > now:
                break
            del self._sessions[sid]

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)


def one_time_key() -> str:
    """A random login key for a dashboard started without one (printed once, kept only as its hash)."""
    return "tcd-" + secrets.token_urlsafe(24)
