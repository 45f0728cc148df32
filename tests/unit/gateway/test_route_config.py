"""The `route:` block of a model alias: unknown keys and bad header mappings are refused by name."""

import pytest

from truecost.errors import ConfigError
from truecost.gateway.config import parse_config


def _parse(route, tmp_path):
    artifact = tmp_path / "r.npz"
    artifact.write_bytes(b"not read by the parser")
    return parse_config(
        {
            "upstreams": {"m": {"base_url": "http://x"}},
            "models": {
                "a": {
                    "candidates": [{"upstream": "m", "model": "weak-m"}, {"upstream": "m", "model": "strong-m"}],
                    "route": {"weak": "weak-m", "strong": "strong-m", "artifact": str(artifact), **route},
                }
            },
        }
    )


def test_metadata_headers_map_fields_to_lowercased_header_names(tmp_path):
    c = _parse(
        {"strategy": "trained", "metadata_headers": {"subject": "X-Truecost-Subject", "area": "x-area"}}, tmp_path
    )
    assert c.routes["a"].metadata_headers == (("area", "x-area"), ("subject", "x-truecost-subject"))
    assert _parse({"strategy": "trained"}, tmp_path).routes["a"].metadata_headers == ()


@pytest.mark.parametrize(
    "route,match",
    [
        ({"strategy": "trained", "metadata_header": {"subject": "x-s"}}, "unknown settings metadata_header"),
        ({"strategy": "rules", "metadata_headers": {"subject": "x-s"}}, "only a trained route"),
        ({"strategy": "trained", "metadata_headers": ["subject"]}, "a mapping of metadata field to request header"),
        ({"strategy": "trained", "metadata_headers": {"subject": "x subject"}}, "a mapping of metadata field"),
        ({"strategy": "trained", "metadata_headers": {"subject": "Authorization"}}, "carries credentials"),
    ],
)
def test_bad_route_settings_are_refused(tmp_path, route, match):
    with pytest.raises(ConfigError, match=match):
        _parse(route, tmp_path)
