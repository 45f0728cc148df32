"""`truecost audit routing`: how much of this traffic could a small model serve, and what would it save?

Labels say, per sampled query, whether the small model is good enough (``small``), the
large one is needed (``large``) or the labeller could not tell (``skip``). They come from
a CSV of human labels, the interactive labeller, the rules router, a judge model behind
an OpenAI-compatible endpoint, or, for routing files that already hold both models'
quality, from those scores.
"""

from __future__ import annotations

import csv
import json
import math
import random
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Sequence

from truecost.audit import charts
from truecost.audit.html import Figure, Section, figures, page, table, write_report
from truecost.audit.sources import AuditInputError, QueryRow
from truecost.pricing.catalog import PriceCatalog
from truecost.pricing.cost import price_tokens
from truecost.routing.decision import RouteRequest
from truecost.routing.rules import RulesRouter
from truecost.types import TokenUsage

LABELS = ("small", "large", "skip")
JUDGE_PROMPT = (
    "You decide which model a request needs. A small, cheap model handles greetings, lookups, short "
    "factual questions, rewording and simple classification. A large model is needed for multi-step "
    "reasoning, maths, code, long or ambiguous requests. Reply with exactly one word: SMALL or LARGE.\n\n"
    "Request:\n"
)


def draw_sample(rows: Sequence[QueryRow], n: int, seed: int) -> list[QueryRow]:
    if n <= 0:
        raise AuditInputError("the sample size must be positive")
    return list(rows) if len(rows) <= n else random.Random(seed).sample(list(rows), n)


def normalise_label(value: str | None) -> str | None:
    v = (value or "").strip().lower()
    aliases = {
        "s": "small",
        "weak": "small",
        "cheap": "small",
        "l": "large",
        "strong": "large",
        "big": "large",
        "k": "skip",
        "": None,
    }
    label = aliases.get(v, v)
    if label is not None and label not in LABELS:
        raise AuditInputError(f"unknown label {value!r}: use small, large or skip")
    return label


def labels_from_csv(path: str | Path, sample: Sequence[QueryRow]) -> dict[str, str]:
    """Join human labels by ``id`` (or by ``text`` when the CSV has no ids)."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames or []
        if "label" not in cols or not ({"id", "text"} & set(cols)):
            raise AuditInputError(
                f"{path}: a labels CSV needs a 'label' column and an 'id' or 'text' column "
                f"(columns: {', '.join(cols) or 'none'})"
            )
        by_id: dict[str, str] = {}
        by_text: dict[str, str] = {}
        for rec in reader:
            label = normalise_label(rec.get("label"))
            if label is None:
                continue
            if rec.get("id"):
                by_id[rec["id"]] = label
            if rec.get("text"):
                by_text[rec["text"].strip()] = label
    joined: dict[str, str] = {}
    for r in sample:
        label = by_id.get(r.id) or by_text.get(r.text.strip())
        if label:
            joined[r.id] = label
    return joined


def labels_from_rules(sample: Sequence[QueryRow], router: RulesRouter) -> dict[str, str]:
    return {r.id: ("small" if router.route(RouteRequest(r.text)).model == router.weak else "large") for r in sample}


def labels_from_judge(sample: Sequence[QueryRow], ask: Callable[[str], str], progress=None) -> dict[str, str]:
    """``ask`` sends one prompt to the judge and returns its text; an unclear reply is a skip."""
    out = {}
    for i, r in enumerate(sample, 1):
        reply = ask(JUDGE_PROMPT + r.text[:4000]).strip().upper()
        out[r.id] = "small" if reply.startswith("SMALL") else "large" if reply.startswith("LARGE") else "skip"
        if progress:
            progress(i, len(sample))
    return out


def openai_judge(base_url: str, model: str, api_key: str | None = None, timeout: float = 60.0) -> Callable[[str], str]:
    import httpx

    client = httpx.Client(
        base_url=base_url.rstrip("/"),
        timeout=timeout,
        headers={"authorization": f"Bearer {api_key}"} if api_key else {},
    )

    def ask(prompt: str) -> str:
        resp = client.post(
            "/chat/completions",
            json={"model": model, "max_tokens": 3, "temperature": 0, "messages": [{"role": "user", "content": prompt}]},
        )
        resp.raise_for_status()
        return resp.json()["choices"][0]["message"]["content"] or ""

    return ask


class LabelFile:
    """Append-only CSV of labels, so an interrupted labelling session resumes where it stopped."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, str]:
        if not self.path.exists():
            return {}
        with open(self.path, newline="", encoding="utf-8") as fh:
            return {rec["id"]: rec["label"] for rec in csv.DictReader(fh) if rec.get("label") in LABELS}

    def append(self, row: QueryRow, label: str) -> None:
        new = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            if new:
                w.writerow(["id", "label", "text"])
            w.writerow([row.id, label, row.text])


def label_interactively(
    sample: Sequence[QueryRow],
    store: LabelFile,
    read_key: Callable[[], str],
    show: Callable[[int, int, QueryRow], None],
) -> dict[str, str]:
    """Keys: s = small, l = large, k = skip, q = stop (resume later from the same file)."""
    done = store.load()
    for i, r in enumerate(sample, 1):
        if r.id in done:
            continue
        show(i, len(sample), r)
        while True:
            key = read_key().lower()
            if key == "q":
                return done
            label = {"s": "small", "l": "large", "k": "skip"}.get(key)
            if label:
                store.append(r, label)
                done[r.id] = label
                break
    return done


def labels_from_quality(path: str | Path, weak: str, strong: str, sample: Sequence[QueryRow]) -> dict[str, str]:
    """For routing files (``models`` with per-model ``quality``): small iff the weak model did as well."""
    wanted = {r.id for r in sample}
    out = {}
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            obj = json.loads(line)
            rid = str(obj.get("prompt_id", obj.get("id", n)))
            if rid not in wanted:
                continue
            models = {k.lower(): v for k, v in (obj.get("models") or {}).items()}
            for m in (weak, strong):
                if m.lower() not in models:
                    raise AuditInputError(
                        f"{path}: model {m!r} not in row {rid} (models: {', '.join(obj.get('models') or {})})"
                    )
            qw, qs = models[weak.lower()].get("quality"), models[strong.lower()].get("quality")
            out[rid] = "skip" if qw is None or qs is None else ("small" if qw >= qs else "large")
    return out


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(slots=True)
class Prices:
    small_model: str
    large_model: str
    input_tokens: int
    output_tokens: int
    requests_per_day: int


def _per_request(catalog: PriceCatalog, model: str, p: Prices) -> Decimal:
    version, reason = catalog.price_or_none(model, kind="chat")
    if version is None:
        raise AuditInputError(f"no price for {model!r}: {reason}")
    cost = price_tokens(version, TokenUsage(input=p.input_tokens, output=p.output_tokens)).cost
    if cost is None:
        raise AuditInputError(f"{model!r} has no token prices in the catalog")
    return cost


def _blend(share: float, c_small: Decimal, c_large: Decimal) -> Decimal:
    """Cost per request when ``share`` of requests go to the small model and the rest to the large one."""
    d = Decimal(str(round(share, 6)))
    return d * c_small + (1 - d) * c_large


def _rules_agreement(
    sample: Sequence[QueryRow], labels: Sequence[str | None], rules: RulesRouter
) -> tuple[float, float]:
    """Over the labelled queries: the share the rules router sends small, and the share it misroutes
    (sends small where the label says large)."""
    rule_small = [rules.route(RouteRequest(r.text)).model == rules.weak for r in sample]
    rated_rows = [(lab, rs) for lab, rs in zip(labels, rule_small) if lab in ("small", "large")]
    share = sum(rs for _, rs in rated_rows) / len(rated_rows)
    misroute = sum(1 for lab, rs in rated_rows if rs and lab == "large") / len(rated_rows)
    return share, misroute


def _strategy_rows(
    share: float, rules: tuple[float, float], c_small: Decimal, c_large: Decimal, requests_per_day: int
) -> list[dict[str, Any]]:
    """Cost per request and per month, saving, small share and misrouted share of each routing strategy."""
    rules_share, rules_misroute = rules
    d = Decimal(str(round(share, 6)))
    monthly = Decimal(requests_per_day * 30)
    strategies = {
        "always large": (c_large, 0.0, 0.0),
        "always small": (c_small, 1.0, 1 - share),
        "rules router": (_blend(rules_share, c_small, c_large), rules_share, rules_misroute),
        "ideal router": (d * c_small + (1 - d) * c_large, share, 0.0),
        "ideal cascade (small first)": (c_small + (1 - d) * c_large, 1.0, 0.0),
    }
    return [
        {
            "strategy": k,
            "cost_per_request_usd": v[0],
            "monthly_usd": (v[0] * monthly).quantize(Decimal("0.01")),
            "saving_vs_large": float(1 - v[0] / c_large) if c_large else None,
            "small_share": v[1],
            "misrouted_share": v[2],
        }
        for k, v in strategies.items()
    ]


def _routing_recommendation(share: float, lo: float, hi: float) -> dict[str, str]:
    worth = share > 0.5
    return {
        "level": "build" if worth else "skip",
        "recommendation": (
            "a router is worth building: start with rules, then train a scorer on these labels"
            if worth
            else "most requests need the large model: a router would save little"
        ),
        "rule": f"{share:.1%} small-capable (95% CI {lo:.1%}-{hi:.1%}); rule: > 50% -> build a router",
    }


def run_routing_audit(
    sample: Sequence[QueryRow],
    labels: dict[str, str],
    prices: Prices,
    label_source: str,
    catalog: PriceCatalog | None = None,
    source: str = "",
) -> dict[str, Any]:
    catalog = catalog or PriceCatalog.bundled()
    got = [labels.get(r.id) for r in sample]
    small, large = got.count("small"), got.count("large")
    skipped, missing = got.count("skip"), got.count(None)
    rated = small + large
    if rated == 0:
        raise AuditInputError(
            f"no usable labels among {len(sample)} sampled queries ({skipped} skipped, {missing} unlabelled)"
        )
    share = small / rated
    lo, hi = wilson(small, rated)
    c_small, c_large = (
        _per_request(catalog, prices.small_model, prices),
        _per_request(catalog, prices.large_model, prices),
    )
    rules = RulesRouter(prices.small_model, prices.large_model)
    rows = _strategy_rows(share, _rules_agreement(sample, got, rules), c_small, c_large, prices.requests_per_day)
    return {
        "kind": "routing_audit",
        "source": source,
        "label_source": label_source,
        "sampled": len(sample),
        "labelled": rated,
        "skipped": skipped,
        "unlabelled": missing,
        "small_capable_share": share,
        "ci95": [lo, hi],
        "prices": {
            "small_model": prices.small_model,
            "large_model": prices.large_model,
            "input_tokens": prices.input_tokens,
            "output_tokens": prices.output_tokens,
            "requests_per_day": prices.requests_per_day,
            "small_cost_per_request_usd": c_small,
            "large_cost_per_request_usd": c_large,
        },
        "strategies": rows,
        "rules_curve": rules_curve(sample, got, rules, c_small, c_large),
        "recommendation": _routing_recommendation(share, lo, hi),
    }


def rules_curve(
    sample: Sequence[QueryRow],
    labels: Sequence[str | None],
    rules: RulesRouter,
    c_small: Decimal,
    c_large: Decimal,
    points: int = 21,
) -> list[dict]:
    """Cost-quality curve of the rules router: sweep its difficulty threshold over the labelled sample.

    Each point: the share served small, the share misrouted (large needed, small served) and
    the blended cost per request. The router's default cut is 1.0.
    """
    rated = [(rules.score(RouteRequest(r.text)), lab) for r, lab in zip(sample, labels) if lab in ("small", "large")]
    if not rated:
        return []
    scores = sorted(s for s, _ in rated)
    cuts = sorted(
        {scores[min(len(scores) - 1, int(q * (len(scores) - 1) / (points - 1)))] for q in range(points)} | {1.0}
    )
    out = []
    for cut in [float("-inf"), *cuts, float("inf")]:
        small = [(s < cut, lab) for s, lab in rated]
        share = sum(x for x, _ in small) / len(small)
        out.append(
            {
                "cut": None if cut in (float("inf"), float("-inf")) else cut,
                "small_share": share,
                "misrouted_share": sum(1 for x, lab in small if x and lab == "large") / len(small),
                "cost_per_request_usd": _blend(share, c_small, c_large),
            }
        )
    return sorted(out, key=lambda p: p["small_share"])


def render_routing_html(r: dict[str, Any]) -> str:
    st = r["strategies"]
    figs = [
        Figure("small_capable_share", "small-model capable", r["small_capable_share"], charts.pct),
        Figure("ci_low", "95% CI low", r["ci95"][0], charts.pct),
        Figure("ci_high", "95% CI high", r["ci95"][1], charts.pct),
        Figure("labelled", "labelled queries", r["labelled"]),
    ]
    sections = [
        Section(
            "Verdict",
            [
                f'<p class="rec">{r["recommendation"]["recommendation"]}</p>'
                f'<p class="note">{r["recommendation"]["rule"]}; labels from {r["label_source"]}</p>',
                figures(figs),
            ],
        ),
        Section(
            "Blended cost by strategy",
            [
                charts.hbar(
                    [s["strategy"] for s in st],
                    [float(s["monthly_usd"]) for s in st],
                    "Monthly cost by routing strategy",
                    fmt=charts.usd,
                ),
                charts.lines(
                    [p["small_share"] for p in r["rules_curve"]],
                    {
                        "misrouted (large needed, small served)": [p["misrouted_share"] for p in r["rules_curve"]],
                        "cost vs always large": [
                            float(p["cost_per_request_usd"] / r["prices"]["large_cost_per_request_usd"])
                            for p in r["rules_curve"]
                        ],
                    },
                    "Cost-quality curve of the rules router (threshold swept)",
                    "share served by the small model",
                    "share",
                    fmt_x=charts.pct,
                    fmt_y=charts.pct,
                    y_max=1.0,
                ),
                table(
                    ["strategy", "cost / request", "per month", "saving", "small share", "misrouted"],
                    [
                        [
                            s["strategy"],
                            f"${s['cost_per_request_usd']:.6f}",
                            charts.usd(float(s["monthly_usd"])),
                            charts.pct(s["saving_vs_large"]),
                            charts.pct(s["small_share"]),
                            charts.pct(s["misrouted_share"]),
                        ]
                        for s in st
                    ],
                    numeric=(1, 2, 3, 4, 5),
                ),
            ],
        ),
        Section("Prices", [table(["item", "value"], [[k, v] for k, v in r["prices"].items()])]),
    ]
    return page("truecost · routing opportunity", f"{r['source']} · {r['sampled']} sampled", sections, data=r)


def write_routing_report(r: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    return write_report(out_dir, "routing_audit", r, render_routing_html(r))
