"""Price agreement: truecost side by side with LiteLLM and genai-prices on the same usage.

    bench/setup_price_refs.sh                      # once: LiteLLM + genai-prices in .venv-prices
    python bench/price_agreement.py [--at 2026-11-20] [--out result.json] [--rows]

For every OpenAI, Anthropic and Google chat model that truecost prices and at least one
reference knows, a fixed set of usage shapes (plain, cached, cache write, reasoning, long
context, batch, audio, flex and priority service tiers) is priced three ways in one run: truecost
here, the references in their own venv (bench/_price_refs.py, a subprocess). A row is
*comparable* when truecost and a reference both price it; it *agrees* when every reference that
priced it is within 0.5%; a disagreement is *documented* when bench/known_differences.yaml says
which side is right and the source that says so. A row a reference prices and truecost leaves
unknown is *truecost_missing* (known_differences may explain it, *missing_documented*, but it still
counts against the target), except when truecost's catalog states, with a source, that the provider
does not offer that option for the model (*not_offered*: e.g. Batch for the search-preview models),
which is counted apart. Printed: JSON, per model and shape and a summary.
Targets (issue #16): >= 98% of comparable rows agree or are documented; zero rows where a
reference prices a model and shape that truecost leaves unpriced.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import subprocess
import sys
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import yaml

from truecost.pricing import PriceCatalog, price_tokens
from truecost.pricing.usage import anthropic_call, google_call, openai_call

ROOT = Path(__file__).resolve().parents[1]
REF_PYTHON = ROOT / ".venv-prices" / "bin" / "python"
TOLERANCE = Decimal("0.005")
PROVIDERS = ("openai", "anthropic", "google")
# Shapes in OpenAI's counting (prompt includes cached, cache_write, audio_in; completion includes
# reasoning, audio_out).
SHAPES = {
    "plain": {"prompt": 10_000, "completion": 1_000},
    "cached": {"prompt": 10_000, "cached": 8_000, "completion": 1_000},
    "cache_write": {"prompt": 10_000, "cache_write": 8_000, "completion": 500},
    "reasoning": {"prompt": 5_000, "completion": 3_000, "reasoning": 2_000},
    "long_context": {"prompt": 300_000, "cached": 100_000, "completion": 2_000},
    "batch": {"prompt": 10_000, "cached": 4_000, "completion": 1_000, "batch": True},
    "audio_in": {"prompt": 1_000, "audio_in": 600, "completion": 500},
    "audio_out": {"prompt": 1_000, "audio_in": 600, "completion": 500, "audio_out": 300},
    "flex": {"prompt": 10_000, "cached": 4_000, "completion": 1_000, "service_tier": "flex"},
    "priority": {"prompt": 10_000, "cached": 4_000, "completion": 1_000, "service_tier": "priority"},
}


# Models that are not text chat (their shapes are images, speech, transcripts): not compared here.
NOT_CHAT = (
    "*tts*",
    "*image*",
    "*transcribe*",
    "*whisper*",
    "*moderation*",
    "dall-e*",
    "*embedding*",
    "*imagen*",
    "*veo*",
    "*lyria*",
    "*live*",
    "*translate*",
    "*nano-banana*",
    "*robotics*",
    "computer-use*",
)


def applicable(provider: str, model: str, shape: str) -> bool:
    if shape.startswith("audio") and flavour(provider, model) == "anthropic":
        return False  # Claude takes no audio
    return not (provider == "google" and shape == "audio_out")  # Gemini chat models return no audio tokens


def flavour(provider: str, model: str) -> str:
    """The API a model is called through: Claude on Vertex still speaks Anthropic's Messages API."""
    return "anthropic" if model.startswith("claude") else provider


def truecost_usage(provider: str, s: dict):
    """The shape as the provider's own API would report it, through truecost's usage rules."""
    attrs = {"service_tier": s["service_tier"]} if s.get("service_tier") else None
    if provider == "anthropic":
        call = anthropic_call(
            {
                "input_tokens": s["prompt"] - s.get("cached", 0) - s.get("cache_write", 0),
                "cache_read_input_tokens": s.get("cached", 0),
                "cache_creation_input_tokens": s.get("cache_write", 0),
                "output_tokens": s["completion"],
            }
        )
    elif provider == "google":
        call = google_call(
            {
                "promptTokenCount": s["prompt"],
                "cachedContentTokenCount": s.get("cached", 0),
                "candidatesTokenCount": s["completion"] - s.get("reasoning", 0),
                "thoughtsTokenCount": s.get("reasoning", 0),
                "promptTokensDetails": [{"modality": "AUDIO", "tokenCount": s["audio_in"]}]
                if s.get("audio_in")
                else [],
            }
        )
        if s.get("audio_out"):
            return None, attrs  # Gemini chat models do not return audio tokens
    else:
        call = openai_call(
            {
                "prompt_tokens": s["prompt"],
                "completion_tokens": s["completion"],
                "prompt_tokens_details": {
                    "cached_tokens": s.get("cached", 0),
                    "cache_write_tokens": s.get("cache_write", 0),
                    "audio_tokens": s.get("audio_in", 0),
                },
                "completion_tokens_details": {
                    "reasoning_tokens": s.get("reasoning", 0),
                    "audio_tokens": s.get("audio_out", 0),
                },
            }
        )
    return call, attrs


def models(catalog: PriceCatalog, at: datetime) -> list[tuple]:
    out = []
    for e in catalog.entries(kind="chat"):
        if e.resource.provider in PROVIDERS and catalog.price_for(e.resource, at) is not None:
            out.append((e.resource.provider, e.resource.name, e.resource))
    return sorted(out, key=lambda x: x[:2])


def load_known(path: Path) -> list[dict]:
    doc = yaml.safe_load(path.read_text(encoding="utf-8")) if path.exists() else None
    rules = (doc or {}).get("differences") or []
    for r in rules:
        for k in ("models", "reference", "right", "reason", "source"):
            if not r.get(k):
                raise ValueError(f"{path}: a known difference needs '{k}': {r}")
    return rules


def documented(rules: list[dict], model: str, shape: str, reference: str) -> dict | None:
    for r in rules:
        if r["reference"] not in (reference, "*"):
            continue
        if not any(fnmatch.fnmatchcase(model, g) for g in r["models"]):
            continue
        if r.get("shapes", "*") != "*" and shape not in r["shapes"]:
            continue
        return r
    return None


def rel(a: Decimal, b: Decimal) -> Decimal:
    if a == b:
        return Decimal(0)
    return abs(a - b) / max(abs(b), Decimal("1e-12"))


def run_references(rows: list[dict], at: datetime) -> dict:
    if not REF_PYTHON.exists():
        sys.exit(f"{REF_PYTHON} is missing: run bench/setup_price_refs.sh first")
    import tempfile

    payload = json.dumps({"at": at.date().isoformat(), "rows": rows})
    result = Path(tempfile.mkdtemp(prefix="price-refs-")) / "refs.json"
    proc = subprocess.run(
        [str(REF_PYTHON), str(ROOT / "bench" / "_price_refs.py"), str(result)],
        input=payload,
        capture_output=True,
        text=True,
        timeout=1200,
        env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "PATH": "/usr/bin:/bin"},
    )
    if proc.returncode != 0:
        sys.exit(f"reference pricers failed: {proc.stderr[-2000:]}")
    return json.loads(result.read_text(encoding="utf-8"))


COUNTED = {
    "agree": "agree",
    "documented": "documented",
    "disagree": "undocumented",
    "truecost_missing": "truecost_missing",
    "missing_documented": "missing_documented",
    "not_offered": "not_offered",
    "truecost_only": "truecost_only",
}


def classify(row: dict, ours: tuple, ref: dict, rules: list[dict]) -> dict | None:
    """One model and shape: the three costs and its status (None when nobody prices it)."""
    tc, why = ours
    priced_by = {k: Decimal(ref[k]) for k in ("litellm", "genai") if ref[k] is not None}
    if tc is None and not priced_by:
        return None  # nobody prices this model in this shape: not a row
    r = {
        "model": f"{row['provider']}/{row['model']}",
        "shape": row["id"].split("|")[1],
        "truecost": None if tc is None else str(tc),
        "litellm": ref["litellm"],
        "genai": ref["genai"],
    }
    if tc is None and why and " is not offered with " in why:
        # the catalog states (with a source) that the provider does not sell this option for the model
        return {**r, "status": "not_offered", "reason": why}
    if tc is None:
        doc = documented(rules, r["model"], r["shape"], "truecost")
        if doc:
            return {
                **r,
                "status": "missing_documented",
                "reason": why,
                "known": {"right": doc["right"], "reason": doc["reason"], "source": doc["source"]},
            }
        return {**r, "status": "truecost_missing", "reason": why}
    if not priced_by:
        return {**r, "status": "truecost_only", "notes": {"litellm": ref["litellm_note"], "genai": ref["genai_note"]}}
    diffs = {k: rel(tc, v) for k, v in priced_by.items()}
    bad = [k for k, d in diffs.items() if d > TOLERANCE]
    r["rel_diff"] = {k: f"{d:.4%}" for k, d in diffs.items()}
    if not bad:
        return {**r, "status": "agree"}
    docs = {k: documented(rules, r["model"], r["shape"], k) for k in bad}
    if all(docs.values()):
        return {
            **r,
            "status": "documented",
            "known": {k: {"right": d["right"], "reason": d["reason"], "source": d["source"]} for k, d in docs.items()},
        }
    return {**r, "status": "disagree", "disagree_with": bad}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--at", default="2026-11-20", help="the date every price is taken at")
    ap.add_argument("--known", default=str(ROOT / "bench" / "known_differences.yaml"))
    ap.add_argument("--rows", action="store_true", help="print every row, not only the summary and the exceptions")
    ap.add_argument("--out", help="also write the full result (every row) to this file")
    args = ap.parse_args(argv)
    at = datetime.fromisoformat(args.at).replace(tzinfo=timezone.utc)
    catalog = PriceCatalog.bundled()  # pinned: the genai-prices data bundled with the installed package
    rules = load_known(Path(args.known))

    rows, ours = [], {}
    for provider, model, resource in models(catalog, at):
        version = catalog.price_for(resource, at)
        if any(fnmatch.fnmatchcase(model, g) for g in NOT_CHAT):
            continue
        for shape, s in SHAPES.items():
            if not applicable(provider, model, shape):
                continue
            rid = f"{provider}/{model}|{shape}"
            rows.append({"id": rid, "model": model, "provider": provider, "shape": s})
            call, attrs = truecost_usage(flavour(provider, model), s)
            priced = price_tokens(version, call, batch=bool(s.get("batch")), attributes=attrs) if call else None
            ours[rid] = (priced.cost if priced else None, priced.unknown_reason if priced else "shape not applicable")
    refs = run_references(rows, at)

    out_rows, counts = (
        [],
        {
            "comparable": 0,
            "agree": 0,
            "documented": 0,
            "undocumented": 0,
            "truecost_missing": 0,
            "missing_documented": 0,
            "not_offered": 0,
            "truecost_only": 0,
        },
    )
    for row in rows:
        r = classify(row, ours[row["id"]], refs["rows"][row["id"]], rules)
        if r is not None:
            counts[COUNTED[r["status"]]] += 1
            counts["comparable"] += r["status"] in ("agree", "documented", "disagree")
            counts["truecost_missing"] += r["status"] == "missing_documented"
            out_rows.append(r)
    share = (
        (Decimal(counts["agree"] + counts["documented"]) / counts["comparable"]) if counts["comparable"] else Decimal(0)
    )
    summary = {
        **counts,
        "models": len({r["model"] for r in out_rows}),
        "rows": len(out_rows),
        "agree_or_documented": f"{share:.2%}",
        "strict_agreement": f"{Decimal(counts['agree']) / max(counts['comparable'], 1):.2%}",
        "missing_undocumented": counts["truecost_missing"] - counts["missing_documented"],
        "targets_met": share >= Decimal("0.98") and counts["truecost_missing"] == 0,
        "tolerance": "0.5%",
        "at": args.at,
        "references": refs["versions"],
    }
    result = {"summary": summary, "rows": out_rows}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1), encoding="utf-8")
    shown = (
        out_rows
        if args.rows
        else [r for r in out_rows if r["status"] in ("disagree", "truecost_missing", "missing_documented")]
    )
    print(json.dumps({"summary": summary, "rows" if args.rows else "exceptions": shown}, indent=1))
    return result


if __name__ == "__main__":
    main()
