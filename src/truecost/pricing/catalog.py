"""The price catalog: dated, structured prices in explicit layers.

Layers, lowest first (``model.LAYERS``):

1. **genai-prices**: the model token prices bundled in Pydantic's ``genai-prices`` package (or a
   newer snapshot of its data that ``truecost prices update`` saved, when the caller passes it);
2. **truecost**: truecost's own data files (infrastructure, self-hosted and historical
   evaluation models, models newer than the genai-prices release, documented corrections);
3. **litellm**: a LiteLLM price JSON the user imports;
4. **user**: the user's price files.

A higher layer's version wins wherever it is in force and the lower layers fill the rest, so
no layer drops another's history. ``PriceCatalog.price_for(name, at)`` returns the version in
force at ``at`` or ``None``; it never invents a price. Nothing is read or fetched at import.
"""

from __future__ import annotations

from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from truecost.errors import UnknownModelError
from truecost.pricing.model import (  # noqa: F401  (re-exported: the public names of this module)
    KINDS,
    LAYERS,
    UNDATED,
    PriceEntry,
    PriceVersion,
    Tier,
    Unit,
    Variant,
    as_utc,
    layer_rank,
    merge_versions,
)
from truecost.pricing.names import candidates, canon
from truecost.pricing.pricefile import load_price_file, parse_price_document  # noqa: F401
from truecost.types import Resource


def _merge_key(r: Resource) -> tuple[str, str, str]:
    return r.kind, r.provider.lower(), canon(r.name)


def bundled_documents() -> tuple[list[PriceEntry], dict[str, Any]]:
    """truecost's own data files, and its table of model release dates (for undated prices)."""
    entries: list[PriceEntry] = []
    releases: dict[str, Any] = {}
    folder = resources.files("truecost.pricing") / "data"
    for item in sorted(folder.iterdir(), key=lambda x: x.name):
        if not item.name.endswith(".yaml"):
            continue
        doc = yaml.safe_load(item.read_text(encoding="utf-8"))
        if isinstance(doc, dict) and "releases" in doc:
            releases = doc
            continue
        if isinstance(doc, dict) and "rules" in doc:
            continue  # read by bundled_rules()
        entries.extend(parse_price_document(doc, f"truecost/pricing/data/{item.name}", origin="truecost"))
    return entries, releases


def _rule(r: dict[str, Any]) -> dict[str, Any]:
    """One rule of data/rules.yaml, validated: a variant (``when`` + ``multiplier``), a rate
    supplement (``rates``: classes a model's versions lack) or an unavailable option
    (``unavailable``: an attribute the provider does not offer for these models)."""
    from decimal import Decimal

    where = "truecost/pricing/data/rules.yaml"
    if not (r.get("provider") and r.get("models") and r.get("source")):
        raise ValueError(f"{where}: a rule needs provider, models and source: {r}")
    kinds = [k for k in ("when", "rates", "unavailable") if r.get(k)]
    if len(kinds) != 1 or (kinds == ["when"] and not r.get("multiplier")):
        raise ValueError(f"{where}: a rule needs exactly one of when+multiplier, rates, unavailable: {r}")
    out = {**r, "kind": kinds[0]}
    if kinds == ["when"]:
        out["multiplier"] = Decimal(str(r["multiplier"]))
    out[kinds[0]] = {str(k): (Decimal(str(v)) if kinds == ["rates"] else str(v)) for k, v in r[kinds[0]].items()}
    return out


def bundled_rules() -> list[dict[str, Any]]:
    """Provider-wide variants, rate supplements and unavailable options (data/rules.yaml), validated."""
    doc = yaml.safe_load((resources.files("truecost.pricing") / "data" / "rules.yaml").read_text(encoding="utf-8"))
    return [_rule(r) for r in doc.get("rules") or []]


def _rule_variant(version: PriceVersion, rule: dict[str, Any]) -> Variant:
    """A rule's multiplier on every class, or only on the classes it names (their tiers too)."""
    classes, m = rule.get("classes"), rule["multiplier"]
    if not classes:
        return Variant(when=rule["when"], multiplier=m, source=rule["source"])
    rates = {c: version.rates[c] * m for c in classes if c in version.rates}
    tiers = tuple(
        Tier(t.above_prompt_tokens, {c: t.rates[c] * m for c in classes if c in t.rates})
        for t in version.tiers
        if any(c in t.rates for c in classes)
    )
    return Variant(when=rule["when"], rates=rates, tiers=tiers, source=rule["source"])


def _apply_rule(version: PriceVersion, rule: dict[str, Any]) -> PriceVersion:
    """The version with one rule applied where the version does not say the thing itself."""
    from dataclasses import replace

    if rule["kind"] == "when":
        if any(dict(y.when) == rule["when"] for y in version.variants):
            return version
        return replace(version, variants=(*version.variants, _rule_variant(version, rule)))
    if rule["kind"] == "rates":
        added = {c: r for c, r in rule["rates"].items() if c not in version.rates}
        if not added or "input" not in version.units:
            return version
        sources = dict(version.attributes.get("rate_sources") or {})
        sources.update({c: rule["source"] for c in added})
        return replace(
            version,
            rates={**version.rates, **added},
            units={**version.units, **{c: version.units["input"] for c in added}},
            attributes={**version.attributes, "rate_sources": sources},
        )
    unavailable = dict(version.attributes.get("unavailable") or {})
    for k, v in rule["unavailable"].items():
        unavailable.setdefault(f"{k}={v}", rule["source"])
    return replace(version, attributes={**version.attributes, "unavailable": unavailable})


def apply_rules(entry: PriceEntry, rules: list[dict[str, Any]]) -> PriceEntry:
    """The entry with each matching rule applied to the versions that do not state it themselves."""
    import fnmatch

    versions = entry.versions
    for r in rules:
        if entry.resource.provider != r["provider"] or not any(
            fnmatch.fnmatchcase(entry.resource.name, g) for g in r["models"]
        ):
            continue
        versions = [_apply_rule(x, r) for x in versions]
    if all(a is b for a, b in zip(versions, entry.versions)):
        return entry
    return PriceEntry(entry.resource, entry.aliases, versions, entry.matcher)


def _claims(entry: PriceEntry, wire_name: str) -> bool:
    return entry.matcher is not None and entry.matcher(wire_name)


class PriceCatalog:
    """All prices, layered; later layers override earlier ones where they are in force."""

    def __init__(
        self,
        entries: Iterable[PriceEntry] = (),
        *,
        homes: Iterable[tuple[str, Callable[[str], bool]]] = (),
        notes: Iterable[str] = (),
    ) -> None:
        self._entries: dict[str, PriceEntry] = {}
        self._by_merge: dict[tuple[str, str, str], str] = {}
        self._names: dict[str, list[str]] = {}
        self._matched: list[str] = []
        self._resolve_memo: dict[tuple[str, str | None], str | UnknownModelError] = {}
        # (provider, claims-this-model-name) in the source's order: who serves a bare name
        self.homes: list[tuple[str, Callable[[str], bool]]] = list(homes)
        self.notes: list[str] = list(notes)  # what the layers could not map, which snapshot is in use...
        self.fallbacks: dict[str, list[str]] = {}  # reseller -> providers whose models it serves
        self.genai_label: str | None = None
        self.add(entries)

    # -- building ------------------------------------------------------------------------
    @classmethod
    def bundled(cls, *, genai: bool = True, genai_snapshot: str | Path | None = None) -> "PriceCatalog":
        """genai-prices' data (bundled, or the given snapshot file), then truecost's own files."""
        own, releases = bundled_documents()
        catalog = cls()
        if genai:
            from truecost.pricing.genai_layer import load_genai_layer

            layer = load_genai_layer(releases, snapshot=genai_snapshot)
            catalog.homes = layer.homes
            catalog.fallbacks = layer.fallbacks
            catalog.genai_label = layer.label
            catalog.notes.extend(layer.notes)
            catalog.add(layer.entries)
        catalog.add(own)
        rules = bundled_rules()
        for key, e in list(catalog._entries.items()):
            catalog._entries[key] = apply_rules(e, rules)
        return catalog

    @classmethod
    def load(cls, *override_files: str | Path, genai_snapshot: str | Path | None = None) -> "PriceCatalog":
        """The bundled catalog with the user's files layered on top, in order."""
        catalog = cls.bundled(genai_snapshot=genai_snapshot)
        for f in override_files:
            catalog.add(load_price_file(f, origin="user"))
        return catalog

    def add(self, entries: Iterable[PriceEntry]) -> None:
        """Layer entries over what is there: for the same resource, history is merged by time."""
        for e in entries:
            mk = _merge_key(e.resource)
            old_key = self._by_merge.get(mk)
            if old_key is not None:
                old = self._entries[old_key]
                lower, upper = old.versions, e.versions
                if max(map(layer_rank, (v.origin for v in upper)), default=0) < max(
                    map(layer_rank, (v.origin for v in lower)), default=0
                ):
                    lower, upper = upper, lower  # a lower layer added late still sits beneath
                names = (*old.aliases, *e.aliases, e.resource.name)
                e = PriceEntry(
                    old.resource,
                    tuple(n for n in dict.fromkeys(names) if n != old.resource.name),
                    merge_versions(lower, upper),
                    old.matcher or e.matcher,
                )
            key = e.resource.key
            self._entries[key] = e
            self._by_merge[mk] = key
            for n in (e.resource.name, *e.aliases, f"{e.resource.provider}/{e.resource.name}"):
                keys = self._names.setdefault(canon(n), [])
                if key not in keys:
                    keys.append(key)
            if e.matcher is not None and key not in self._matched:
                self._matched.append(key)
        self._resolve_memo.clear()

    def entries(self, kind: str | None = None, provider: str | None = None) -> list[PriceEntry]:
        return [
            e
            for e in self._entries.values()
            if (kind is None or e.resource.kind == kind) and (provider is None or e.resource.provider == provider)
        ]

    # -- finding ---------------------------------------------------------------------------
    def resolve(self, name: str | Resource, kind: str | None = None) -> PriceEntry:
        """Find one entry by resource, key, wire name, 'provider/name', name or alias.

        An ambiguous name raises UnknownModelError listing the candidates; nothing is picked
        silently.
        """
        if isinstance(name, Resource):
            entry = self._entries.get(name.key)
            if entry is None:
                raise UnknownModelError(f"no price entry for {name.key}")
            return entry
        if name in self._entries:
            return self._entries[name]
        memo_key = (str(name), kind)
        hit = self._resolve_memo.get(memo_key)
        if hit is None:
            try:
                hit = self._resolve(str(name), kind)
            except UnknownModelError as exc:
                hit = exc
            if len(self._resolve_memo) > 20_000:
                self._resolve_memo.clear()
            self._resolve_memo[memo_key] = hit
        if isinstance(hit, UnknownModelError):
            raise UnknownModelError(str(hit))
        return self._entries[hit]

    def _resolve(self, name: str, kind: str | None) -> str:
        for hint, n in candidates(name):
            keys = self._lookup(n, kind, hint)
            if len(keys) > 1:
                keys = self._prefer_home(n, keys)
            if len(keys) == 1:
                return keys[0]
            if len(keys) > 1:
                raise UnknownModelError(f"{name!r} is ambiguous: {', '.join(sorted(keys))}; name it as provider/name")
        raise UnknownModelError(
            f"unknown model or resource {name!r}"
            + (f" (kind {kind})" if kind else "")
            + "; add it to a price file or check `truecost prices list`"
        )

    def _lookup(self, name: str, kind: str | None, hint: str | None) -> list[str]:
        def ok(k: str) -> bool:
            return kind is None or self._entries[k].resource.kind == kind

        exact = [k for k in self._names.get(canon(name), []) if ok(k)]
        low = name.strip().lower()
        matched = [k for k in self._matched if k not in exact and ok(k) and _claims(self._entries[k], low)]
        known = {e.resource.provider.lower() for e in self._entries.values()}
        providers = [hint, *self.fallbacks.get(hint, [])] if hint in known else [None]
        for p in providers:  # the hinted provider, then the providers it resells
            for keys in (exact, matched):
                if p is not None:
                    keys = [k for k in keys if self._entries[k].resource.provider.lower() == p]
                if keys:
                    return keys
        return []

    def _prefer_home(self, name: str, keys: list[str]) -> list[str]:
        """Several providers sell this name: the one whose own name space claims it wins."""
        providers = {self._entries[k].resource.provider for k in keys}
        low = name.strip().lower()
        for provider, claims in self.homes:
            if provider in providers and claims(low):
                keys = [k for k in keys if self._entries[k].resource.provider == provider]
                break
        if len(keys) > 1:  # the maker over its resellers (Azure resells OpenAI's models)
            providers = {self._entries[k].resource.provider for k in keys}
            makers = {p for p in providers if any(p in self.fallbacks.get(q, ()) for q in providers - {p})}
            if len(makers) == 1:
                keys = [k for k in keys if self._entries[k].resource.provider in makers]
        if len(keys) > 1:  # truecost's own or the user's entry of that name over the source data's
            own = [k for k in keys if any(v.origin != "genai-prices" for v in self._entries[k].versions)]
            if len(own) == 1:
                return own
        return keys

    # -- pricing ---------------------------------------------------------------------------
    def price_for(
        self, name: str | Resource, at: datetime | None = None, kind: str | None = None
    ) -> PriceVersion | None:
        """The version in force at ``at`` (default: now), or None when none is.

        Raises UnknownModelError when the resource itself is unknown.
        """
        at = as_utc(at)
        entry = self.resolve(name, kind)
        for v in reversed(entry.versions):
            if v.in_force(at):
                return v
        return None

    def price_or_none(
        self, name: str | Resource, at: datetime | None = None, kind: str | None = None
    ) -> tuple[PriceVersion | None, str | None]:
        """Like price_for, but an unknown resource gives (None, reason) instead of raising."""
        try:
            version = self.price_for(name, at, kind)
        except UnknownModelError as exc:
            return None, str(exc)
        if version is None:
            label = name.key if isinstance(name, Resource) else name
            return None, f"no price for {label} in force at {as_utc(at).date()}"
        return version, None
