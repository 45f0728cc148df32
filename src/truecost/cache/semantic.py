"""The cache: exact tier, then semantic tier (Embedder -> VectorIndex -> Policy -> EntryStore).

    cache = SemanticCache(embedder, index, entries, policy, verifier)
    result = cache.lookup(body, "acme", request_id="r-1", owner="key:support")  # hit or miss, with timings
    if not result.hit:
        answer = call_the_model(body)
        cache.store(result, answer, status=200, usage=..., doc_ids=("kb-17",))
    cache.feedback("r-1", correct=False, owner="key:support")  # the client says the hit was wrong

``verifier`` is one ``Verifier`` (``truecost.cache.verifier``), a list of them (most trusted
first) or a ``VerifierPanel``: lookup-time sources (the query-pair verifier) score every
candidate before the policy decides, and after a miss the sources judge the fresh request
against the nearest classes, which is what the online policy learns from.

The second argument of ``lookup`` is the hard partition, an opaque string: the gateway
passes the key's tenant, else ``key:<key name>``, else ``anonymous``. Entries never cross
partitions, nor scopes (see ``truecost.cache.request``: every request field not known to
leave the answer unchanged is part of the scope).

Only complete, successful answers are stored, and never a refusal written as plain text
(``truecost.cache.refusal``; ``refusal_patterns=None`` disables that check). Every entry
records the knowledge-base version and the documents that produced it, so
``invalidate(doc_ids=...)`` and ``set_kb_version`` drop exactly the affected entries.

Client feedback (``truecost.cache.served``): a hit looked up with a ``request_id`` is remembered
with its ``owner``, and only that owner may report on it, once (``report``/``feedback``). With
``regenerate_window`` set, the same client asking again within that many seconds for a request
the same entry would answer (or skipping the cache for the same request: ``skipped``) reports
the earlier hit wrong, and that lookup answers ``regenerate``: not a hit, and nothing is stored.
The client is the owner and the request's end user (``user``/``safety_identifier``); with
``regenerate_by="user"`` (the default) a request naming no end user is never a regenerate, since
one owner (a service's key) may stand for many people asking the same popular question.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence, cast

import numpy as np

from truecost.cache.entries import CacheEntry, EntryStore, SharedEntryStore
from truecost.cache.index import VectorIndex
from truecost.cache.panel import VerifierPanel, as_panel
from truecost.cache.policy import Candidate, Decision, Policy
from truecost.cache.refusal import DEFAULT_PATTERNS, RefusalDetector
from truecost.cache.request import CacheKey, NotCacheable, cache_key, cacheable_response
from truecost.cache.served import REGENERATE_BY, HitFeedback, ServedHit, ServedHits, end_user, slim
from truecost.cache.verifier import PairView, Verdict, Verifier, answer_text


@dataclass(slots=True)
class LookupResult:
    status: str  # "hit_exact", "hit_semantic", "miss", "bypass", "regenerate"
    key: CacheKey | None
    entry: CacheEntry | None = None
    similarity: float | None = None
    decision: Decision | None = None
    vector: np.ndarray | None = None
    embed_ms: float = 0.0
    search_ms: float = 0.0
    decide_ms: float = 0.0
    reason: str | None = None
    candidates: list[Candidate] = field(default_factory=list)
    regenerate_of: str | None = None  # "regenerate": the request id of the hit the client asked again after

    @property
    def hit(self) -> bool:
        return self.status.startswith("hit")


@dataclass
class CacheLimits:
    max_entries: int | None = None
    max_bytes: int | None = None
    ttl_seconds: float | None = None


class SemanticCache(HitFeedback):
    def __init__(
        self,
        embedder,
        index: VectorIndex,
        entries: EntryStore,
        policy: Policy,
        verifier: Verifier | Sequence[Verifier] | VerifierPanel | None = None,
        limits: CacheLimits | None = None,
        k: int = 10,
        kb_version: str | None = None,
        clock=time.time,
        refusal_patterns: Iterable[str] | RefusalDetector | None = DEFAULT_PATTERNS,
        remember_hits: int = 10_000,
        remember_bytes: int = 64 << 20,
        regenerate_window: float | None = None,
        regenerate_by: str = "user",
    ) -> None:
        self.embedder, self.index, self.entries, self.policy = embedder, index, entries, policy
        self.verifiers = as_panel(verifier)
        self.limits = limits or CacheLimits()
        self.k, self.kb_version, self.clock = k, kb_version, clock
        # refusals written as text are not stored; None (or an empty list) disables the check
        if refusal_patterns is None or isinstance(refusal_patterns, RefusalDetector):
            self.refusals = refusal_patterns
        else:
            self.refusals = RefusalDetector(refusal_patterns)
        self._exact: dict[str, int] = {}
        self._lru: OrderedDict[int, int] = OrderedDict()  # entry id -> bytes, least recently used first
        self._by_doc: dict[str, set[int]] = {}
        self._by_scope: dict[str, set[int]] = {}
        self._bytes = 0
        # random 62-bit ids: several gateway replicas share one index and entry store without collisions
        self._ids = _random_ids()
        self._next_class = _random_ids()
        self._lock = threading.RLock()
        self._kb_checked = float("-inf")
        self.verifications = 0
        self.served = ServedHits(remember_hits, remember_bytes)
        self.regenerate_window = regenerate_window or None  # seconds; None (or 0): no regenerate detection
        if regenerate_by not in REGENERATE_BY:
            raise ValueError(f"regenerate_by must be {' or '.join(REGENERATE_BY)}, got {regenerate_by!r}")
        self.regenerate_by = regenerate_by
        # refused: answers not stored (any reason); refused_refusal: of those, refusals (field or plain text)
        self.stats = {
            "hit_exact": 0,
            "hit_semantic": 0,
            "miss": 0,
            "bypass": 0,
            "stored": 0,
            "refused": 0,
            "refused_refusal": 0,
            "feedback_right": 0,
            "feedback_wrong": 0,
            "feedback_unknown": 0,
            "regenerate": 0,
        }

    # -- lookup -------------------------------------------------------------------------
    def lookup(
        self,
        body: Mapping[str, Any],
        scope: str | None = None,
        *,
        tenant: str | None = None,
        request_id: str | None = None,
        owner: str | None = None,
    ) -> LookupResult:
        """Look ``body`` up within the partition ``scope`` (an opaque string compared exactly).

        ``tenant=`` is the former name of ``scope``, kept for callers that pass it by keyword.
        ``request_id``: a hit is remembered under it and ``owner`` (who was served: the gateway
        passes its key), so ``report`` can take that owner's verdict on it. With
        ``regenerate_window``, a hit on an entry the same client was served within the window is
        answered ``regenerate`` instead, and the earlier hit counts as wrong.
        """
        if tenant is not None:
            if scope is not None and scope != tenant:
                raise TypeError("lookup() got both scope and tenant; pass the partition once, as scope")
            scope = tenant
        try:
            key = cache_key(body, scope)
        except NotCacheable as exc:
            self.stats["bypass"] += 1
            return LookupResult("bypass", None, reason=str(exc))
        asker = (request_id, owner, (owner, end_user(body)))
        now = self.clock()
        with self._lock:
            self._refresh_kb_version(now)
            eid = self._exact.get(key.fingerprint)
            entry = self._live(eid, now) if eid is not None else None
            if entry is not None:
                return self._serve(LookupResult("hit_exact", key, entry, 1.0), now, asker)
        if key.text is None:
            self.stats["miss"] += 1
            return LookupResult("miss", key, reason=key.reason)
        return self._semantic(key, now, asker)

    def _semantic(self, key: CacheKey, now: float, asker: tuple) -> LookupResult:
        t0 = time.perf_counter()
        vector = self.embedder.embed_batch([key.text])[0]
        t1 = time.perf_counter()
        if not np.isfinite(vector).all() or not np.any(vector):
            self.stats["miss"] += 1
            return LookupResult("miss", key, reason="embedder returned an invalid vector", embed_ms=(t1 - t0) * 1e3)
        with self._lock:
            found = self.index.search(vector, self.k, key.scope)
            t2 = time.perf_counter()
            live = [
                (e, sim)
                for entry_id, sim in found
                if (e := self._live(entry_id, now)) is not None and e.scope == key.scope
            ]  # belt and braces: the index partitions already
            scores = self._pair_scores(key.text, vector, [e for e, _ in live])
            candidates = [
                Candidate(e.id, sim, e.class_id if e.class_id is not None else -e.id, p)
                for (e, sim), p in zip(live, scores)
            ]
            decision = self.policy.decide(vector, candidates)
            t3 = time.perf_counter()
            entry = self.entries.get(decision.entry_id) if decision.hit and decision.entry_id is not None else None
            if entry is not None:
                sim = next(c.similarity for c in candidates if c.entry_id == decision.entry_id)
                hit = LookupResult("hit_semantic", key, entry, sim, decision, vector, candidates=candidates)
                return self._serve(_timed(hit, t0, t1, t2, t3), now, asker)
        self.stats["miss"] += 1
        top = candidates[0].similarity if candidates else None
        miss = LookupResult("miss", key, None, top, decision, vector, reason=decision.reason, candidates=candidates)
        return _timed(miss, t0, t1, t2, t3)

    def _serve(self, result: LookupResult, now: float, asker: tuple) -> LookupResult:
        """A hit, served and remembered; or a regenerate, when the same client was served this entry just now."""
        request_id, owner, client = asker
        entry, key = result.entry, result.key
        assert entry is not None and key is not None
        window = self._window_for(client)
        if window is not None:
            earlier = self.served.take_recent(client, now - window, entry_id=entry.id)
            if earlier is not None:
                self._regenerated(earlier)
                result.status, result.entry, result.regenerate_of = "regenerate", None, earlier.request_id
                result.reason = f"the same client asked again {now - earlier.at:.1f} s after a hit on this entry"
                return result
        entry.hits += 1
        entry.last_hit_at = now
        if entry.id in self._lru:
            self._lru.move_to_end(entry.id)
        self.stats[result.status] += 1
        if request_id is not None:
            self.served.remember(
                ServedHit(request_id, owner, client, slim(result), key.text or "", now, entry.id, key.fingerprint)
            )
        return result

    def _refresh_kb_version(self, now: float) -> None:
        """Pick up a version another replica set (shared stores only; at most once a KB_VERSION_REFRESH_S)."""
        if not self.entries.shared or now - self._kb_checked < KB_VERSION_REFRESH_S:
            return
        self._kb_checked = now
        shared = cast(SharedEntryStore, self.entries).get_meta("kb_version")
        if shared is not None:
            self.kb_version = shared

    def _stale(self, e: CacheEntry, now: float) -> bool:
        """Expired, or produced from another knowledge-base version."""
        return (e.expires_at is not None and e.expires_at <= now) or (
            self.kb_version is not None and e.kb_version is not None and e.kb_version != self.kb_version
        )

    def _register(self, e: CacheEntry) -> None:
        """Make a stored entry findable: exact map, vector index, policy classes, LRU, doc and scope maps."""
        self._exact[e.fingerprint] = e.id
        if e.vector is not None:
            self.index.upsert([e.id], e.vector[None, :], e.scope)
            if e.class_id is not None:
                self.policy.add_member(e.class_id, e.vector)
        size = e.nbytes
        self._lru[e.id] = size
        self._bytes += size
        for d in e.doc_ids:
            self._by_doc.setdefault(d, set()).add(e.id)
        self._by_scope.setdefault(e.scope, set()).add(e.id)

    def _live(self, entry_id: int, now: float) -> CacheEntry | None:
        e = self.entries.get(entry_id)
        if e is None:
            return None
        if self._stale(e, now):
            self._drop([entry_id])
            return None
        return e

    # -- store --------------------------------------------------------------------------
    def store(
        self,
        lookup: LookupResult,
        response: Mapping[str, Any],
        *,
        status: int = 200,
        usage: Mapping[str, Any] | None = None,
        model: str | None = None,
        doc_ids: Sequence[str] = (),
        ttl_seconds: float | None = None,
    ) -> CacheEntry | None:
        """Store a fresh answer after a miss. Returns the entry, or None with the refusal counted.

        Only after a miss: a hit, a bypass or a regenerate (the client refused the entry it was
        served; the entry stays, the policy has learned the hit was wrong) store nothing."""
        if lookup.key is None or lookup.status != "miss":
            return None
        refusal = cacheable_response(response, status, self.refusals)
        if refusal is not None:
            self.stats["refused"] += 1
            if refusal.startswith("refusal"):
                self.stats["refused_refusal"] += 1
            return None
        key = lookup.key
        ttl = ttl_seconds if ttl_seconds is not None else self.limits.ttl_seconds
        now = self.clock()
        asked = self._ask_budgeted(lookup, dict(response))  # an LLM judge takes seconds: never under the lock
        with self._lock:
            class_id = self._classify(lookup, dict(response), asked)
            entry = CacheEntry(
                id=next(self._ids),
                scope=key.scope,
                fingerprint=key.fingerprint,
                text=key.text or "",
                answer=dict(response),
                vector=lookup.vector,
                model=model or response.get("model"),
                usage=dict(usage or response.get("usage") or {}),
                kb_version=self.kb_version,
                doc_ids=tuple(doc_ids),
                class_id=class_id,
                created_at=now,
                expires_at=now + ttl if ttl else None,
            )
            self.entries.put(entry)
            self._register(entry)
            self.stats["stored"] += 1
            self._evict()
        return entry

    def _pair(self, lookup: LookupResult, fresh: str, rep_id: int) -> PairView | None:
        rep = self.entries.get(rep_id)
        if rep is None:
            return None
        text = lookup.key.text if lookup.key is not None else ""
        return PairView(text or "", rep.text, lookup.vector, rep.vector, fresh, answer_text(rep.answer))

    def _ask_budgeted(self, lookup: LookupResult, response: dict) -> list[Verdict] | None:
        """The budgeted sources' verdicts on the first candidate class, asked before the store takes the lock."""
        decision, panel = lookup.decision, self.verifiers
        if decision is None or not decision.check_classes or panel is None or not panel.budgeted_sources:
            return None
        pair = self._pair(lookup, answer_text(response), decision.check_classes[0][1])
        return [] if pair is None else panel.prejudge(pair)

    def _classify(self, lookup: LookupResult, response: dict, asked: list[Verdict] | None = None) -> int:
        """Judge the fresh request against the candidate classes; learn from the first judgement.

        The first class is judged by every source (budgeted ones too: it is the pair the policy
        learns from, and ``asked`` holds their verdicts when they were asked ahead); the others
        only by the cheap ones, until one is judged the same.
        """
        decision, panel = lookup.decision, self.verifiers
        if decision is None or not decision.check_classes or panel is None or not panel.judges:
            return next(self._next_class)
        fresh = answer_text(response)
        first: float | None = None
        for i, (class_id, rep_id) in enumerate(decision.check_classes):
            pair = self._pair(lookup, fresh, rep_id)
            if pair is None:
                continue
            self.verifications += 1
            ahead = [asked] if i == 0 and asked is not None else None
            verdict = panel.judge([pair], allow_budgeted=i == 0, budgeted=ahead)[0]
            if verdict is None:
                continue
            if i == 0:
                first = verdict.p_same
            if verdict.same:
                self.policy.learn(decision, first)
                return class_id
        self.policy.learn(decision, first)
        return next(self._next_class)

    def _pair_scores(self, text: str | None, vector: np.ndarray, entries: list[CacheEntry]) -> list[float | None]:
        """The lookup-time verifiers' P(same answer) for each candidate entry (None without such a verifier)."""
        panel = self.verifiers
        if panel is None or text is None or not entries or not panel.lookup_sources:
            return [None] * len(entries)
        pairs = [PairView(text, e.text, vector, e.vector) for e in entries]
        return panel.lookup_scores(pairs)

    # -- restart ------------------------------------------------------------------------------
    def rebuild(self) -> int:
        """Rebuild the exact map, the vector index and the policy's classes from the entry store.

        Use after a restart, or when a persisted index was refused as damaged: the entry
        store keeps every entry's vector, so the index is reconstructed, never trusted blindly.
        """
        with self._lock:
            entries = sorted(self.entries.all(), key=lambda e: e.id)
            now = self.clock()
            for e in entries:
                if self._stale(e, now):
                    self.entries.delete([e.id])
                    continue
                self._register(e)
            return len(self._lru)

    # -- invalidation and eviction ---------------------------------------------------------
    def invalidate(self, doc_ids: Iterable[str]) -> int:
        """Drop every entry produced from any of these knowledge-base documents.

        With a shared entry store, that includes entries other replicas stored.
        """
        doc_ids = list(doc_ids)
        with self._lock:
            ids = set().union(*(self._by_doc.get(d, set()) for d in doc_ids)) if doc_ids else set()
            if self.entries.shared and doc_ids:
                ids |= set(cast(SharedEntryStore, self.entries).ids_for_docs(doc_ids))
            return self._drop(ids)

    def set_kb_version(self, version: str) -> int:
        """Switch the knowledge-base version: entries of other versions are dropped.

        With a shared entry store, every replica sees the new version within
        ``KB_VERSION_REFRESH_S`` and stops serving older entries from then on.
        """
        with self._lock:
            self.kb_version = version
            if self.entries.shared:
                cast(SharedEntryStore, self.entries).set_meta("kb_version", version)
                self._kb_checked = self.clock()
            stale = [
                i
                for i in list(self._lru)
                if (e := self.entries.get(i)) is not None and e.kb_version is not None and e.kb_version != version
            ]
            return self._drop(stale)

    def purge(self, scope: str) -> int:
        with self._lock:
            return self._drop(set(self._by_scope.get(scope, set())))

    def expire(self) -> int:
        with self._lock:
            gone = self.entries.expire(self.clock())
            return self._drop(gone, already_deleted=True)

    def _evict(self) -> None:
        lim = self.limits
        victims = []
        over_n = (len(self._lru) - lim.max_entries) if lim.max_entries else 0
        it = iter(self._lru.items())
        bytes_left = self._bytes
        for entry_id, size in it:
            if over_n <= 0 and (lim.max_bytes is None or bytes_left <= lim.max_bytes):
                break
            victims.append(entry_id)
            over_n -= 1
            bytes_left -= size
        if victims:
            self._drop(victims)

    def _drop(self, ids: Iterable[int], already_deleted: bool = False) -> int:
        ids = list(ids)
        if not ids:
            return 0
        for i in ids:
            e = self.entries.get(i) if not already_deleted else None
            if e is not None:
                if self._exact.get(e.fingerprint) == i:
                    del self._exact[e.fingerprint]
                for d in e.doc_ids:
                    self._by_doc.get(d, set()).discard(i)
                self._by_scope.get(e.scope, set()).discard(i)
            self._bytes -= self._lru.pop(i, 0)
        if already_deleted:
            gone = set(ids)
            self._exact = {fp: i for fp, i in self._exact.items() if i not in gone}
        self.index.delete(ids)
        if not already_deleted:
            self.entries.delete(ids)
        return len(ids)

    def __len__(self) -> int:
        return len(self._lru)


KB_VERSION_REFRESH_S = 1.0  # the bound on how stale another replica's view of the kb version can be


def _timed(result: LookupResult, t0: float, t1: float, t2: float, t3: float) -> LookupResult:
    """The lookup's timings in ms: embed (t0-t1), search (t1-t2), decide (t2-t3)."""
    result.embed_ms, result.search_ms, result.decide_ms = (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3
    return result


def _random_ids():
    while True:
        yield secrets.randbits(62) + 1
