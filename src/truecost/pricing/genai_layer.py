"""The lowest price layer: Pydantic's genai-prices data (MIT), as truecost price entries.

genai-prices ships its price data inside the package and works offline. Its providers and
models arrive here as plain mappings (the same shape as the JSON snapshot that
``truecost prices update`` saves), so the bundled data and a newer snapshot go through one
converter. What is kept: every token price (text, cache read, cache writes incl. 1-hour,
audio, image, video, reasoning), per-request and per-search fees, long-context tiers, dated
price changes, and the variants (batch, service tiers, fast mode, routes) with their start
dates. Time-of-day prices are not modelled (listed in ``notes``). Nothing here runs at import.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping

from truecost.pricing.model import UNDATED, PriceEntry, PriceVersion, Tier, Unit, Variant
from truecost.pricing.names import canon
from truecost.types import Resource

# genai-prices price key -> (truecost rate name, unit label)
_SUFFIX_UNITS = (
    ("_mtok", "1M tokens"),
    ("_kcount", "1K requests"),
    ("_hours", "hour"),
    ("_kpages", "1K pages"),
    ("_mchars", "1M characters"),
    ("_gpixels", "1B pixels"),
)
_RENAME = {
    "input": "input",
    "output": "output",
    "cache_read": "cached_input",
    "cache_write": "cache_write",
    "cache_write_5m": "cache_write_5m",
    "cache_write_1h": "cache_write_1h",
    "output_reasoning": "reasoning",
    "cache_audio_read": "cached_input_audio",
    "cache_image_read": "cached_input_image",
    "cache_text_read": "cached_input_text",
    "web_searches": "web_search",
    "storage_searches": "file_search",
    "requests": "request",
    "code_executions": "code_execution",
    "input_audio_hours": "input_audio_hour",
    "audio_hours": "audio_hour",
    "output_audio_hours": "output_audio_hour",
}


def rate_name(key: str) -> tuple[str, str] | None:
    for suffix, unit in _SUFFIX_UNITS:
        if key.endswith(suffix):
            base = key[: -len(suffix)]
            return _RENAME.get(base, base), unit
    return None


@dataclass
class GenaiLayer:
    entries: list[PriceEntry]
    homes: list[tuple[str, Callable[[str], bool]]]
    notes: list[str] = field(default_factory=list)
    label: str = ""
    # reseller -> the providers whose models it serves at their prices (Azure -> OpenAI, ...)
    fallbacks: dict[str, list[str]] = field(default_factory=dict)


# -- genai-prices objects -> plain mappings (the snapshot's JSON shape) -------------------
def plain(obj: Any) -> Any:
    if isinstance(obj, (str, int, float, Decimal, date, bool)) or obj is None:
        return obj
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(x) for x in obj]
    if dataclasses.is_dataclass(obj):
        return {
            f.name.rstrip("_"): plain(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if not f.name.startswith("_") and f.name != "extractors" and getattr(obj, f.name) is not None
        }
    if not hasattr(obj, "__dict__"):
        return str(obj)  # a time of day, an enum...
    values = {k: v for k, v in vars(obj).items() if not k.startswith("_") and v is not None}
    return plain(values)


def _json_default(o: Any) -> Any:
    if isinstance(o, Decimal):
        return str(o)
    if isinstance(o, date):
        return o.isoformat()
    raise TypeError(f"cannot write {type(o).__name__}")


def dump_snapshot(providers: list[Mapping[str, Any]], path: str | Path) -> None:
    Path(path).write_text(json.dumps(providers, default=_json_default), encoding="utf-8")


# -- match clauses -> predicates -----------------------------------------------------------
def matcher(clause: Any) -> Callable[[str], bool]:
    if not isinstance(clause, Mapping):
        return lambda s: False
    if "or" in clause:
        parts = [matcher(c) for c in clause["or"]]
        return lambda s: any(p(s) for p in parts)
    if "and" in clause:
        parts = [matcher(c) for c in clause["and"]]
        return lambda s: all(p(s) for p in parts)
    if "equals" in clause:
        v = str(clause["equals"]).lower()
        return lambda s: s == v
    if "starts_with" in clause:
        v = str(clause["starts_with"]).lower()
        return lambda s: s.startswith(v)
    if "ends_with" in clause:
        v = str(clause["ends_with"]).lower()
        return lambda s: s.endswith(v)
    if "contains" in clause:
        v = str(clause["contains"]).lower()
        return lambda s: v in s
    if "regex" in clause:
        rx = re.compile(str(clause["regex"]))
        return lambda s: rx.search(s) is not None
    return lambda s: False


# -- prices ------------------------------------------------------------------------------
def _dec(v: Any) -> Decimal:
    return v if isinstance(v, Decimal) else Decimal(str(v))


def _prices(
    raw: Mapping[str, Any], units: dict[str, Unit], unmapped: set[str]
) -> tuple[dict[str, Any], tuple[Tier, ...]]:
    rates: dict[str, Decimal] = {}
    tiers: dict[int, dict[str, Decimal]] = {}
    for key, value in (raw or {}).items():
        mapped = rate_name(key)
        if mapped is None or value is None:
            unmapped.add(key)
            continue
        name, unit = mapped
        units.setdefault(name, Unit.parse(unit))
        if isinstance(value, Mapping):  # TieredPrices {base, tiers: [{start, price}]}
            rates[name] = _dec(value["base"])
            for t in value.get("tiers") or []:
                tiers.setdefault(int(t["start"]), {})[name] = _dec(t["price"])
        else:
            rates[name] = _dec(value)
    return rates, tuple(Tier(k, v) for k, v in sorted(tiers.items()))


def _start(constraint: Any) -> date | None | Literal[False]:
    """A start date; None when there is no constraint; False for a time-of-day constraint."""
    if not constraint:
        return None
    if "start_date" in constraint:
        d = constraint["start_date"]
        return d if isinstance(d, date) else date.fromisoformat(str(d))
    return False


def _at(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=timezone.utc)


def _versions(
    provider: Mapping[str, Any],
    model: Mapping[str, Any],
    resource: Resource,
    first: datetime,
    source: str,
    notes: list[str],
) -> list[PriceVersion]:
    units: dict[str, Unit] = {}
    unmapped: set[str] = set()
    raw_prices = model.get("prices")
    conditional = raw_prices if isinstance(raw_prices, list) else [{"prices": raw_prices or {}}]
    bases: list[tuple[date | None, Mapping[str, Any]]] = []
    for c in conditional:
        s = _start(c.get("constraint"))
        if s is False:
            notes.append(f"{resource.provider}/{resource.name}: a time-of-day price is not modelled")
            continue
        bases.append((s, c.get("prices") or {}))
    if not bases:
        return []
    variants: list[tuple[date | None, Mapping[str, Any]]] = []
    for v in model.get("price_variants") or []:
        s = _start(v.get("constraint"))
        if s is False:
            notes.append(f"{resource.provider}/{resource.name}: a time-of-day variant is not modelled")
            continue
        variants.append((s, v))
    bounds = sorted({s for s, _ in bases if s} | {s for s, _ in variants if s})
    starts = [first] + [_at(b) for b in bounds if _at(b) > first]
    versions = []
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else None
        day = start.date()
        active = [p for s, p in bases if s is None or s <= day] or [bases[0][1]]
        rates, tiers = _prices(active[-1], units, unmapped)
        if not rates:
            continue
        vs = []
        for s, v in variants:
            if s is not None and s > day:
                continue
            v_rates, v_tiers = _prices(v.get("prices") or {}, units, unmapped)
            if not v_rates and not v_tiers:
                continue  # e.g. {'service_tier': 'default'} with no override: the standard price
            vs.append(
                Variant(when={str(k): str(x) for k, x in (v.get("when") or {}).items()}, rates=v_rates, tiers=v_tiers)
            )
        regional = _regional_variant(model)
        if regional is not None and not any("region" in v.when for v in vs):
            vs.append(regional)
        versions.append(
            PriceVersion(
                resource=resource,
                effective_from=start,
                effective_to=end,
                source=source,
                rates=rates,
                units=dict(units),
                tiers=tiers,
                attributes=_attributes(provider, model, start is UNDATED),
                origin="genai-prices",
                variants=tuple(vs),
            )
        )
    if unmapped:
        notes.append(f"{resource.provider}/{resource.name}: price keys not mapped: {', '.join(sorted(unmapped))}")
    return versions


# genai-prices states regional premiums in its price comments, not in its price tables
# ("regional and multi-region endpoints add a 10% premium", "regional endpoints bill 1.1x list").
_REGIONAL = re.compile(r"(?:regional|multi-region)[^.]*?(?:10% premium|1\.1x list)", re.IGNORECASE)


def _regional_variant(model: Mapping[str, Any]) -> Variant | None:
    """region=regional at 1.1x where the source's comment says so (not on models that are themselves regional ids)."""
    text = str(model.get("price_comments") or "")
    if str(model.get("id", "")).startswith("regional.") or not _REGIONAL.search(text):
        return None
    return Variant(
        when={"region": "regional"},
        multiplier=Decimal("1.1"),
        source="genai-prices price comment: regional endpoints carry a 10% premium over the global endpoint",
    )


def _attributes(provider: Mapping[str, Any], model: Mapping[str, Any], undated: bool) -> dict[str, Any]:
    out = {"genai_model_id": model.get("id")}
    if model.get("price_comments"):
        out["price_comments"] = model["price_comments"]
    if provider.get("price_comments"):
        out["provider_price_comments"] = provider["price_comments"]
    if undated:
        out["undated"] = "genai-prices records no start date for this price"
    # genai-prices' convention: a cache read or write without its own price is an input token
    # (no discount listed); truecost follows it for this layer's prices only.
    out["unlisted_cache_price"] = "input"
    return out


def _kind(model_id: str) -> str:
    return "embedding" if "embed" in model_id.lower() else "chat"


def convert(
    providers: Iterable[Mapping[str, Any]], releases: Mapping[str, Any] | None = None, *, label: str = "genai-prices"
) -> GenaiLayer:
    """Plain provider mappings -> entries (one per provider and model), the home matchers, notes."""
    release_dates: dict[tuple[str | None, str], tuple[date, str]] = {}
    for r in (releases or {}).get("releases") or []:
        d = r["released"] if isinstance(r["released"], date) else date.fromisoformat(str(r["released"]))
        release_dates[(r.get("provider"), canon(str(r["name"])))] = (d, str(r.get("source") or ""))
    entries: list[PriceEntry] = []
    homes: list[tuple[str, Callable[[str], bool]]] = []
    notes: list[str] = []
    fallbacks: dict[str, list[str]] = {}
    for p in providers:
        pid = str(p["id"])
        if p.get("fallback_model_providers"):
            fallbacks[pid] = [str(x) for x in p["fallback_model_providers"]]
        if p.get("model_match"):
            homes.append((pid, matcher(p["model_match"])))
        url = (p.get("pricing_urls") or [None])[0]
        for m in p.get("models") or []:
            mid = str(m["id"])
            resource = Resource(kind=_kind(mid), provider=pid, name=mid)
            rel = release_dates.get((pid, canon(mid))) or release_dates.get((None, canon(mid)))
            first = _at(rel[0]) if rel else UNDATED
            source = f"{label}: {p.get('name') or pid} price data" + (f" ({url})" if url else "")
            if rel:
                source += f"; in force from its release {rel[0]} ({rel[1]})"
            versions = _versions(p, m, resource, first, source, notes)
            if not versions:
                notes.append(f"{pid}/{mid}: no token price that truecost can map")
                continue
            entries.append(PriceEntry(resource, (), versions, matcher(m.get("match"))))
    return GenaiLayer(entries, homes, notes, label, fallbacks)


# -- loading ---------------------------------------------------------------------------------
@lru_cache(maxsize=4)
def _bundled_providers() -> tuple[list[Mapping[str, Any]], str]:
    from importlib.metadata import version

    from genai_prices.data import providers  # the package's bundled data (a large module)

    return [plain(p) for p in providers], f"genai-prices {version('genai-prices')} bundled data"


def read_snapshot(path: str | Path) -> list[Mapping[str, Any]]:
    """A genai-prices data snapshot (JSON list of providers), as saved by `truecost prices update`."""
    doc = json.loads(Path(path).read_text(encoding="utf-8"), parse_float=Decimal)
    if isinstance(doc, Mapping) and "providers" in doc:
        doc = doc["providers"]
    if not isinstance(doc, list) or not all(isinstance(p, Mapping) and "id" in p for p in doc):
        raise ValueError(f"{path}: not a genai-prices data snapshot (expected a list of providers)")
    return doc


@lru_cache(maxsize=8)
def _load(snapshot: str | None, releases_json: str) -> GenaiLayer:
    releases = json.loads(releases_json)
    if snapshot is not None:
        return convert(read_snapshot(snapshot), releases, label=f"genai-prices snapshot {Path(snapshot).name}")
    try:
        providers, label = _bundled_providers()
    except ImportError:
        return GenaiLayer(
            [],
            [],
            [
                "genai-prices is not installed: only truecost's own and the user's prices are "
                "available (pip install genai-prices)"
            ],
        )
    return convert(providers, releases, label=label)


def load_genai_layer(releases: Mapping[str, Any] | None = None, *, snapshot: str | Path | None = None) -> GenaiLayer:
    """The genai-prices layer (converted once per process and snapshot; entries are shared, never mutated)."""
    layer = _load(str(snapshot) if snapshot is not None else None, json.dumps(releases or {}, default=_json_default))
    return GenaiLayer(list(layer.entries), list(layer.homes), list(layer.notes), layer.label, dict(layer.fallbacks))
