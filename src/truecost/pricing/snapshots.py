"""Newer genai-prices data, only when the user asks: `truecost prices update`.

A snapshot is genai-prices' published data (a JSON list of providers), saved dated in the
prices cache folder as ``genai-prices-YYYY-MM-DD.json``. Nothing here runs unless called; the
composition root (CLI, gateway config) decides which snapshot a catalog uses:
``PriceCatalog.load(..., genai_snapshot=latest(folder))``, or the bundled data when pinned.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

from truecost.pricing.genai_layer import GenaiLayer, convert, load_genai_layer, read_snapshot

_NAME = re.compile(r"^genai-prices-(\d{4}-\d{2}-\d{2})(?:-(\d+))?\.json$")


def snapshots(folder: str | Path) -> list[Path]:
    """Saved snapshots, oldest first."""
    p = Path(folder)
    if not p.is_dir():
        return []
    found = [(f, m) for f in p.iterdir() if (m := _NAME.match(f.name))]
    return [f for f, _ in sorted(found, key=lambda fm: (fm[1].group(1), int(fm[1].group(2) or 0)))]


def latest(folder: str | Path) -> Path | None:
    found = snapshots(folder)
    return found[-1] if found else None


def default_url() -> str:
    """Where genai-prices itself publishes its data (read from the installed package)."""
    from genai_prices.update_prices import DEFAULT_UPDATE_URL

    return DEFAULT_UPDATE_URL


def fetch_url(url: str, timeout: float = 30.0) -> bytes:
    """The default fetcher (stdlib): https:// or file:// URLs."""
    from urllib.request import urlopen

    with urlopen(url, timeout=timeout) as r:  # noqa: S310 (the user asked for this URL)
        data: bytes = r.read()
        return data


@dataclass
class Change:
    model: str
    what: str  # 'added', 'removed', or a rate name
    old: Decimal | None = None
    new: Decimal | None = None

    def __str__(self) -> str:
        if self.what in ("added", "removed"):
            return f"{self.what:8} {self.model}"
        return f"changed  {self.model} {self.what}: {self.old} -> {self.new}"


@dataclass
class UpdateResult:
    path: Path
    changes: list[Change] = field(default_factory=list)
    models: int = 0


def _rates_at(layer: GenaiLayer, at: datetime) -> dict[str, dict[str, Decimal]]:
    out = {}
    for e in layer.entries:
        v = next((v for v in reversed(e.versions) if v.in_force(at)), None)
        if v is not None:
            out[e.resource.key] = dict(v.rates)
    return out


def diff(old: GenaiLayer, new: GenaiLayer, at: datetime) -> list[Change]:
    a, b = _rates_at(old, at), _rates_at(new, at)
    changes = [Change(k, "added") for k in sorted(b.keys() - a.keys())]
    changes += [Change(k, "removed") for k in sorted(a.keys() - b.keys())]
    for k in sorted(a.keys() & b.keys()):
        for rate in sorted(a[k].keys() | b[k].keys()):
            if a[k].get(rate) != b[k].get(rate):
                changes.append(Change(k, rate, a[k].get(rate), b[k].get(rate)))
    return changes


def update(
    folder: str | Path,
    url: str | None = None,
    *,
    fetch: Callable[[str], bytes] = fetch_url,
    today: date | None = None,
    releases: dict[str, Any] | None = None,
) -> UpdateResult:
    """Fetch genai-prices' data, check it converts, save it dated, and diff it against the data in use.

    The data in use is the newest saved snapshot, or the bundled package data. A download that
    is not a usable snapshot raises ValueError and leaves the folder as it was.
    """
    day = today or date.today()
    raw = fetch(url or default_url())
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".download-{day.isoformat()}.json"
    tmp.write_bytes(raw)
    try:
        new = convert(read_snapshot(tmp), releases, label=f"genai-prices snapshot {day}")
        if not new.entries:
            raise ValueError("the downloaded data has no model prices truecost can use")
        current = latest(folder)
        old = load_genai_layer(releases, snapshot=current)
        target = folder / f"genai-prices-{day.isoformat()}.json"
        n = 1
        while target.exists():
            n += 1
            target = folder / f"genai-prices-{day.isoformat()}-{n}.json"
        tmp.replace(target)
    finally:
        if tmp.exists():
            tmp.unlink()
    at = datetime.combine(day, time(), tzinfo=timezone.utc)
    return UpdateResult(target, diff(old, new, at), len(new.entries))
