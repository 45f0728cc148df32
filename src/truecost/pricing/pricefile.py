"""Price files (YAML): truecost's own data and the user's, validated with the file and entry named.

A version may carry, besides ``rates``:

* ``tiers``: ``[{above_prompt_tokens: 272000, rates: {...}}]`` (the whole request switches);
* ``batch``: per-class batch rates, as the provider publishes them (classes not listed keep
  their standard rate), or ``batch_multiplier: "0.5"`` when the provider says every class,
  cache reads and writes included, is halved;
* ``variants``: ``[{when: {service_tier: flex}, rates: {...}, multiplier: "0.5", source: ...}]``.
"""

from __future__ import annotations

from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Mapping

import yaml

from truecost.errors import PriceFileError
from truecost.pricing.model import KINDS, PriceEntry, PriceVersion, Tier, Unit, Variant
from truecost.types import Resource


def as_datetime(value: Any, path: str, entry: str, what: str) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    if isinstance(value, str):
        try:
            return as_datetime(datetime.fromisoformat(value), path, entry, what)
        except ValueError:
            pass
    raise PriceFileError(path, entry, f"{what} must be a date like 2026-01-31, got {value!r}")


def as_amount(value: Any, path: str, entry: str, what: str) -> Decimal:
    if isinstance(value, bool) or value is None:
        raise PriceFileError(path, entry, f"{what} must be a number, got {value!r}")
    try:
        amount = Decimal(str(value).strip())
    except Exception:
        raise PriceFileError(path, entry, f"{what} must be a number, got {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise PriceFileError(path, entry, f"{what} must be a finite, non-negative number, got {value!r}")
    return amount


def _rates(raw: Any, path: str, entry: str, *, empty_ok: bool = False) -> dict[str, Decimal]:
    if empty_ok and raw is None:
        return {}
    if not isinstance(raw, Mapping) or (not raw and not empty_ok):
        raise PriceFileError(path, entry, "rates must be a non-empty mapping of component to price")
    return {str(k): as_amount(v, path, entry, f"rate {k}") for k, v in raw.items()}


def _tiers(raw: Any, path: str, entry: str) -> tuple[Tier, ...]:
    tiers = []
    for t in raw or []:
        threshold = t.get("above_prompt_tokens") if isinstance(t, Mapping) else None
        if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold <= 0:
            raise PriceFileError(path, entry, "a tier needs a positive integer 'above_prompt_tokens'")
        tiers.append(Tier(threshold, _rates(t.get("rates"), path, entry)))
    return tuple(sorted(tiers, key=lambda t: t.above_prompt_tokens))


def _variants(v: Mapping[str, Any], path: str, name: str) -> list[Variant]:
    out = []
    for raw in v.get("variants") or []:
        when = raw.get("when") if isinstance(raw, Mapping) else None
        if not isinstance(when, Mapping) or not when:
            raise PriceFileError(path, name, "a variant needs a non-empty 'when' mapping")
        mult = raw.get("multiplier")
        rates = _rates(raw.get("rates"), path, name, empty_ok=True)
        if not rates and mult is None:
            raise PriceFileError(path, name, "a variant needs 'rates' or a 'multiplier'")
        out.append(
            Variant(
                when={str(k): str(x) for k, x in when.items()},
                rates=rates,
                tiers=_tiers(raw.get("tiers"), path, name),
                multiplier=as_amount(mult, path, name, "multiplier") if mult is not None else None,
                source=str(raw["source"]) if raw.get("source") else None,
            )
        )
    if v.get("batch") is not None:
        out.append(
            Variant(
                when={"processing": "batch"},
                rates=_rates(v["batch"], path, name),
                tiers=_tiers(v.get("batch_tiers"), path, name),
            )
        )
    elif v.get("batch_multiplier") is not None:
        out.append(
            Variant(
                when={"processing": "batch"},
                multiplier=as_amount(v["batch_multiplier"], path, name, "batch_multiplier"),
            )
        )
    return out


def _components(rates: Mapping[str, Decimal], tiers: tuple[Tier, ...], variants: list[Variant]) -> set[str]:
    comps = set(rates)
    for t in tiers:
        comps |= set(t.rates)
    for var in variants:
        comps |= set(var.rates)
        for t in var.tiers:
            comps |= set(t.rates)
    return comps


def _version(
    v: Any,
    resource: Resource,
    unit_map: Mapping[str, Any],
    default_unit: Any,
    attributes: Mapping[str, Any],
    path: str,
    name: str,
    origin: str,
) -> PriceVersion:
    if not isinstance(v, Mapping):
        raise PriceFileError(path, name, "each version must be a mapping")
    if not str(v.get("source") or "").strip():
        raise PriceFileError(path, name, "every version needs a 'source'")
    if "effective_from" not in v:
        raise PriceFileError(path, name, "every version needs 'effective_from'")
    rates = _rates(v.get("rates"), path, name)
    tiers = _tiers(v.get("tiers"), path, name)
    variants = _variants(v, path, name)
    units = {}
    for comp in _components(rates, tiers, variants):
        text = unit_map.get(comp, default_unit)
        if not text:
            raise PriceFileError(path, name, f"no unit for rate {comp!r}")
        try:
            units[comp] = Unit.parse(text)
        except ValueError as exc:
            raise PriceFileError(path, name, str(exc)) from None
    start = as_datetime(v["effective_from"], path, name, "effective_from")
    end = as_datetime(v["effective_to"], path, name, "effective_to") if v.get("effective_to") else None
    if end is not None and end <= start:
        raise PriceFileError(path, name, "effective_to must be after effective_from")
    fpm = v.get("free_per_month")
    return PriceVersion(
        resource=resource,
        effective_from=start,
        effective_to=end,
        source=str(v["source"]).strip(),
        rates=rates,
        units=units,
        tiers=tiers,
        free_per_month=as_amount(fpm, path, name, "free_per_month") if fpm is not None else None,
        attributes=dict(attributes),
        origin=origin,
        variants=tuple(variants),
    )


def close_open_versions(versions: list[PriceVersion], path: str, name: str) -> list[PriceVersion]:
    """Sort; an open version ends where the next begins; overlapping versions are refused."""
    from dataclasses import replace

    versions = sorted(versions, key=lambda x: x.effective_from)
    for i, (a, b) in enumerate(zip(versions, versions[1:])):
        if a.effective_to is None:
            versions[i] = a = replace(a, effective_to=b.effective_from)
        if a.effective_to is not None and a.effective_to > b.effective_from:
            raise PriceFileError(path, name, "versions overlap in time")
    return versions


def parse_price_document(doc: Any, path: str, origin: str = "truecost") -> list[PriceEntry]:
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
        raw_versions = raw.get("versions")
        if not isinstance(raw_versions, list) or not raw_versions:
            raise PriceFileError(path, name, "needs a non-empty 'versions' list")
        versions = [
            _version(
                v,
                resource,
                dict(raw.get("units") or {}),
                raw.get("unit", doc.get("unit")),
                raw.get("attributes") or {},
                path,
                name,
                origin,
            )
            for v in raw_versions
        ]
        entries.append(
            PriceEntry(
                resource, tuple(str(x) for x in raw.get("aliases") or ()), close_open_versions(versions, path, name)
            )
        )
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
