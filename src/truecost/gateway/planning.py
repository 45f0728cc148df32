"""Stage 3 of the request path: plan the candidates. Builds each alias's router at start-up and orders an
alias's candidates by its decision (rules, a trained prompt scorer behind its calibrated threshold)."""

from __future__ import annotations

from typing import Any, Mapping

from truecost.errors import ConfigError, TruecostError
from truecost.pricing.cost import strong_call_premium
from truecost.routing.decision import RouteRequest
from truecost.routing.rules import RulesRouter
from truecost.tracking.tracker import Tracker


def load_router_artifact(path):
    """A saved prompt scorer with the embedder it was trained with (answer-aware scorers need a weak answer
    first, so they cannot decide before the call)."""
    from truecost.routing.scorer import GapScorer

    scorer = GapScorer.load(path)
    if scorer.spec.answer:
        raise TruecostError(f"{path}: an answer-aware (cascade) scorer needs the weak model's answer; "
                            "route requests with a prompt scorer (`truecost router calibrate --kind trained`)")
    if scorer.spec.embed:
        from truecost.cache.embedders import make_embedder

        wanted = scorer.meta.get("embedder") or ""
        scorer.embedder = make_embedder("minilm" if "all-MiniLM" in wanted else "static")
        if scorer.embedder.model_id != wanted:
            raise TruecostError(f"{path}: trained with embedder {wanted!r}, which this install does not have")
    return scorer


def _strong_premium(tracker: Tracker, r, meta: Mapping[str, Any]):
    """request -> expected extra dollars of the strong call (prices in force now, the artifact's
    mean output lengths); None when a price is missing, and the router then keeps the strong model."""
    outputs = meta.get("mean_output_tokens") or {}
    out_weak, out_strong = int(outputs.get("weak") or 1), int(outputs.get("strong") or 1)
    for model in (r.weak, r.strong):
        if tracker.price_version(model, None, tracker.clock.now())[0] is None:
            raise ConfigError(f"{r.artifact}: ranks requests by gain per dollar, but {model!r} has no price in "
                              "force; add it to the catalog or calibrate with --order gap")

    def premium(request: RouteRequest) -> float | None:
        at = tracker.clock.now()
        weak, strong = (tracker.price_version(m, None, at)[0] for m in (r.weak, r.strong))
        tokens = request.context_tokens or request.prompt_tokens or len(request.text) // 4 + 1
        extra = strong_call_premium(weak, strong, tokens, out_weak, out_strong)
        return None if extra is None else float(extra)

    return premium


def make_router(r, tracker: Tracker):
    """A rules router, or a trained prompt scorer behind its calibrated threshold (loaded at startup)."""
    if r.strategy != "trained":
        return RulesRouter(r.weak, r.strong, r.max_weak_tokens)
    from truecost.routing.scorer import ScoredRouter, ShareHolder

    try:
        scorer = load_router_artifact(r.artifact)
    except TruecostError as exc:
        raise ConfigError(str(exc)) from None
    threshold = r.threshold if r.threshold is not None else scorer.meta.get("threshold")
    if threshold is None:
        raise ConfigError(f"{r.artifact}: no calibrated threshold in the artifact; set route.threshold or "
                          "save it with `truecost router calibrate ... --out`")
    extra_cost = _strong_premium(tracker, r, scorer.meta) if scorer.meta.get("order") == "gain-per-dollar" else None
    hold = None
    if r.hold == "share":
        share = scorer.meta.get("strong_share")
        if share is None:
            raise ConfigError(f"{r.artifact}: hold: share needs the calibrated strong-call share; save the artifact "
                              "with `truecost router calibrate ... --out`")
        hold = ShareHolder(float(share), float(threshold), window=r.share_window)
    return ScoredRouter(scorer, r.weak, r.strong, float(threshold), extra_cost=extra_cost, hold=hold)


def plan(router, body: dict, candidates, headers: Mapping[str, str]):
    """An alias's candidates ordered by its router's decision (weak first or strong first), and the decision."""
    if router is None:
        return candidates, None
    text = next((m.get("content") for m in reversed(body["messages"])
                 if m.get("role") == "user" and isinstance(m.get("content"), str)), "") or ""
    chars = sum(len(m["content"]) for m in body["messages"] if isinstance(m.get("content"), str))
    decision = router.route(RouteRequest(
        text, None, {k.lower(): v for k, v in headers.items() if k.lower().startswith("x-truecost")},
        context_tokens=chars // 4 + 1))
    rank = {m: i for i, m in enumerate(decision.candidates)}
    return sorted(candidates, key=lambda c: rank.get(c.model, len(rank))), decision
