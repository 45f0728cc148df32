"""Self-contained HTML reports: inline CSS and SVG, the report's JSON embedded, no network.

Figures a reader should trust carry ``data-key`` attributes whose text is the formatted
value and whose ``data-value`` is the raw number from the JSON, so a test (or a person
with devtools) can check the page against the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any, Callable, Sequence

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:14px 28px}header h1{margin:0;font-size:20px}
header p{margin:2px 0 0;color:#b9c2d0;font-size:12px}
main{padding:18px 28px;max-width:1100px}
section{background:#fff;border:1px solid #e2e5ea;border-radius:6px;padding:14px 18px;margin:0 0 16px}
h2{font-size:16px;margin:0 0 10px}
.figures{display:flex;flex-wrap:wrap;gap:10px}
.fig{border:1px solid #e2e5ea;border-radius:6px;padding:8px 12px;min-width:130px}
.fig .v{font-size:20px;font-weight:600}.fig .k{font-size:12px;color:#5b6475}
table{border-collapse:collapse;width:100%;font-size:13px}th,td{padding:4px 8px;border-bottom:1px solid #eef0f3;text-align:left}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.note{color:#5b6475;font-size:12px}.rec{font-weight:600;padding:8px 12px;border-left:4px solid #2f6db5;background:#eef4fb}
.warn{border-left-color:#c2413b;background:#fbeeee}
svg.chart{max-width:100%;height:auto}
nav a{color:#b9c2d0;margin-right:14px;text-decoration:none}nav a.on{color:#fff;font-weight:600}
form.filters{display:flex;flex-wrap:wrap;gap:8px;align-items:end;margin:0 0 12px}
form.filters label{font-size:12px;color:#5b6475;display:flex;flex-direction:column}
form.filters input[readonly]{background:#eef0f3;color:#5b6475}
nav form.who{float:right;margin:0;color:#b9c2d0;font-size:12px}nav form.who button{margin-left:8px}
form.login{display:flex;gap:8px;align-items:end}form.login label{display:flex;flex-direction:column;font-size:12px;color:#5b6475}
"""


@dataclass(slots=True)
class Figure:
    key: str
    label: str
    value: Any
    fmt: Callable[[Any], str] = str

    def html(self) -> str:
        raw = "" if self.value is None else str(self.value)
        shown = "n/a" if self.value is None else self.fmt(self.value)
        return (
            f'<div class="fig"><div class="v" data-key="{escape(self.key)}" data-value="{escape(raw)}">'
            f'{escape(shown)}</div><div class="k">{escape(self.label)}</div></div>'
        )


def figures(items: Sequence[Figure]) -> str:
    return '<div class="figures">' + "".join(f.html() for f in items) + "</div>"


def table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[int] = (), row_key: str | None = None
) -> str:
    """A plain table; columns listed in ``numeric`` are right-aligned."""
    head = "".join(f'<th class="{"n" if i in numeric else ""}">{escape(h)}</th>' for i, h in enumerate(headers))
    body = []
    for r in rows:
        attr = f' data-row="{escape(str(r[0]))}"' if row_key else ""
        cells = "".join(
            f'<td class="{"n" if i in numeric else ""}">{escape("" if c is None else str(c))}</td>'
            for i, c in enumerate(r)
        )
        body.append(f"<tr{attr}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


@dataclass(slots=True)
class Section:
    heading: str
    parts: list[str] = field(default_factory=list)

    def html(self) -> str:
        return f"<section><h2>{escape(self.heading)}</h2>{''.join(self.parts)}</section>"


def page(
    title: str, subtitle: str, sections: Sequence[Section], data: Any = None, nav: str = "", extra_head: str = ""
) -> str:
    payload = ""
    if data is not None:
        text = json.dumps(data, default=str).replace("</", "<\\/")
        payload = f'<script type="application/json" id="truecost-data">{text}</script>'
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><link rel="icon" href="data:,"><style>{CSS}</style>{extra_head}</head>'
        f"<body><header>{nav}<h1>{escape(title)}</h1><p>{escape(subtitle)}</p></header><main>"
        f"{''.join(s.html() for s in sections)}</main>{payload}</body></html>"
    )


def write_report(out_dir: str | Path, stem: str, data: dict[str, Any], html_text: str) -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.html`` side by side; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jp, hp = out / f"{stem}.json", out / f"{stem}.html"
    jp.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    hp.write_text(html_text, encoding="utf-8")
    return jp, hp
