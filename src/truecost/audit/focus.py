"""FOCUS (FinOps Open Cost and Usage Specification) in and out.

``export_rows`` turns the ledger into FOCUS 1.2 line items: one row per charge day,
provider, service, token class (or unit) and attribution; token classes are separate SKUs
the way the specification's AI-billing examples bill input, output, cache-read and
cache-write tokens. ``reconcile`` compares a provider's FOCUS bill with the ledger per
model, token class and charge period: matched, unattributed (on the bill, not in the
ledger) and over-attributed (in the ledger, not on the bill).
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from truecost.audit import charts
from truecost.audit.html import Figure, Section, figures, page, table, write_report
from truecost.audit.sources import AuditInputError
from truecost.ledger.events import CostEvent
from truecost.ledger.store import LedgerFilter, LedgerStore

FOCUS_VERSION = "1.2"
EXPORT_COLUMNS = (
    "BilledCost",
    "BillingAccountId",
    "BillingCurrency",
    "BillingPeriodStart",
    "BillingPeriodEnd",
    "ChargeCategory",
    "ChargeClass",
    "ChargeDescription",
    "ChargeFrequency",
    "ChargePeriodStart",
    "ChargePeriodEnd",
    "ConsumedQuantity",
    "ConsumedUnit",
    "ContractedCost",
    "EffectiveCost",
    "ListCost",
    "ListUnitPrice",
    "PricingCategory",
    "PricingQuantity",
    "PricingUnit",
    "RegionId",
    "ServiceCategory",
    "ServiceName",
    "ServiceProviderName",
    "HostProviderName",
    "InvoiceIssuerName",
    "SkuId",
    "SkuMeter",
    "SkuPriceDetails",
    "Tags",
)
# token class -> (SkuMeter, TokenDirection, TokenCacheAction)
TOKEN_SKUS = {
    "input": ("Input Tokens", "Input", "Uncached"),
    "cached_input": ("Cache Read Input Tokens", "Input", "Read"),
    "cache_write_5m": ("Cache Write Input Tokens", "Input", "Write"),
    "cache_write_1h": ("Cache Write Input Tokens", "Input", "Write"),
    "output": ("Output Tokens", "Output", None),
    "reasoning": ("Reasoning Output Tokens", "Output", None),
}
RECONCILE_CLASS = {
    "input": "input",
    "cached_input": "cache_read",
    "cache_write_5m": "cache_write",
    "cache_write_1h": "cache_write",
    "output": "output",
    "reasoning": "output",
}
SERVICE_CATEGORY = {
    "generate": "AI and Machine Learning",
    "validate": "AI and Machine Learning",
    "embed": "AI and Machine Learning",
    "egress": "Networking",
    "log_storage": "Storage",
    "vector_search": "Databases",
    "reserved_capacity": "Compute",
    "cache_lookup": "Databases",
    "cache_judge": "AI and Machine Learning",
}
BILL_REQUIRED = ("ChargePeriodStart", "ChargePeriodEnd", "ServiceName")


@dataclass(slots=True)
class Line:
    """One billable component of one event."""

    event: CostEvent
    component: str  # token class, or the event's unit
    quantity: Decimal
    unit_price: Decimal | None
    cost: Decimal | None


def lines_of(e: CostEvent) -> list[Line]:
    """Split a generation event into its token classes (their costs add up to the event's exactly)."""
    tokens, prices, total = e.details.get("tokens"), e.details.get("unit_prices"), e.cost
    whole = [Line(e, e.unit or "unit", e.quantity, e.unit_price, total)]
    if not tokens or not prices or total is None:
        return whole
    parts: list[tuple[str, Decimal, Decimal]] = []
    for cls, qty in tokens.items():
        if not qty:
            continue
        up = prices.get(cls)
        if up is None:  # a class without its own rate: keep the event whole rather than guess
            return whole
        parts.append((cls, Decimal(qty), Decimal(up)))
    if not parts:
        return whole
    costs = [qty * up for _, qty, up in parts]
    biggest = max(range(len(costs)), key=costs.__getitem__)
    costs[biggest] += total - sum(costs, Decimal(0))  # rounding of the event's total stays with its largest line
    return [Line(e, cls, qty, up, cost) for (cls, qty, up), cost in zip(parts, costs)]


def _money(d: Decimal | None) -> str:
    """Plain decimal notation (no exponent), 12 places at most: what spreadsheets and BI tools read."""
    if d is None:
        return ""
    return format(d.quantize(Decimal("1e-12")).normalize(), "f")


def _day(ts: datetime) -> datetime:
    return ts.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)


def _tags_of(e: CostEvent) -> tuple[tuple[str, str], ...]:
    """The event's tags with its attribution dimensions merged in (dimensions win), as a sorted, hashable tuple."""
    a = e.attribution
    dims = (
        ("cost_center", a.cost_center),
        ("team", a.team),
        ("feature", a.feature),
        ("tenant", a.tenant),
        ("environment", a.environment),
    )
    return tuple(sorted({**dict(a.tags), **{k: v for k, v in dims if v}}.items()))


def _daily_groups(events: Iterable[CostEvent]) -> dict[tuple, list]:
    """[quantity, cost, unit price, unknown-price lines] per day, provider, service, component, step, region,
    currency and tags."""
    groups: dict[tuple, list] = defaultdict(lambda: [Decimal(0), Decimal(0), None, 0])
    for e in events:
        tags = _tags_of(e)
        for ln in lines_of(e):
            key = (
                _day(e.ts),
                e.provider or "unknown",
                e.service or e.step,
                ln.component,
                e.step,
                e.region or "",
                e.currency,
                tags,
            )
            g = groups[key]
            g[0] += ln.quantity
            g[1] += ln.cost or Decimal(0)
            g[2] = ln.unit_price if ln.unit_price is not None else g[2]
            g[3] += 1 if ln.cost is None else 0
    return groups


def _iso_z(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


def _focus_row(key: tuple, totals: list, account: str) -> dict[str, Any]:
    day, provider, service, comp, step, region, currency, tags = key
    qty, cost, up, unknown = totals
    meter, direction, action = TOKEN_SKUS.get(comp, (comp, None, None))
    details = {"ModelId": service} if comp in TOKEN_SKUS else {"Step": step}
    if direction:
        details["TokenDirection"] = direction
    if action:
        details["TokenCacheAction"] = action
    if unknown:
        details["truecost.unknown_price_events"] = unknown
    month = day.replace(day=1)
    nxt = (month + timedelta(days=32)).replace(day=1)
    cost_s, qty_s = _money(cost), _money(qty)
    return {
        "BilledCost": cost_s,
        "BillingAccountId": account,
        "BillingCurrency": currency,
        "BillingPeriodStart": _iso_z(month),
        "BillingPeriodEnd": _iso_z(nxt),
        "ChargeCategory": "Usage",
        "ChargeClass": "",
        "ChargeDescription": f"{meter} for {service}",
        "ChargeFrequency": "Usage-Based",
        "ChargePeriodStart": _iso_z(day),
        "ChargePeriodEnd": _iso_z(day + timedelta(days=1)),
        "ConsumedQuantity": qty_s,
        "ConsumedUnit": "Tokens" if comp in TOKEN_SKUS else comp,
        "ContractedCost": cost_s,
        "EffectiveCost": cost_s,
        "ListCost": cost_s,
        "ListUnitPrice": _money(up),
        "PricingCategory": "Standard",
        "PricingQuantity": qty_s,
        "PricingUnit": "Tokens" if comp in TOKEN_SKUS else comp,
        "RegionId": region,
        "ServiceCategory": SERVICE_CATEGORY.get(step, "Other"),
        "ServiceName": service,
        "ServiceProviderName": provider,
        "HostProviderName": provider,
        "InvoiceIssuerName": provider,
        "SkuId": f"{service}-{comp}",
        "SkuMeter": meter,
        "SkuPriceDetails": json.dumps(details, sort_keys=True),
        "Tags": json.dumps(dict(tags), sort_keys=True),
    }


def export_rows(events: Iterable[CostEvent], account: str = "truecost") -> Iterator[dict[str, Any]]:
    """FOCUS 1.2 rows, aggregated per day, provider, service, component, region and attribution."""
    for key, totals in sorted(_daily_groups(events).items()):
        yield _focus_row(key, totals, account)


def write_export(
    store: LedgerStore, path: str | Path, flt: LedgerFilter = LedgerFilter(), fmt: str | None = None
) -> int:
    rows = list(export_rows(store.query(flt)))
    p = Path(path)
    fmt = fmt or ("parquet" if p.suffix.lower() == ".parquet" else "csv")
    p.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise AuditInputError("Parquet export needs pyarrow: pip install pyarrow (or export as .csv)") from None
        cols = {c: [r[c] or None for r in rows] for c in EXPORT_COLUMNS}
        pq.write_table(pa.table(cols), p)
    else:
        with open(p, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=list(EXPORT_COLUMNS))
            w.writeheader()
            w.writerows(rows)
    return len(rows)


# ---------------------------------------------------------------- reconciliation


@dataclass(slots=True)
class BillLine:
    start: datetime
    end: datetime
    service: str
    model: str
    token_class: str
    quantity: Decimal | None
    cost: Decimal


def _ts(value: str, col: str, n: int) -> datetime:
    try:
        t = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        raise AuditInputError(f"row {n}: {col} {value!r} is not an ISO 8601 time") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def read_bill(path: str | Path) -> list[BillLine]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames or []
        missing = [c for c in BILL_REQUIRED if c not in cols]
        cost_col = "EffectiveCost" if "EffectiveCost" in cols else "BilledCost" if "BilledCost" in cols else None
        if cost_col is None:
            missing.append("EffectiveCost or BilledCost")
        if missing:
            raise AuditInputError(
                f"{path}: not a FOCUS billing export: missing column(s) {', '.join(missing)} "
                f"(columns: {', '.join(cols) or 'none'})"
            )
        out = []
        for n, rec in enumerate(reader, 2):
            try:
                details = json.loads(rec.get("SkuPriceDetails") or "{}") or {}
            except json.JSONDecodeError:
                details = {}
            direction = (details.get("TokenDirection") or "").lower()
            action = (details.get("TokenCacheAction") or "").lower()
            cls = {"read": "cache_read", "write": "cache_write"}.get(
                action, direction or (rec.get("SkuMeter") or "other").lower()
            )
            try:
                cost = Decimal(rec[cost_col])
                qty = Decimal(rec["ConsumedQuantity"]) if rec.get("ConsumedQuantity") else None
            except InvalidOperation:
                raise AuditInputError(f"{path}: row {n}: {cost_col} {rec[cost_col]!r} is not a number") from None
            out.append(
                BillLine(
                    _ts(rec["ChargePeriodStart"], "ChargePeriodStart", n),
                    _ts(rec["ChargePeriodEnd"], "ChargePeriodEnd", n),
                    rec["ServiceName"],
                    details.get("ModelId") or rec["ServiceName"],
                    cls,
                    qty,
                    cost,
                )
            )
    if not out:
        raise AuditInputError(f"{path}: the bill has no rows")
    return out


def reconcile(bill: Sequence[BillLine], store: LedgerStore, tolerance: Decimal = Decimal("0.005")) -> dict[str, Any]:
    """Per (period, model, token class): bill vs ledger. ``tolerance`` is relative (0.5% default, at least 1 cent)."""
    start, end = min(b.start for b in bill), max(b.end for b in bill)
    ledger: dict[tuple, list[Decimal]] = defaultdict(lambda: [Decimal(0), Decimal(0)])
    periods = sorted({(b.start, b.end) for b in bill})
    for e in store.query(LedgerFilter(since=start, until=end)):
        for ln in lines_of(e):
            period = next((p for p in periods if p[0] <= e.ts < p[1]), None)
            if period is None or ln.cost is None:
                continue
            key = (period, (e.service or e.step).lower(), RECONCILE_CLASS.get(ln.component, ln.component.lower()))
            ledger[key][0] += ln.cost
            ledger[key][1] += ln.quantity
    billed: dict[tuple, list] = defaultdict(lambda: [Decimal(0), Decimal(0), ""])
    for b in bill:
        key = ((b.start, b.end), b.model.lower(), b.token_class)
        billed[key][0] += b.cost
        billed[key][1] += b.quantity or 0
        billed[key][2] = b.service
    rows, totals = (
        [],
        {
            "billed": Decimal(0),
            "ledger": Decimal(0),
            "matched": Decimal(0),
            "unattributed": Decimal(0),
            "over_attributed": Decimal(0),
        },
    )
    for key in sorted(set(billed) | set(ledger), key=lambda k: (k[0], k[1], k[2])):
        (ps, pe), model, cls = key
        bc, bq, service = billed.get(key, (Decimal(0), Decimal(0), ""))
        lc, lq = ledger.get(key, (Decimal(0), Decimal(0)))
        diff = bc - lc
        tol = max(Decimal("0.01"), tolerance * max(bc, lc))
        status = "matched" if abs(diff) <= tol else "unattributed" if diff > 0 else "over-attributed"
        matched = min(bc, lc)
        totals["billed"] += bc
        totals["ledger"] += lc
        totals["matched"] += bc if status == "matched" else matched
        totals["unattributed"] += diff if status == "unattributed" else 0
        totals["over_attributed"] += -diff if status == "over-attributed" else 0
        rows.append(
            {
                "period_start": ps.isoformat(),
                "period_end": pe.isoformat(),
                "service": service,
                "model": model,
                "token_class": cls,
                "billed_usd": bc,
                "ledger_usd": lc,
                "difference_usd": diff,
                "billed_quantity": bq,
                "ledger_quantity": lq,
                "status": status,
            }
        )
    return {
        "kind": "reconciliation",
        "period": [start.isoformat(), end.isoformat()],
        "rows": rows,
        "totals": totals,
        "matched_share": float(totals["matched"] / totals["billed"]) if totals["billed"] else None,
    }


def render_reconcile_html(r: dict[str, Any]) -> str:
    t = r["totals"]
    figs = [
        Figure("billed", "on the bill", t["billed"], lambda v: charts.usd(float(v))),
        Figure("ledger", "in the ledger", t["ledger"], lambda v: charts.usd(float(v))),
        Figure("matched_share", "matched share of the bill", r["matched_share"], charts.pct),
        Figure("unattributed", "unattributed", t["unattributed"], lambda v: charts.usd(float(v))),
        Figure("over_attributed", "over-attributed", t["over_attributed"], lambda v: charts.usd(float(v))),
    ]
    rows = r["rows"]
    sections = [
        Section(
            "Bill vs ledger",
            [
                figures(figs),
                charts.hbar(
                    ["matched", "unattributed", "over-attributed"],
                    [float(t["matched"]), float(t["unattributed"]), float(t["over_attributed"])],
                    "Spend by reconciliation status",
                    fmt=charts.usd,
                    colors=("#3a9a5b", "#c2413b", "#e0793a"),
                ),
            ],
        ),
        Section(
            "Per model, token class and period",
            [
                table(
                    ["period", "model", "token class", "billed", "ledger", "difference", "status"],
                    [
                        [
                            f"{x['period_start'][:10]} – {x['period_end'][:10]}",
                            x["model"],
                            x["token_class"],
                            f"${x['billed_usd']:,.4f}",
                            f"${x['ledger_usd']:,.4f}",
                            f"${x['difference_usd']:,.4f}",
                            x["status"],
                        ]
                        for x in rows
                    ],
                    numeric=(3, 4, 5),
                )
            ],
        ),
    ]
    return page(
        "truecost · reconciliation",
        f"{r.get('source', '')} · {r['period'][0][:10]} to {r['period'][1][:10]}",
        sections,
        data=r,
    )


def write_reconcile_report(r: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    return write_report(out_dir, "reconciliation", r, render_reconcile_html(r))
