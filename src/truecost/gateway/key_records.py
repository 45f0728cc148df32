"""A virtual API key as the gateway keeps it (``KeyRecord``: a hash, never the secret), the checks a new
key's fields pass (shared by ``KeyStore.create`` and the admin API), and the errors of key administration."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import Any, Iterable

from truecost.errors import TruecostError
from truecost.gateway.config import HEADER_GRANTS as ATTRIBUTION_HEADER_FIELDS  # one list
from truecost.gateway.config import KEY_SCOPES as SCOPES

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_CONFIG_FIELDS = (
    "name",
    "cost_center",
    "team",
    "tenant",
    "environment",
    "revoked",
    "models",
    "rpm",
    "tpm",
    "expires_at",
    "allow_attribution_headers",
    "scopes",
)


class KeyAdminError(TruecostError):
    """A key operation that cannot be done; the message says why and what to do."""


class InvalidKeySpec(KeyAdminError, ValueError):
    """A field of a key is missing, of the wrong type or out of range."""


class KeyNotFound(KeyAdminError, LookupError):
    """No key of that name."""


class KeyConflict(KeyAdminError):
    """The name is taken, the key is revoked, or it changed under us (retry)."""


class ReadOnlyKey(KeyAdminError):
    """A key from the config file: change it by editing the config."""


def fingerprint(digest: str) -> str:
    """A short, non-secret label of a key hash (the first 8 hex characters)."""
    return f"sha256:{digest[:8]}"


def digest_of(secret: str) -> str | None:
    try:
        return hashlib.sha256(secret.encode("utf-8")).hexdigest()
    except UnicodeEncodeError:  # a lone surrogate: no key can match it
        return None


def actor_for(presented: str | None, role: str = "admin") -> str:
    """How an audit row names whoever presented ``presented``: a fingerprint, never the key."""
    digest = digest_of(presented) if presented else None
    return f"{role}:{fingerprint(digest)}" if digest else "anonymous"


@dataclass(frozen=True)
class KeyRecord:
    name: str
    key_sha256: str = field(repr=False)
    cost_center: str | None = None
    team: str | None = None
    tenant: str | None = None
    environment: str | None = None
    revoked: bool = False
    models: tuple[str, ...] | None = None
    rpm: int | None = None
    tpm: int | None = None
    expires_at: datetime | None = None
    allow_attribution_headers: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    source: str = "config"  # config (the YAML file, read-only) | store (the admin API)
    created_at: datetime | None = None
    created_by: str | None = None
    revoked_at: datetime | None = None
    rotated_at: datetime | None = None
    # after a rotation with a grace period, the old secret keeps working until previous_valid_until
    previous_sha256: str | None = field(default=None, repr=False)
    previous_valid_until: datetime | None = None

    @classmethod
    def from_config(cls, k: Any) -> "KeyRecord":
        """From the config's KeyConfig (fields it lacks take their defaults)."""
        given = {f.name: getattr(k, f.name) for f in fields(cls) if f.name in _CONFIG_FIELDS and hasattr(k, f.name)}
        for name in ("models", "allow_attribution_headers", "scopes"):
            if given.get(name) is not None:
                given[name] = tuple(given[name])
        return cls(
            **{
                **given,
                "key_sha256": str(k.key_sha256).lower(),
                "revoked": bool(given.get("revoked")),
                "expires_at": aware_time(given.get("expires_at")),
                "source": "config",
            }
        )

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key_sha256)

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def status(self, now: datetime) -> str:
        """active | revoked | expired -- the gateway answers 401 with this word unless active."""
        return "revoked" if self.revoked else "expired" if self.expired(now) else "active"

    def allows_model(self, alias: str) -> bool:
        return self.models is None or alias in self.models

    def public(self, now: datetime | None = None) -> dict:
        """The listing's view: no secret, no hash -- a fingerprint only (and the status at ``now``)."""
        out: dict[str, Any] = {"name": self.name, "fingerprint": self.fingerprint}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name not in ("name", "key_sha256", "previous_sha256"):
                out[f.name] = iso_time(v) if isinstance(v, datetime) else list(v) if isinstance(v, tuple) else v
        return {**out, "status": self.status(now)} if now is not None else out


def iso_time(t: datetime | None) -> str | None:
    return t.astimezone(timezone.utc).isoformat().replace("+00:00", "Z") if t else None


def aware_time(t: Any) -> datetime | None:
    if t is None:
        return None
    if isinstance(t, str):
        t = datetime.fromisoformat(t.replace("Z", "+00:00"))
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


# -- validation (shared by create() and the admin API) ------------------------------------------------


def _opt_text(name: str, v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or not v.strip() or len(v) > 128:
        raise InvalidKeySpec(f"{name} must be a non-empty string of at most 128 characters, or null")
    return v


def _opt_limit(name: str, v: Any) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= 10**12:
        raise InvalidKeySpec(f"{name} must be a positive whole number, or null for unlimited")
    return v


def _names(name: str, v: Any, allowed: Iterable[str] | None = None, nullable: bool = False) -> tuple[str, ...] | None:
    if v is None and nullable:
        return None
    if not isinstance(v, (list, tuple)) or len(v) > 256 or not all(isinstance(x, str) and x for x in v):
        raise InvalidKeySpec(f"{name} must be a list of non-empty strings" + (", or null" if nullable else ""))
    if allowed is not None:
        allowed = tuple(allowed)
        bad = sorted(set(v) - set(allowed))
        if bad:
            raise InvalidKeySpec(f"{name}: unknown {', '.join(map(repr, bad))}; allowed: {', '.join(allowed)}")
    return tuple(dict.fromkeys(v))


def normalise_spec(
    now: datetime,
    *,
    cost_center=None,
    team=None,
    tenant=None,
    environment=None,
    models=None,
    rpm=None,
    tpm=None,
    expires_at=None,
    scopes=(),
    allow_attribution_headers=(),
    known_models: Iterable[str] | None = None,
) -> dict:
    """Check a new key's fields strictly (JSON types: no bools as numbers, no numbers as strings)."""
    if expires_at is not None:
        if isinstance(expires_at, str):
            try:
                expires_at = datetime.fromisoformat(expires_at.replace("Z", "+00:00"))
            except ValueError:
                raise InvalidKeySpec("expires_at must be an ISO 8601 time, e.g. 2027-01-01T00:00:00Z") from None
        if not isinstance(expires_at, datetime) or expires_at.tzinfo is None:
            raise InvalidKeySpec("expires_at must be an ISO 8601 time with a time zone, e.g. 2027-01-01T00:00:00Z")
        expires_at = expires_at.astimezone(timezone.utc)
        if expires_at <= now:
            raise InvalidKeySpec("expires_at is in the past")
    return {
        "cost_center": _opt_text("cost_center", cost_center),
        "team": _opt_text("team", team),
        "tenant": _opt_text("tenant", tenant),
        "environment": _opt_text("environment", environment),
        "models": _names("models", models, known_models, nullable=True),
        "rpm": _opt_limit("rpm", rpm),
        "tpm": _opt_limit("tpm", tpm),
        "expires_at": expires_at,
        "scopes": _names("scopes", scopes, SCOPES),
        "allow_attribution_headers": _names(
            "allow_attribution_headers", allow_attribution_headers, ATTRIBUTION_HEADER_FIELDS
        ),
    }


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise InvalidKeySpec(
            "name must be 1-64 characters: letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name
