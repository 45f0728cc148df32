"""What the cache remembers of the hits it served: for client feedback and the regenerate pattern.

A hit looked up with a request id is remembered (the last ``capacity`` hits, least recent
forgotten first) under ``(owner, request id)``: only the same owner finds it again, so one
tenant can neither report on another's hits nor learn whether an id exists. Each hit is taken
out once: by a report, or by a regenerate.

*Regenerate*: the same client asks again soon after a hit, for a request the same entry would
answer (or for the same request, skipping the cache). The client is the owner plus the request's
end-user id (OpenAI's ``safety_identifier`` or ``user``, hashed), so two end users behind one
service key are two clients when the service sends that field. ``regenerate_by="user"``: a
request without that field is never a regenerate (its owner may stand for many people);
``"key"``: the owner alone is the client when the request names no end user.
"""

from __future__ import annotations

import hashlib
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

from truecost.cache.panel import VerifierPanel
from truecost.cache.policy import Policy
from truecost.cache.request import NotCacheable, cache_key
from truecost.cache.verifier import PairView


REGENERATE_BY = ("user", "key")


@dataclass(frozen=True, slots=True)
class Report:
    """A client's verdict that reached a remembered hit."""

    request_id: str
    status: str  # the hit it was about: hit_exact | hit_semantic
    learned: bool  # taught the policy: a semantic hit, learning allowed, a policy that learns


@dataclass(slots=True)
class ServedHit:
    request_id: str
    owner: str | None
    client: tuple[str | None, str | None]  # (owner, hashed end-user id)
    result: Any  # the LookupResult of the hit
    text: str  # the request's embedded text
    at: float
    entry_id: int
    fingerprint: str


def end_user(body: Mapping[str, Any]) -> str | None:
    """The request's end-user id (``safety_identifier``, else ``user``), hashed: any length in, 32 characters out."""
    for name in ("safety_identifier", "user"):
        value = body.get(name)
        if isinstance(value, str) and value:
            return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return None


class ServedHits:
    """The hits served under request ids, by owner; and, per client, the latest hit of each entry and request.

    Bounded by count (``capacity``) and by the bytes the hits hold (``max_bytes``: their texts and
    vectors; answers are never kept, see ``slim``). When full, the owner holding the most bytes
    forgets its oldest hit: one key asking the same question over and over (exact hits cost it
    nothing) forgets its own hits, never another tenant's.

    Not thread-safe on its own: ``SemanticCache`` calls it under its lock.
    """

    def __init__(self, capacity: int = 10_000, max_bytes: int = 64 << 20) -> None:
        self.capacity, self.max_bytes = capacity, max_bytes
        self.nbytes = 0
        self._hits: dict[tuple[str | None, str], ServedHit] = {}
        self._owned: dict[str | None, OrderedDict[str, int]] = {}  # owner -> request id -> bytes, oldest first
        self._owner_bytes: dict[str | None, int] = {}
        self._by_entry: dict[tuple, tuple[str | None, str]] = {}  # (client, entry id) -> (owner, request id)
        self._by_request: dict[tuple, tuple[str | None, str]] = {}  # (client, fingerprint) -> (owner, request id)

    def remember(self, hit: ServedHit) -> None:
        ref = (hit.owner, hit.request_id)
        self.take(*ref)
        size = _size(hit)
        self._hits[ref] = hit
        self._owned.setdefault(hit.owner, OrderedDict())[hit.request_id] = size
        self._owner_bytes[hit.owner] = self._owner_bytes.get(hit.owner, 0) + size
        self.nbytes += size
        self._by_entry[(hit.client, hit.entry_id)] = ref
        self._by_request[(hit.client, hit.fingerprint)] = ref
        while self._hits and (len(self._hits) > self.capacity or self.nbytes > self.max_bytes):
            owner = max(self._owner_bytes, key=self._owner_bytes.__getitem__)  # owners are keys: few
            self.take(owner, next(iter(self._owned[owner])))

    def take(self, owner: str | None, request_id: str) -> ServedHit | None:
        """The hit served to ``owner`` under ``request_id``, forgotten as it is returned (None: no such hit)."""
        hit = self._hits.pop((owner, request_id), None)
        if hit is not None:
            owned = self._owned[owner]
            size = owned.pop(request_id)
            self.nbytes -= size
            self._owner_bytes[owner] -= size
            if not owned:
                del self._owned[owner], self._owner_bytes[owner]
            self._unindex(hit)
        return hit

    def take_recent(
        self, client: tuple, since: float, *, entry_id: int | None = None, fingerprint: str | None = None
    ) -> ServedHit | None:
        """The client's latest hit on this entry (or for this exact request) served at or after ``since``, taken."""
        if entry_id is not None:
            ref = self._by_entry.get((client, entry_id))
        else:
            ref = self._by_request.get((client, fingerprint))
        hit = self._hits.get(ref) if ref is not None else None
        if ref is None or hit is None or hit.at < since:
            return None
        return self.take(ref[0], ref[1])

    def _unindex(self, hit: ServedHit) -> None:
        ref = (hit.owner, hit.request_id)
        for index, k in (
            (self._by_entry, (hit.client, hit.entry_id)),
            (self._by_request, (hit.client, hit.fingerprint)),
        ):
            if index.get(k) == ref:
                del index[k]

    def __len__(self) -> int:
        return len(self._hits)


def slim(result: Any) -> Any:
    """What a report needs of a hit (status, decision, vectors, texts): a copy without the answer, the
    candidates or the key, so that remembered hits never pin answers (a shared store returns a copy per hit)."""
    entry = result.entry
    if entry is not None:
        entry = replace(entry, answer={}, usage={}, doc_ids=())
    return replace(result, entry=entry, key=None, candidates=[])


def _size(hit: ServedHit) -> int:
    """The bytes a remembered hit holds, roughly: its texts and vectors, and a fixed share for the rest."""
    entry, vector = getattr(hit.result, "entry", None), getattr(hit.result, "vector", None)
    size = 1024 + sys.getsizeof(hit.text) + (vector.nbytes if vector is not None else 0)
    if entry is not None:
        size += sys.getsizeof(entry.text) + (entry.vector.nbytes if entry.vector is not None else 0)
    return size


class HitFeedback:
    """``SemanticCache``'s side of client feedback: verdicts on served hits, and regenerates."""

    served: ServedHits
    regenerate_window: float | None
    regenerate_by: str
    policy: Policy
    verifiers: VerifierPanel | None
    stats: dict[str, int]
    clock: Callable[[], float]
    _lock: threading.RLock

    def report(
        self,
        request_id: str,
        correct: bool,
        *,
        owner: str | None = None,
        learn: bool = True,
        score_verifiers: bool = True,
    ) -> Report | None:
        """A client's verdict on a hit served to ``owner`` under ``request_id``: evidence for the policy.

        Each hit is taken once; None when there is no such hit (never served to this owner, not
        a hit, already reported, or forgotten: the last ``remember_hits`` hits are kept). A
        wrong semantic hit is negative evidence exactly where the policy answers; an exact hit
        teaches the policy nothing (it answered this very request). ``learn=False``: counted
        only. ``score_verifiers``: the lookup-time verifiers are scored against the verdict --
        sound only when verdicts arrive both ways (a sample of wrong reports alone would teach
        the panel that its verifiers disagree with clients whenever they called a pair the same).
        """
        with self._lock:
            hit = self.served.take(owner, request_id)
            if hit is None:
                self.stats["feedback_unknown"] += 1
                return None
            self.stats["feedback_right" if correct else "feedback_wrong"] += 1
            learned = learn and self._learn(hit, bool(correct), score_verifiers)
            return Report(request_id, hit.result.status, learned)

    def feedback(self, request_id: str, correct: bool, *, owner: str | None = None) -> bool:
        """``report`` with learning and verifier scoring: True when the hit was found."""
        return self.report(request_id, correct, owner=owner) is not None

    def skipped(self, body: Mapping[str, Any], scope: str | None = None, *, owner: str | None = None) -> str | None:
        """A request that skipped the cache (the gateway's ``x-truecost-cache: bypass``). When the same client
        was served this very request from the cache within ``regenerate_window``, that hit counts as wrong
        (once); its request id is returned."""
        client = (owner, end_user(body))
        window = self._window_for(client)
        if window is None:
            return None
        try:
            key = cache_key(body, scope)
        except NotCacheable:
            return None
        now = self.clock()
        with self._lock:
            hit = self.served.take_recent(client, now - window, fingerprint=key.fingerprint)
            if hit is None:
                return None
            self._regenerated(hit)
            return hit.request_id

    def _window_for(self, client: tuple) -> float | None:
        """The regenerate window for this client: None when there is none, or the client is not identified."""
        return self.regenerate_window if client[1] is not None or self.regenerate_by == "key" else None

    def _regenerated(self, hit: ServedHit) -> None:
        """The client asked again: its earlier hit was wrong. One-sided evidence, so the verifiers are not scored."""
        self.stats["regenerate"] += 1
        self._learn(hit, False, score_verifiers=False)

    def _learn(self, hit: ServedHit, correct: bool, score_verifiers: bool) -> bool:
        result = hit.result
        if result.status != "hit_semantic" or result.decision is None or not self.policy.learns:
            return False
        self.policy.report(result.decision, correct)
        panel = self.verifiers
        if score_verifiers and panel is not None and result.entry is not None and panel.lookup_sources:
            pair = PairView(hit.text, result.entry.text, result.vector, result.entry.vector)
            panel.observe([v for s in panel.lookup_sources for v in s.verify([pair]) if v is not None], correct)
        return True
