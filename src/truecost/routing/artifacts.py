"""Router artifacts: a trained scorer as a versioned ``.npz`` file that names the inputs it needs.

Versions: 1 embedded the whole prompt; 2 the prompt's last ``embed_tail_chars`` characters;
3 added the multiple-choice prompt features; 4 records the scorer's inputs (prompt features,
request metadata fields, embedder, weak answer), so that a server can refuse at start-up an
artifact whose inputs it cannot supply instead of scoring with a silent average. Every
version still loads and scores as it did; the inputs of versions 1 to 3 are read from their
feature spec.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from truecost.errors import TruecostError
from truecost.routing.features import PROMPT_FEATURES
from truecost.routing.scorer import FeatureSpec, GapScorer

ARTIFACT_VERSION = 4
BASE_PROMPT_FEATURES = PROMPT_FEATURES[:6]  # what version 1 and 2 artifacts were trained on


@dataclass(frozen=True)
class ArtifactInputs:
    """What a scorer reads from a request, besides the request's text."""

    prompt_features: tuple[str, ...]  # computed from the prompt's text (routing.features)
    metadata: tuple[str, ...]  # request metadata fields, target-encoded (a subject, a product feature)
    embedder: str | None  # the prompt embedder's model_id; None when the scorer embeds nothing
    weak_answer: bool  # the weak model's answer (a cascade scorer): it cannot decide before the call

    @classmethod
    def of(cls, scorer: GapScorer) -> "ArtifactInputs":
        """A fitted scorer's inputs (its embedder's, or for a loaded one the recorded, model_id)."""
        live = scorer.embedder.model_id if scorer.embedder is not None else None
        return cls.from_spec(scorer.spec, scorer.prompt_features, live or scorer.meta.get("embedder"))

    @classmethod
    def from_spec(cls, spec: FeatureSpec, prompt_features, embedder: str | None) -> "ArtifactInputs":
        return cls(tuple(prompt_features), tuple(spec.categorical), embedder if spec.embed else None, spec.answer)

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def artifact_path(path: str | Path) -> Path:
    """``path`` with the ``.npz`` suffix NumPy would add anyway."""
    p = Path(path)
    return p if p.suffix == ".npz" else p.with_name(p.name + ".npz")


def write_artifact(scorer: GapScorer, path: str | Path, **extra: Any) -> Path:
    """Save a fitted scorer with its spec, its inputs and ``extra`` (threshold, models, target...)."""
    if scorer.mu is None or scorer.sd is None or scorer.w is None:
        raise TruecostError("scorer is not trained")
    p = artifact_path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    inputs = ArtifactInputs.of(scorer)
    meta = {
        "spec": scorer.spec.__dict__ | {"categorical": list(scorer.spec.categorical)},
        "l2": scorer.l2,
        "prior": scorer.prior,
        "encodings": scorer.encodings,
        "embedder": scorer.embedder.model_id if scorer.embedder is not None else None,
        "prompt_features": list(scorer.prompt_features),
        **scorer.meta,
        **extra,
        "version": ARTIFACT_VERSION,
        "inputs": inputs.as_dict(),
    }
    np.savez(p, mu=scorer.mu, sd=scorer.sd, w=scorer.w, meta=np.array(json.dumps(meta)))
    return p


def read_artifact(path: str | Path, embedder=None) -> GapScorer:
    """A scorer saved by any version of ``write_artifact``, scoring exactly as it did when saved."""
    try:
        data = np.load(path, allow_pickle=False)
        meta = json.loads(str(data["meta"]))
    except (OSError, ValueError, KeyError) as exc:
        raise TruecostError(f"{path}: not a truecost router artifact ({exc})") from None
    if meta.get("version") not in range(1, ARTIFACT_VERSION + 1):
        raise TruecostError(
            f"{path}: artifact version {meta.get('version')}, this truecost reads 1 to {ARTIFACT_VERSION}"
        )
    spec_fields = {"embed_tail_chars": None, **meta["spec"]}  # version 1 embedded the whole prompt
    scorer = GapScorer(
        FeatureSpec(**{**spec_fields, "categorical": tuple(meta["spec"]["categorical"])}), embedder, meta["l2"]
    )
    scorer.mu, scorer.sd, scorer.w = data["mu"], data["sd"], data["w"]
    scorer.prompt_features = tuple(meta.get("prompt_features") or BASE_PROMPT_FEATURES)
    unknown = sorted(set(scorer.prompt_features) - set(PROMPT_FEATURES))
    if unknown:
        raise TruecostError(f"{path}: trained on prompt features this truecost does not compute: {', '.join(unknown)}")
    scorer.embed_weight = float(meta.get("embed_weight", 1.0))
    scorer.prior, scorer.encodings, scorer.meta = meta["prior"], meta["encodings"], meta
    recorded, saved = (
        meta.get("inputs"),
        ArtifactInputs.from_spec(scorer.spec, scorer.prompt_features, meta.get("embedder")).as_dict(),
    )
    if recorded is not None and recorded != saved:
        raise TruecostError(
            f"{path}: the artifact records the inputs {recorded}, but its scorer reads {saved}; "
            "it was altered after it was saved"
        )
    return scorer
