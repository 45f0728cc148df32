"""`truecost` command line."""

from __future__ import annotations

import sys

import click

from truecost.cli.audit import audit, export, reconcile_cmd, whatif
from truecost.cli.bench import bench
from truecost.cli.local_model import local_model
from truecost.cli.prices import prices
from truecost.cli.report import report
from truecost.cli.router import router
from truecost.errors import TruecostError


@click.group()
@click.version_option(package_name="truecost")
def cli() -> None:
    """truecost: the real cost of an LLM feature, per request and per step."""


cli.add_command(prices)
cli.add_command(report)
cli.add_command(bench)
cli.add_command(router)
cli.add_command(local_model)
cli.add_command(audit)
cli.add_command(whatif)
cli.add_command(reconcile_cmd)
cli.add_command(export)


@cli.command("demo")
@click.option("--queries", default=200, show_default=True, help="how many customer queries to replay")
@click.option("--data", type=click.Path(dir_okay=False), help="BANKING77-style JSONL (default: ../shared/data, else a bundled sample)")
@click.option("--db", default=".truecost/demo.db", show_default=True, help="SQLite ledger to write")
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
def demo(queries, data, db, as_json) -> None:
    """Run the instrumented RAG support bot and print its real cost per request."""
    from truecost.cli.demo import run_demo

    run_demo(queries=queries, data=data, db=db, as_json=as_json)


@cli.command("serve")
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True)
def serve(config_path, host, port) -> None:
    """Run the OpenAI-compatible gateway."""
    try:
        import uvicorn
    except ImportError:
        raise click.ClickException("the gateway needs its extra: pip install 'truecost[gateway]'") from None
    from truecost.gateway.app import build
    from truecost.gateway.config import load_config

    app = build(load_config(config_path))
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


def main() -> None:
    try:
        cli(standalone_mode=True)
    except TruecostError as exc:  # pragma: no cover - click handles most
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
