"""Stage 3 of the request path: plan the candidates. Builds each alias's router at start-up and orders an
alias's candidates by its decision (rules, a trained prompt scorer behind its calibrated threshold). A trained
scorer's inputs are checked at start-up: metadata fields it reads come from the headers the route maps
(``route.metadata_headers``), or the gateway refuses to start."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from truecost.cache.embedders import EMBEDDERS, make_embedder
from truecost.errors import ConfigError, TruecostError
from truecost.pricing.cost import strong_call_premium
from truecost.routing.artifacts import ArtifactInputs, read_artifact
from truecost.routing.decision import RouteRequest, Router
from truecost.routing.rules import RulesRouter
from truecost.routing.scorer import ScoredRouter, ShareHolder
from truecost.tracking.tracker import Tracker


def load_router_artifact(path):
    """A saved prompt scorer with the embedder it was trained with (answer-aware scorers need a weak answer
    first, so they cannot decide before the call)."""
    scorer = read_artifact(path)
    inputs = ArtifactInputs.of(scorer)
    if inputs.weak_answer:
        raise TruecostError(
            f"{path}: an answer-aware (cascade) scorer needs the weak model's answer; "
            "route requests with a prompt scorer (`truecost router calibrate --kind trained`)"
        )
    if scorer.spec.embed:
        scorer.embedder = _embedder_with_id(path, inputs.embedder or "")
    return scorer


def _embedder_with_id(path, wanted: str):
    have = {name: make_embedder(name) for name in EMBEDDERS}  # constructing one loads nothing yet
    found = next((e for e in have.values() if e.model_id == wanted), None)
    if found is None:
        raise TruecostError(
            f"{path}: trained with embedder {wanted!r}, which this install does not have "
            f"(it has {', '.join(e.model_id for e in have.values())})"
        )
    return found


def _metadata_headers(r, inputs: ArtifactInputs) -> tuple[tuple[str, str], ...]:
    """The route's header for each metadata field the scorer reads: every one mapped, none left over."""
    mapped = dict(r.metadata_headers)
    missing = [f for f in inputs.metadata if f not in mapped]
    if missing:
        example = ", ".join(f"{f}: x-truecost-{f.replace('_', '-')}" for f in missing)
        raise ConfigError(
            f"{r.artifact}: its scorer reads the request metadata {', '.join(missing)}, which this "
            f"route does not supply (without it every request would score as the average); map each "
            f"from a request header with route.metadata_headers: {{{example}}}, or train without it"
        )
    unused = sorted(set(mapped) - set(inputs.metadata))
    if unused:
        raise ConfigError(
            f"{r.artifact}: route.metadata_headers maps {', '.join(unused)}, which its scorer does not "
            f"read (it reads: {', '.join(inputs.metadata) or 'no metadata'})"
        )
    return tuple((f, mapped[f].lower()) for f in inputs.metadata)


def _strong_premium(tracker: Tracker, r, meta: Mapping[str, Any]):
    """request -> expected extra dollars of the strong call (prices in force now, the artifact's
    mean output lengths); None when a price is missing, and the router then keeps the strong model."""
    outputs = meta.get("mean_output_tokens") or {}
    out_weak, out_strong = int(outputs.get("weak") or 1), int(outputs.get("strong") or 1)
    for model in (r.weak, r.strong):
        if tracker.price_version(model, None, tracker.clock.now())[0] is None:
            raise ConfigError(
                f"{r.artifact}: ranks requests by gain per dollar, but {model!r} has no price in "
                "force; add it to the catalog or calibrate with --order gap"
            )

    def premium(request: RouteRequest) -> float | None:
        at = tracker.clock.now()
        weak, strong = (tracker.price_version(m, None, at)[0] for m in (r.weak, r.strong))
        tokens = request.context_tokens or request.prompt_tokens or len(request.text) // 4 + 1
        extra = strong_call_premium(weak, strong, tokens, out_weak, out_strong)
        return None if extra is None else float(extra)

    return premium


@dataclass(frozen=True)
class AliasRouter:
    """An alias's router, and the request header that supplies each metadata field its scorer reads."""

    router: Router
    metadata_headers: tuple[tuple[str, str], ...] = ()

    def request(self, body: dict, headers: Mapping[str, str]) -> RouteRequest:
        text = (
            next(
                (
                    m.get("content")
                    for m in reversed(body["messages"])
                    if m.get("role") == "user" and isinstance(m.get("content"), str)
                ),
                "",
            )
            or ""
        )
        chars = sum(len(m["content"]) for m in body["messages"] if isinstance(m.get("content"), str))
        lowered = {k.lower(): v for k, v in headers.items()}
        metadata = {k: v for k, v in lowered.items() if k.startswith("x-truecost")}
        metadata.update({f: lowered[h] for f, h in self.metadata_headers if h in lowered})
        return RouteRequest(text, None, metadata, context_tokens=chars // 4 + 1)


def make_router(r, tracker: Tracker) -> AliasRouter:
    """A rules router, or a trained prompt scorer behind its calibrated threshold (loaded at startup)."""
    if r.strategy != "trained":
        return AliasRouter(RulesRouter(r.weak, r.strong, r.max_weak_tokens))
    try:
        scorer = load_router_artifact(r.artifact)
    except TruecostError as exc:
        raise ConfigError(str(exc)) from None
    headers = _metadata_headers(r, ArtifactInputs.of(scorer))
    threshold = r.threshold if r.threshold is not None else scorer.meta.get("threshold")
    if threshold is None:
        raise ConfigError(
            f"{r.artifact}: no calibrated threshold in the artifact; set route.threshold or "
            "save it with `truecost router calibrate ... --out`"
        )
    extra_cost = _strong_premium(tracker, r, scorer.meta) if scorer.meta.get("order") == "gain-per-dollar" else None
    hold = None
    if r.hold == "share":
        share = scorer.meta.get("strong_share")
        if share is None:
            raise ConfigError(
                f"{r.artifact}: hold: share needs the calibrated strong-call share; save the artifact "
                "with `truecost router calibrate ... --out`"
            )
        hold = ShareHolder(float(share), float(threshold), window=r.share_window)
    return AliasRouter(
        ScoredRouter(scorer, r.weak, r.strong, float(threshold), extra_cost=extra_cost, hold=hold), headers
    )


def plan(alias: AliasRouter | None, body: dict, candidates, headers: Mapping[str, str]):
    """An alias's candidates ordered by its router's decision (weak first or strong first), and the decision."""
    if alias is None:
        return candidates, None
    decision = alias.router.route(alias.request(body, headers))
    rank = {m: i for i, m in enumerate(decision.candidates)}
    return sorted(candidates, key=lambda c: rank.get(c.model, len(rank))), decision
