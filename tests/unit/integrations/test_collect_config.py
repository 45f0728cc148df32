import json

import pytest
from click.testing import CliRunner

from truecost.cli.collect import read_config
from truecost.cli.main import cli
from truecost.errors import ConfigError


def test_check_prints_what_the_config_says(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "listen: 127.0.0.1:4999\nledger: l.db\npin: {cost_center: platform}\n"
        "otlp: {unmatched: skip, rules: [{match: {name: 'pii.*'}, step: sanitize, compute: true}]}\n"
    )
    out = CliRunner().invoke(cli, ["collect", "--config", str(cfg), "--check"])
    assert out.exit_code == 0, out.output
    shown = json.loads(out.output)
    assert shown["listen"] == "127.0.0.1:4999" and shown["rules"] == 1 and shown["unmatched"] == "skip"
    assert read_config(str(cfg))["pin"].cost_center == "platform"


@pytest.mark.parametrize(
    "text, message",
    [
        ("listen: nope\n", "HOST:PORT"),
        ("colour: red\n", "unknown key"),
        ("pin: {colour: red}\n", "attribution fields"),
        ("otlp: {rules: [{match: {kind: sideways}}]}\n", "otlp.rules\\[0\\].match.kind"),
        ("- a list\n", "mapping"),
    ],
)
def test_config_errors_name_the_setting(tmp_path, text, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=message):
        read_config(str(cfg))


def test_an_unset_ingest_key_variable_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("TC_NO_SUCH_KEY", raising=False)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("ingest_key_env: TC_NO_SUCH_KEY\n")
    out = CliRunner().invoke(cli, ["collect", "--config", str(cfg)])
    assert out.exit_code != 0 and "TC_NO_SUCH_KEY" in out.output


def test_journal_slots_are_claimed_once_and_orphans_adopted(tmp_path):
    from truecost.cli.collect import claim_journal

    a, orphans_a, lock_a = claim_journal(tmp_path, 2)
    b, orphans_b, lock_b = claim_journal(tmp_path, 2)
    assert (a.name, b.name, orphans_a, orphans_b) == ("slot-0", "slot-1", [], [])
    with pytest.raises(ConfigError, match="every journal slot is taken"):
        claim_journal(tmp_path, 2)
    for lock in lock_a + lock_b:
        lock.close()
    single, orphans, locks = claim_journal(tmp_path, 1)  # back to one process: slot-1 is an orphan to replay
    assert single.name == "slot-0" and [p.name for p in orphans] == ["slot-1"]
    with pytest.raises(ConfigError):  # held while this process runs
        claim_journal(tmp_path, 1)
    for lock in locks:
        lock.close()
