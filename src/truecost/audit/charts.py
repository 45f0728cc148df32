"""Small server-side SVG charts: no JavaScript, no network, nothing to bundle but this file.

Every chart is an ``<svg>`` string with a ``<title>`` and the plotted numbers on each mark
(``data-value``), so a report can be read by a person and checked by a test.
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from html import escape
from typing import Any, Callable, Sequence

PALETTE = ("#2f6db5", "#e0793a", "#3a9a5b", "#c2413b", "#7a5fb0", "#8c6d4f", "#d46fb1", "#6f7c8a", "#b5b52f", "#2fb5b0")
Fmt = Callable[[float], str]


def _num(v: float) -> str:
    return f"{v:.2f}".rstrip("0").rstrip(".") if math.isfinite(v) else "0"


def _decimal(v: Any) -> Decimal | None:
    """A finite Decimal for a Decimal, int or float (floats by their shortest repr), else None."""
    try:
        d = v if isinstance(v, Decimal) else Decimal(v) if isinstance(v, int) else Decimal(repr(float(v)))
    except (TypeError, ValueError, InvalidOperation):
        return None
    return d if d.is_finite() else None


def significant(d: Decimal, digits: int, min_places: int = 0) -> str:
    """``d`` (0 < |d| < 1) in fixed point with ``digits`` significant digits, never an exponent:
    0.00002022 -> '0.0000202'. Trailing zeros go, down to ``min_places`` decimals."""
    q = d.quantize(Decimal(1).scaleb(d.adjusted() - digits + 1), rounding=ROUND_HALF_EVEN)
    text = format(q, "f")
    if "." in text:
        whole, frac = text.split(".")
        frac = frac.rstrip("0").ljust(min_places, "0")
        text = f"{whole}.{frac}" if frac else whole
    return text


def default_fmt(v: float) -> str:
    d = _decimal(v)
    if d is None:
        return "n/a"
    if abs(d) >= 1000:
        return f"{d:,.0f}"
    if abs(d) >= 1:
        return f"{d:,.2f}"
    return "0" if d == 0 else significant(d, 4)


def usd(v: Any, digits: int = 3) -> str:
    """Dollars for people: '$1,234.50', '$0.0412', '$0.0000202' (``digits`` significant digits below
    a dollar), '-$0.50'; never scientific notation. Takes Decimal, int or float; None -> 'n/a'."""
    d = _decimal(v) if v is not None else None
    if d is None:
        return "n/a"
    sign, d = ("-" if d < 0 else ""), abs(d)
    if d == 0:
        return "$0.00"
    text = f"{d:,.2f}" if d >= 1 else significant(d, digits, min_places=2)
    return f"{sign}${text}"


def pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def _svg(width: int, height: int, title: str, body: list[str], kind: str) -> str:
    return (
        f'<svg class="chart" data-chart="{escape(kind)}" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">'
        f"<title>{escape(title)}</title><style>text{{font:12px sans-serif;fill:#222}} .ax{{stroke:#999}}"
        f" .muted{{fill:#666}}</style>{''.join(body)}</svg>"
    )


def hbar(
    labels: Sequence[str],
    values: Sequence[float],
    title: str,
    fmt: Fmt = default_fmt,
    width: int = 640,
    colors: Sequence[str] | None = None,
) -> str:
    """Horizontal bars, one per label (cost by step, by model, ...)."""
    row, left, right = 24, 170, 90
    height = 30 + row * max(1, len(labels))
    top = max([v for v in values if math.isfinite(v)] + [0.0]) or 1.0
    scale = (width - left - right) / top
    body = [f'<text x="4" y="16" font-weight="bold">{escape(title)}</text>']
    for i, (label, v) in enumerate(zip(labels, values)):
        y = 26 + i * row
        w = max(0.0, v) * scale
        color = (colors or PALETTE)[i % len(colors or PALETTE)]
        body.append(
            f'<text x="{left - 6}" y="{y + 15}" text-anchor="end">{escape(str(label)[:28])}</text>'
            f'<rect x="{left}" y="{y + 3}" width="{_num(w)}" height="{row - 6}" fill="{color}" '
            f'data-label="{escape(str(label))}" data-value="{v!r}"><title>{escape(str(label))}: {escape(fmt(v))}'
            f'</title></rect><text x="{_num(left + w + 4)}" y="{y + 15}" class="muted">{escape(fmt(v))}</text>'
        )
    return _svg(width, height, title, body, "hbar")


def waterfall(labels: Sequence[str], values: Sequence[float], title: str, fmt: Fmt = usd, width: int = 640) -> str:
    """Cumulative steps left to right, ending in a total bar."""
    n = len(labels) + 1
    left, bottom, top_pad = 84, 70, 30
    height = 300
    plot_h = height - bottom - top_pad
    total = sum(v for v in values if math.isfinite(v))
    scale = plot_h / (total or 1.0)
    slot = (width - left - 10) / n
    body = [
        f'<text x="4" y="16" font-weight="bold">{escape(title)}</text>',
        f'<line class="ax" x1="{left}" y1="{height - bottom}" x2="{width - 10}" y2="{height - bottom}"/>',
    ]
    acc = 0.0
    for i, (label, v) in enumerate(list(zip(labels, values)) + [("total", total)]):
        x = left + i * slot + slot * 0.15
        is_total = i == n - 1
        base = 0.0 if is_total else acc
        y0 = height - bottom - (base + v) * scale
        color = "#444" if is_total else PALETTE[i % len(PALETTE)]
        body.append(
            f'<rect x="{_num(x)}" y="{_num(y0)}" width="{_num(slot * 0.7)}" height="{_num(max(v * scale, 0.5))}" '
            f'fill="{color}" data-label="{escape(str(label))}" data-value="{v!r}"><title>{escape(str(label))}: '
            f"{escape(fmt(v))}</title></rect>"
            f'<text x="{_num(x + slot * 0.35)}" y="{height - bottom + 12}" text-anchor="end" '
            f'transform="rotate(-35 {_num(x + slot * 0.35)} {height - bottom + 12})">{escape(str(label)[:18])}</text>'
        )
        if not is_total:
            acc += v
    body.append(f'<text x="{left - 4}" y="{top_pad + 4}" text-anchor="end" class="muted">{escape(fmt(total))}</text>')
    return _svg(width, height, title, body, "waterfall")


def lines(
    x: Sequence[float],
    series: dict[str, Sequence[float | None]],
    title: str,
    x_label: str,
    y_label: str,
    fmt_x: Fmt = default_fmt,
    fmt_y: Fmt = default_fmt,
    width: int = 640,
    y_max: float | None = None,
    marker: float | None = None,
    y_min: float = 0.0,
) -> str:
    """One or more lines over a shared x axis (hit rate vs threshold, quality vs strong share...)."""
    height, left, bottom, top_pad, right = 300, 60, 46, 40, 20
    xs = [float(v) for v in x]
    ys = [float(v) for s in series.values() for v in s if v is not None and math.isfinite(v)]
    if not xs:
        return _svg(width, 60, title, [f'<text x="4" y="16">{escape(title)}: no data</text>'], "lines")
    x0, x1 = min(xs), max(xs)
    y1 = y_max if y_max is not None else (max(ys) if ys else 1.0) or 1.0
    sx = (width - left - right) / ((x1 - x0) or 1.0)
    y0 = min(y_min, y1)
    sy = (height - bottom - top_pad) / ((y1 - y0) or 1.0)
    single = x0 == x1  # one x (all the data in one bucket): centred, and drawn as points

    def px(v: float) -> float:
        return (left + width - right) / 2 if single else left + (v - x0) * sx

    def py(v: float) -> float:
        return height - bottom - (v - y0) * sy

    body = [
        f'<text x="4" y="16" font-weight="bold">{escape(title)}</text>',
        f'<line class="ax" x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}"/>',
        f'<line class="ax" x1="{left}" y1="{top_pad}" x2="{left}" y2="{height - bottom}"/>',
        f'<text x="{(left + width - right) / 2}" y="{height - 8}" text-anchor="middle">{escape(x_label)}</text>',
        f'<text x="12" y="{(height - bottom + top_pad) / 2}" transform="rotate(-90 12 {(height - bottom + top_pad) / 2})" '
        f'text-anchor="middle">{escape(y_label)}</text>',
    ]
    for t in range(5):
        yv = y0 + (y1 - y0) * t / 4
        body.append(
            f'<text x="{left - 4}" y="{_num(py(yv) + 4)}" text-anchor="end" class="muted">{escape(fmt_y(yv))}</text>'
        )
        if single and t:
            continue
        xv = x0 + (x1 - x0) * t / 4
        body.append(
            f'<text x="{_num(px(xv))}" y="{height - bottom + 14}" text-anchor="middle" class="muted">'
            f"{escape(fmt_x(xv))}</text>"
        )
    if marker is not None and x0 <= marker <= x1:
        body.append(
            f'<line x1="{_num(px(marker))}" y1="{top_pad}" x2="{_num(px(marker))}" y2="{height - bottom}" '
            f'stroke="#bbb" stroke-dasharray="4 3"/>'
        )
    for i, (name, s) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        vals = [(a, float(b)) for a, b in zip(xs, s) if b is not None and math.isfinite(b)]
        pts = [(px(a), py(max(min(b, y1), y0))) for a, b in vals]
        if len(pts) > 1:
            d = " ".join(f"{_num(a)},{_num(b)}" for a, b in pts)
            body.append(
                f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{d}" data-series="{escape(name)}"/>'
            )
        elif pts:  # a line through one point draws nothing: a point, with its value
            (a, b), (_, v) = pts[0], vals[0]
            body.append(
                f'<circle cx="{_num(a)}" cy="{_num(b)}" r="5" fill="{color}" data-series="{escape(name)}" '
                f'data-value="{v!r}"><title>{escape(name)}: {escape(fmt_y(v))}</title></circle>'
            )
        body.append(
            f'<rect x="{left + 10 + 150 * i}" y="24" width="10" height="10" fill="{color}"/>'
            f'<text x="{left + 24 + 150 * i}" y="33">{escape(name)}</text>'
        )
    return _svg(width, height, title, body, "lines")


def tornado(rows: Sequence[tuple[str, float, float]], base: float, title: str, fmt: Fmt = usd, width: int = 640) -> str:
    """Sensitivity: for each knob, the total at its low and high setting around the base total."""
    row, left, right = 26, 190, 20
    height = 40 + row * max(1, len(rows))
    span = max([abs(v - base) for _, lo, hi in rows for v in (lo, hi)] + [1e-12])
    mid = left + (width - left - right) / 2
    scale = (width - left - right) / 2 / span
    body = [
        f'<text x="4" y="16" font-weight="bold">{escape(title)}</text>',
        f'<line class="ax" x1="{_num(mid)}" y1="24" x2="{_num(mid)}" y2="{height - 4}"/>',
    ]
    for i, (name, lo, hi) in enumerate(rows):
        y = 28 + i * row
        body.append(f'<text x="{left - 6}" y="{y + 15}" text-anchor="end">{escape(name[:30])}</text>')
        for v, color, side in ((lo, "#3a9a5b", "low"), (hi, "#c2413b", "high")):
            d = (v - base) * scale
            x = mid + min(0.0, d)
            body.append(
                f'<rect x="{_num(x)}" y="{y + 4}" width="{_num(abs(d))}" height="{row - 8}" fill="{color}" '
                f'data-label="{escape(name)}:{side}" data-value="{v!r}"><title>{escape(name)} {side}: '
                f"{escape(fmt(v))}</title></rect>"
            )
    return _svg(width, height, title, body, "tornado")


def histogram(labels: Sequence[str], counts: Sequence[int], title: str, width: int = 640) -> str:
    """Vertical bars for a distribution (cluster sizes)."""
    height, left, bottom, top_pad = 260, 50, 40, 30
    top = max(list(counts) + [1])
    slot = (width - left - 10) / max(1, len(labels))
    scale = (height - bottom - top_pad) / top
    body = [
        f'<text x="4" y="16" font-weight="bold">{escape(title)}</text>',
        f'<line class="ax" x1="{left}" y1="{height - bottom}" x2="{width - 10}" y2="{height - bottom}"/>',
    ]
    for i, (label, c) in enumerate(zip(labels, counts)):
        x = left + i * slot + slot * 0.1
        h = c * scale
        body.append(
            f'<rect x="{_num(x)}" y="{_num(height - bottom - h)}" width="{_num(slot * 0.8)}" height="{_num(h)}" '
            f'fill="{PALETTE[0]}" data-label="{escape(str(label))}" data-value="{c}"><title>{escape(str(label))}: {c}'
            f'</title></rect><text x="{_num(x + slot * 0.4)}" y="{height - bottom + 14}" text-anchor="middle">'
            f'{escape(str(label))}</text><text x="{_num(x + slot * 0.4)}" y="{_num(height - bottom - h - 3)}" '
            f'text-anchor="middle" class="muted">{c}</text>'
        )
    return _svg(width, height, title, body, "histogram")
