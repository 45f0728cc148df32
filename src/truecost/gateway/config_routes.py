"""The `models:` section of the gateway's config: candidates per alias, and each alias's route."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from truecost.errors import ConfigError
from truecost.gateway.config_types import Candidate, RouteConfig, _need, _no_unknown


def _parse_models(doc: dict, source: str, ups: dict) -> tuple[dict[str, list[Candidate]], dict[str, RouteConfig]]:
    models = {}
    routes: dict[str, RouteConfig] = {}
    for alias, m in (doc.get("models") or {}).items():
        where = f"{source}: models.{alias}"
        cands = (m or {}).get("candidates") if isinstance(m, dict) else None
        if not isinstance(cands, list) or not cands:
            raise ConfigError(f"{where}: needs a non-empty 'candidates' list")
        parsed = []
        for i, c in enumerate(cands):
            up = _need(c, "upstream", f"{where}.candidates[{i}]")
            if up not in ups:
                raise ConfigError(f"{where}.candidates[{i}]: unknown upstream {up!r}; known: {', '.join(ups)}")
            parsed.append(
                Candidate(
                    up,
                    str(_need(c, "model", f"{where}.candidates[{i}]")),
                    c.get("upstream_model"),
                    bool(c.get("self_hosted", False)),
                )
            )
        models[alias] = parsed
        if m.get("route") is not None:
            routes[alias] = _parse_route(m["route"], f"{where}.route", {c.model for c in parsed})
    if not models:
        raise ConfigError(f"{source}: at least one model alias is needed under 'models'")
    return models, routes


ROUTE_KEYS = (
    "strategy",
    "weak",
    "strong",
    "max_weak_tokens",
    "artifact",
    "threshold",
    "min_mean_logprob",
    "hold",
    "share_window",
    "metadata_headers",
)
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
CREDENTIAL_HEADERS = ("authorization", "proxy-authorization", "cookie", "x-api-key", "api-key")


def _parse_route(r: Any, where: str, names: set[str]) -> RouteConfig:
    if not isinstance(r, dict) or r.get("strategy") not in ("rules", "trained", "cascade"):
        raise ConfigError(f"{where}: strategy must be 'rules', 'trained' or 'cascade'")
    _no_unknown(r, ROUTE_KEYS, where)
    for side in ("weak", "strong"):
        if r.get(side) not in names:
            raise ConfigError(f"{where}.{side}: {r.get(side)!r} is not one of the candidates {sorted(names)}")
    artifact, threshold = _route_artifact(r, where)
    hold, window = r.get("hold", "threshold"), r.get("share_window", 1000)
    if hold not in ("threshold", "share") or (hold == "share" and r["strategy"] != "trained"):
        raise ConfigError(
            f"{where}.hold: 'threshold' (the calibrated score threshold) or 'share' (the "
            f"calibrated strong-call share, trained routes only); got {hold!r}"
        )
    if isinstance(window, bool) or not isinstance(window, int) or window < 50:
        raise ConfigError(f"{where}.share_window: a whole number of recent requests >= 50; got {window!r}")
    min_lp = r.get("min_mean_logprob")
    if r["strategy"] == "cascade" and (isinstance(min_lp, bool) or not isinstance(min_lp, (int, float)) or min_lp > 0):
        raise ConfigError(
            f"{where}.min_mean_logprob: a cascade needs a threshold <= 0 on the weak "
            f"answer's mean token log-probability (e.g. -0.5); got {min_lp!r}"
        )
    return RouteConfig(
        r["strategy"],
        r["weak"],
        r["strong"],
        int(r.get("max_weak_tokens", 400)),
        artifact,
        threshold,
        float(min_lp) if min_lp is not None else None,
        hold,
        window,
        _metadata_headers(r, f"{where}.metadata_headers"),
    )


def _route_artifact(r: dict, where: str) -> tuple[str | None, float | None]:
    """A trained route's artifact file (which must exist) and its optional threshold override."""
    artifact, threshold = r.get("artifact"), r.get("threshold")
    if r["strategy"] == "trained":
        if not artifact or not Path(str(artifact)).is_file():
            raise ConfigError(
                f"{where}.artifact: a trained router needs its artifact file "
                f"(`truecost router calibrate ... --out router.npz`); got {artifact!r}"
            )
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))):
            raise ConfigError(f"{where}.threshold: a number, got {threshold!r}")
    return (str(artifact) if artifact else None), (float(threshold) if threshold is not None else None)


def _metadata_headers(r: dict, where: str) -> tuple[tuple[str, str], ...]:
    """{field: header}: the request header that supplies each metadata field a trained scorer reads."""
    raw = r.get("metadata_headers")
    if raw is None:
        return ()
    if r["strategy"] != "trained":
        raise ConfigError(f"{where}: only a trained route's scorer reads request metadata")
    if not isinstance(raw, dict) or not all(
        isinstance(f, str) and f and isinstance(h, str) and _HEADER_NAME.fullmatch(h) for f, h in raw.items()
    ):
        raise ConfigError(
            f"{where}: a mapping of metadata field to request header name, e.g. "
            f"{{subject: x-truecost-subject}}; got {raw!r}"
        )
    secret = sorted(h for h in raw.values() if h.lower() in CREDENTIAL_HEADERS)
    if secret:
        raise ConfigError(f"{where}: {', '.join(secret)} carries credentials, never routing metadata")
    return tuple(sorted((f, h.lower()) for f, h in raw.items()))
