"""`truecost collect`: the OTLP/HTTP trace receiver as its own process.

    truecost collect --config collect.yaml

    # collect.yaml
    listen: 127.0.0.1:4318          # OTLP/HTTP's usual port
    ledger: .truecost/ledger.db     # or postgresql://user@host/db
    # ledger_schema: truecost       # PostgreSQL only
    # spool: .truecost/collect.spool.jsonl
    # prices_files: [my-prices.yaml]
    # compute: aws/m7i.large        # prices `compute: true` rules and `unmatched: compute`
    # ingest_key_env: TRUECOST_INGEST_KEY   # then senders need Authorization: Bearer <key>
    # pin: {cost_center: platform}  # attribution no sender can override
    otlp: {}                        # attribution keys and rules: see truecost.integrations.otlp_config

Point an OpenTelemetry SDK or Collector's OTLP/HTTP exporter at http://HOST:PORT (the
exporter appends /v1/traces). ``--workers N`` runs N receiver processes on the port, each with
its own ledger writer and journal slot (decoding and pricing are CPU-bound Python: one process
uses one core).
"""

from __future__ import annotations

import hmac
import json
import os
from pathlib import Path
from typing import Any

import click

from truecost.errors import ConfigError
from truecost.types import ATTRIBUTION_FIELDS, Attribution

KEYS = {"listen", "ledger", "ledger_schema", "spool", "prices_files", "compute", "ingest_key_env", "pin", "otlp"}


def read_config(path: str) -> dict[str, Any]:
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a mapping of settings")
    unknown = set(raw) - KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(KEYS))})")
    base = Path(path).resolve().parent
    listen = str(raw.get("listen", "127.0.0.1:4318"))
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{path}: listen must be HOST:PORT, got {listen!r}")
    ledger = str(raw.get("ledger", ".truecost/ledger.db"))
    if not ledger.startswith(("postgresql://", "postgres://", "memory:")) and not Path(ledger).is_absolute():
        ledger = str(base / ledger)
    pin = raw.get("pin") or {}
    if not isinstance(pin, dict) or set(pin) - set(ATTRIBUTION_FIELDS):
        raise ConfigError(f"{path}: pin takes attribution fields ({', '.join(ATTRIBUTION_FIELDS)})")
    files = raw.get("prices_files") or []
    if not isinstance(files, list):
        raise ConfigError(f"{path}: prices_files is a list of price files")
    from truecost.integrations.otlp_config import parse_config

    return {
        "host": host,
        "port": int(port),
        "ledger": ledger,
        "ledger_schema": raw.get("ledger_schema"),
        "spool": raw.get("spool"),
        "prices_files": [str(base / f) for f in files],
        "compute": raw.get("compute"),
        "ingest_key_env": raw.get("ingest_key_env"),
        "pin": Attribution(**{k: str(v) for k, v in pin.items()}, tags=()),
        "otlp": parse_config(raw.get("otlp")),
        "base": base,
    }


def _store_and_spool(cfg: dict[str, Any]):
    from truecost.ledger import open_store

    ledger = cfg["ledger"]
    if ledger.startswith(("postgresql://", "postgres://")):
        from truecost.ledger.postgres import PostgresLedgerStore

        return PostgresLedgerStore(ledger, schema=cfg["ledger_schema"]), Path(
            cfg["spool"] or cfg["base"] / ".truecost/collect.spool.jsonl"
        )
    default = (
        Path(ledger).with_suffix(".collect.spool.jsonl") if ledger != "memory:" else cfg["base"] / "collect.spool.jsonl"
    )
    return open_store(ledger), Path(cfg["spool"]) if cfg["spool"] else default


def _slot_spool(spool: Path, slot: str) -> Path:
    return spool if slot == "slot-0" else spool.with_suffix(f".{slot}.jsonl")


def claim_journal(folder: Path, workers: int) -> tuple[Path, list[Path], list[Any]]:
    """(this process's journal folder, orphaned folders to replay, the locks to hold while running).

    Each worker holds one of ``workers`` slots (a flock), so a restarted worker replays what its
    predecessor left; slots numbered ``workers`` or more (from a run with more workers) are orphans,
    adopted by whichever worker can lock them."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(workers):
        fh = open(folder / f"slot-{i}.lock", "w")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            continue
        orphans, locks = [], [fh]
        for other in sorted(folder.glob("slot-*.lock")):
            index = other.stem.split("-", 1)[1]
            if index.isdigit() and int(index) >= workers:
                ofh = open(other, "w")
                try:
                    fcntl.flock(ofh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    orphans.append(folder / f"slot-{index}")
                    locks.append(ofh)
                except BlockingIOError:
                    ofh.close()
        return folder / f"slot-{i}", orphans, locks
    raise ConfigError(f"{folder}: every journal slot is taken (is another collector using this spool?)")


def build_collector(cfg: dict[str, Any], key: str | None = None, workers: int = 1):
    """(app, writer, store): the receiver app writing through a BatchWriter with a spool; the receiver
    journals payloads until stored."""
    from truecost.integrations.otlp_receiver import OTLPReceiver, otlp_app
    from truecost.ledger import BatchWriter, replay_spool
    from truecost.pricing.catalog import PriceCatalog
    from truecost.tracking.tracker import Tracker

    store, spool = _store_and_spool(cfg)
    journal, orphans, locks = claim_journal(spool.with_suffix(".journal"), workers)
    # The receiver journals each payload until its events are stored (one write per payload, not per
    # event): kill -9 after answering an exporter loses nothing, and the next start replays it.
    writer = BatchWriter(store, batch_size=5_000, spool_path=_slot_spool(spool, journal.name))
    tracker = Tracker(PriceCatalog.load(*cfg["prices_files"]), writer, compute=cfg["compute"])
    pin = cfg["pin"] if cfg["pin"] != Attribution() else None
    expected = f"Bearer {key}" if key else None
    for folder in orphans:  # a previous run with more workers left these
        adopted = OTLPReceiver(tracker, cfg["otlp"], journal_dir=folder)
        if adopted.replay_journal():
            writer.flush()
            adopted.settle_journal()
        replay_spool(_slot_spool(spool, folder.name), store)

    def authorize(request):
        if expected is not None and not hmac.compare_digest(
            (request.headers.get("authorization") or "").encode(), expected.encode()
        ):
            return None
        return pin or Attribution()

    def close() -> None:
        writer.close()
        store.close()
        for lock in locks:
            lock.close()

    app = otlp_app(tracker, cfg["otlp"], authorize=authorize, on_shutdown=(close,), journal_dir=journal)
    return app, writer, store


def worker_app():
    """The app of one ``--workers`` process (uvicorn imports this; the parent passes the config path)."""
    cfg = read_config(os.environ["TRUECOST_COLLECT_CONFIG"])
    key = os.environ.get(cfg["ingest_key_env"], "").strip() if cfg["ingest_key_env"] else None
    app, _writer, _store = build_collector(cfg, key or None, int(os.environ.get("TRUECOST_COLLECT_WORKERS", "1")))
    return app


@click.command("collect")
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--host", help="override listen's host")
@click.option("--port", type=int, help="override listen's port")
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="receiver processes sharing the port (each with its own writer and journal)",
)
@click.option("--check", is_flag=True, help="validate the config, print what it says, and exit")
def collect(config_path, host, port, workers, check) -> None:
    """Receive OpenTelemetry traces (OTLP/HTTP, protobuf or JSON) and price them into the ledger."""
    try:
        cfg = read_config(config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    cfg["host"], cfg["port"] = host or cfg["host"], port or cfg["port"]
    key = None
    if cfg["ingest_key_env"]:
        key = os.environ.get(cfg["ingest_key_env"], "").strip()
        if not key:
            raise click.ClickException(
                f"ingest_key_env {cfg['ingest_key_env']}: that environment variable is empty or unset"
            )
    if check:
        o = cfg["otlp"]
        click.echo(
            json.dumps(
                {
                    "listen": f"{cfg['host']}:{cfg['port']}",
                    "ledger": cfg["ledger"].split("@")[-1],
                    "rules": len(o.rules),
                    "default_rules": o.defaults,
                    "unmatched": o.unmatched,
                    "ingest_key": bool(key),
                },
                indent=2,
            )
        )
        return
    try:
        import uvicorn  # noqa: F401
    except ImportError:
        raise click.ClickException(
            "the receiver needs the gateway extra: pip install 'truecost[gateway,integrations]'"
        ) from None
    click.echo(
        f"truecost collect: OTLP/HTTP on http://{cfg['host']}:{cfg['port']}/v1/traces -> "
        f"{cfg['ledger'].split('@')[-1]}, {workers} process(es) (Ctrl-C to stop)"
    )
    if workers == 1:
        from truecost.gateway.server import serve

        app, _writer, _store = build_collector(cfg, key)
        serve(app, cfg["host"], cfg["port"])
        return
    import uvicorn

    store, _spool = _store_and_spool(cfg)  # schema and migrations once, before the workers race for them
    store.close()
    os.environ["TRUECOST_COLLECT_CONFIG"] = str(Path(config_path).resolve())
    os.environ["TRUECOST_COLLECT_WORKERS"] = str(workers)
    uvicorn.run(
        "truecost.cli.collect:worker_app",
        factory=True,
        host=cfg["host"],
        port=cfg["port"],
        workers=workers,
        log_level="warning",
        access_log=False,
        server_header=False,
    )
