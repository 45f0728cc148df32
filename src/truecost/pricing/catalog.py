"""The price catalog: dated, structured prices loaded from data files.

A price *entry* is one resource (a model, a network path, a storage tier, an instance
type) with one or more *versions*, each in force from ``effective_from`` until the next
version starts or its ``effective_to``. ``PriceCatalog.price_for(name, at)`` returns the
version in force at ``at`` or ``None``; it never invents a price.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timezone
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from truecost.errors import PriceFileError, UnknownModelError
from truecost.types import Resource

KINDS = ("chat", "embedding", "vector_db", "egress", "storage", "log_ingest", "compute", "cache_service")
_UNIT_RE = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*([KkMmBb]?)\s+)?(.+?)\s*$")
_SNAPSHOT_RE = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8}|\d{4})$")
_SCALE = {"": 1, "k": 1_000, "m": 1_000_000, "b": 1_000_000_000}


@dataclass(frozen=True, slots=True)
class Unit:
    """A billing unit such as '1M tokens' (scale 1,000,000 of 'tokens') or 'GB'."""

    label: str
    scale: int
    base: str

    @classmethod
    def parse(cls, text: str) -> "Unit":
        m = _UNIT_RE.match(str(text))
        if not m:
            raise ValueError(f"cannot read unit {text!r}")
        number, suffix, base = m.groups()
        scale = Decimal(number or 1) * _SCALE[(suffix or "").lower()]
        if scale != int(scale) or scale <= 0:
            raise ValueError(f"unit scale must be a positive whole number in {text!r}")
        return cls(label=str(text).strip(), scale=int(scale), base=base)


@dataclass(frozen=True, slots=True)
class Tier:
    above_prompt_tokens: int
    rates: Mapping[str, Decimal]


@dataclass(frozen=True, slots=True)
class PriceVersion:
    """One dated price of one resource. Rates are USD per ``units[component]``."""

    resource: Resource
    effective_from: datetime
    effective_to: datetime | None
    source: str
    rates: Mapping[str, Decimal]
    units: Mapping[str, Unit]
    tiers: tuple[Tier, ...] = ()
    batch_multiplier: Decimal | None = None
    free_per_month: Decimal | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)
    origin: str = "bundled"

    def rate(self, component: str) -> Decimal | None:
        return self.rates.get(component)

    def unit(self, component: str) -> Unit:
        return self.units[component]

    def in_force(self, at: datetime) -> bool:
        return self.effective_from <= at and (self.effective_to is None or at < self.effective_to)


@dataclass(slots=True)
class PriceEntry:
    resource: Resource
    aliases: tuple[str, ...]
    versions: list[PriceVersion]


def _as_datetime(value: Any, path: str, entry: str, what: str) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    if isinstance(value, str):
        try:
            return _as_datetime(datetime.fromisoformat(value), path, entry, what)
        except ValueError:
            pass
    raise PriceFileError(path, entry, f"{what} must be a date like 2026-01-31, got {value!r}")


def _as_amount(value: Any, path: str, entry: str, what: str) -> Decimal:
    if isinstance(value, bool) or value is None:
        raise PriceFileError(path, entry, f"{what} must be a number, got {value!r}")
    try:
        amount = Decimal(str(value).strip())
    except Exception:
        raise PriceFileError(path, entry, f"{what} must be a number, got {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise PriceFileError(path, entry, f"{what} must be a finite, non-negative number, got {value!r}")
    return amount


def _as_rates(raw: Any, path: str, entry: str) -> dict[str, Decimal]:
    if not isinstance(raw, Mapping) or not raw:
        raise PriceFileError(path, entry, "rates must be a non-empty mapping of component to price")
    return {str(k): _as_amount(v, path, entry, f"rate {k}") for k, v in raw.items()}


def parse_price_document(doc: Any, path: str, origin: str = "bundled") -> list[PriceEntry]:
    """Validate one price file's parsed YAML; every problem names the file and entry."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("entries"), list):
        raise PriceFileError(path, None, "expected a mapping with an 'entries' list")
    entries = []
    for i, raw in enumerate(doc["entries"]):
        label = raw.get("name") if isinstance(raw, Mapping) else None
        name = str(label or f"#{i + 1}")
        if not isinstance(raw, Mapping) or not label:
            raise PriceFileError(path, name, "each entry needs a 'name'")
        kind = raw.get("kind", doc.get("kind"))
        provider = raw.get("provider", doc.get("provider"))
        if kind not in KINDS:
            raise PriceFileError(path, name, f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if not provider or provider == "mixed":
            raise PriceFileError(path, name, "entry needs a provider")
        resource = Resource(kind=kind, provider=str(provider), name=str(label))
        default_unit = raw.get("unit", doc.get("unit"))
        unit_map = dict(raw.get("units") or {})
        raw_versions = raw.get("versions")
        if not isinstance(raw_versions, list) or not raw_versions:
            raise PriceFileError(path, name, "needs a non-empty 'versions' list")
        versions = []
        for v in raw_versions:
            if not isinstance(v, Mapping):
                raise PriceFileError(path, name, "each version must be a mapping")
            if not str(v.get("source") or "").strip():
                raise PriceFileError(path, name, "every version needs a 'source'")
            if "effective_from" not in v:
                raise PriceFileError(path, name, "every version needs 'effective_from'")
            rates = _as_rates(v.get("rates"), path, name)
            units = {}
            for comp in rates:
                text = unit_map.get(comp, default_unit)
                if not text:
                    raise PriceFileError(path, name, f"no unit for rate {comp!r}")
                try:
                    units[comp] = Unit.parse(text)
                except ValueError as exc:
                    raise PriceFileError(path, name, str(exc)) from None
            tiers = []
            for t in v.get("tiers") or []:
                threshold = t.get("above_prompt_tokens") if isinstance(t, Mapping) else None
                if not isinstance(threshold, int) or threshold <= 0:
                    raise PriceFileError(path, name, "a tier needs a positive integer 'above_prompt_tokens'")
                tiers.append(Tier(threshold, _as_rates(t.get("rates"), path, name)))
            start = _as_datetime(v["effective_from"], path, name, "effective_from")
            end = _as_datetime(v["effective_to"], path, name, "effective_to") if v.get("effective_to") else None
            if end is not None and end <= start:
                raise PriceFileError(path, name, "effective_to must be after effective_from")
            bm = v.get("batch_multiplier")
            fpm = v.get("free_per_month")
            versions.append(PriceVersion(
                resource=resource, effective_from=start, effective_to=end, source=str(v["source"]).strip(),
                rates=rates, units=units, tiers=tuple(sorted(tiers, key=lambda t: t.above_prompt_tokens)),
                batch_multiplier=_as_amount(bm, path, name, "batch_multiplier") if bm is not None else None,
                free_per_month=_as_amount(fpm, path, name, "free_per_month") if fpm is not None else None,
                attributes=dict(raw.get("attributes") or {}), origin=origin,
            ))
        versions.sort(key=lambda x: x.effective_from)
        for i, (a, b) in enumerate(zip(versions, versions[1:])):
            if a.effective_to is None:  # an open version ends where the next begins
                versions[i] = a = replace(a, effective_to=b.effective_from)
            if a.effective_to > b.effective_from:
                raise PriceFileError(path, name, "versions overlap in time")
        entries.append(PriceEntry(resource, tuple(str(x) for x in raw.get("aliases") or ()), versions))
    return entries


def load_price_file(path: str | Path, origin: str = "user") -> list[PriceEntry]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PriceFileError(str(p), None, f"cannot read: {exc}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PriceFileError(str(p), None, f"not valid YAML: {exc}") from None
    return parse_price_document(doc, str(p), origin)


class PriceCatalog:
    """All prices, bundled and user-supplied; later layers override earlier ones."""

    def __init__(self, entries: Iterable[PriceEntry] = ()) -> None:
        self._entries: dict[str, PriceEntry] = {}
        self._names: dict[str, list[str]] = {}
        self._memo: dict[tuple[str, datetime | None], PriceVersion | None] = {}
        self.add(entries)

    @classmethod
    def bundled(cls) -> "PriceCatalog":
        entries: list[PriceEntry] = []
        folder = resources.files("truecost.pricing") / "data"
        for item in sorted(folder.iterdir(), key=lambda x: x.name):
            if item.name.endswith(".yaml"):
                doc = yaml.safe_load(item.read_text(encoding="utf-8"))
                entries.extend(parse_price_document(doc, f"truecost/pricing/data/{item.name}"))
        return cls(entries)

    @classmethod
    def load(cls, *override_files: str | Path) -> "PriceCatalog":
        """The bundled catalog with the user's files layered on top, in order."""
        catalog = cls.bundled()
        for f in override_files:
            catalog.add(load_price_file(f))
        return catalog

    def add(self, entries: Iterable[PriceEntry]) -> None:
        """Add entries; one with the key of an existing entry replaces it (an override)."""
        for e in entries:
            key = e.resource.key
            self._entries[key] = e
            for n in (e.resource.name, *e.aliases, f"{e.resource.provider}/{e.resource.name}"):
                keys = self._names.setdefault(n.lower(), [])
                if key not in keys:
                    keys.append(key)
        self._memo.clear()

    def entries(self, kind: str | None = None, provider: str | None = None) -> list[PriceEntry]:
        return [e for e in self._entries.values()
                if (kind is None or e.resource.kind == kind) and (provider is None or e.resource.provider == provider)]

    def resolve(self, name: str | Resource, kind: str | None = None) -> PriceEntry:
        """Find one entry by resource, key, 'provider/name', name or alias."""
        if isinstance(name, Resource):
            entry = self._entries.get(name.key)
            if entry is None:
                raise UnknownModelError(f"no price entry for {name.key}")
            return entry
        if name in self._entries:
            return self._entries[name]
        keys = self._lookup(str(name), kind)
        if not keys:
            # A dated snapshot ('gpt-4o-mini-2024-07-18', 'claude-haiku-4-5-20251001') falls back to its family.
            stripped = _SNAPSHOT_RE.sub("", str(name))
            keys = self._lookup(stripped, kind) if stripped != str(name) else []
        if not keys:
            raise UnknownModelError(f"unknown model or resource {name!r}" + (f" (kind {kind})" if kind else "")
                                    + "; add it to a price file or check `truecost prices list`")
        if len(keys) > 1:
            raise UnknownModelError(f"{name!r} is ambiguous: {', '.join(sorted(keys))}; name it as provider/name")
        return self._entries[keys[0]]

    def _lookup(self, name: str, kind: str | None) -> list[str]:
        return [k for k in self._names.get(name.lower(), []) if kind is None or self._entries[k].resource.kind == kind]

    def price_for(self, name: str | Resource, at: datetime | None = None, kind: str | None = None) -> PriceVersion | None:
        """The version in force at ``at`` (default: now), or None when none is.

        Raises UnknownModelError when the resource itself is unknown.
        """
        at = at or datetime.now(timezone.utc)
        if at.tzinfo is None:
            at = at.replace(tzinfo=timezone.utc)
        entry = self.resolve(name, kind)
        for v in reversed(entry.versions):
            if v.in_force(at):
                return v
        return None

    def price_or_none(self, name: str | Resource, at: datetime | None = None, kind: str | None = None) -> tuple[PriceVersion | None, str | None]:
        """Like price_for, but an unknown resource gives (None, reason) instead of raising."""
        try:
            version = self.price_for(name, at, kind)
        except UnknownModelError as exc:
            return None, str(exc)
        if version is None:
            label = name.key if isinstance(name, Resource) else name
            return None, f"no price for {label} in force at {(at or datetime.now(timezone.utc)).date()}"
        return version, None
