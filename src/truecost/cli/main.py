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
from truecost.cli.collect import collect  # noqa: E402  (issue #19: the OTLP receiver)

cli.add_command(collect)


@cli.command("demo")
@click.option(
    "--queries",
    default=60,
    show_default=True,
    help="customer queries per pass (two passes: off, on); 1-2 s a query with the local model on 2 busy CPUs",
)
@click.option(
    "--data",
    type=click.Path(dir_okay=False),
    help="BANKING77-style JSONL (default: ../shared/data, else a bundled sample)",
)
@click.option("--db", default=".truecost/demo.db", show_default=True, help="SQLite ledger to write")
@click.option(
    "--no-local-model", is_flag=True, help="use the replay upstream (labelled) instead of SmolLM2 via llama.cpp"
)
@click.option("--serve", is_flag=True, help="keep serving the dashboard after the run")
@click.option("--port", default=8765, show_default=True, help="dashboard port with --serve")
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
def demo(queries, data, db, no_local_model, serve, port, as_json) -> None:
    """The RAG support bot through the gateway, cache and router off then on, priced per step."""
    from truecost.cli.demo import run_demo
    from truecost.upstream.llama_local import LocalModelMissing

    if queries < 1:
        raise click.BadParameter("at least one query", param_hint="--queries")
    try:
        run_demo(
            queries=queries, data=data, db=db, as_json=as_json, local_model=not no_local_model, serve=serve, port=port
        )
    except LocalModelMissing as exc:
        raise click.ClickException(f"{exc}; or run the demo with --no-local-model") from None


@cli.command("serve")
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True)
def serve(config_path, host, port) -> None:
    """Run the OpenAI-compatible gateway."""
    try:
        import uvicorn  # noqa: F401  (only: is the gateway extra installed?)
    except ImportError:
        raise click.ClickException("the gateway needs its extra: pip install 'truecost[gateway]'") from None
    from truecost.gateway.app import build
    from truecost.gateway.config import load_config
    from truecost.gateway.server import serve as serve_app

    config = load_config(config_path)
    app = build(config)
    # header size limit and header read timeout at the HTTP protocol, before any of our code runs
    serve_app(
        app, host, port, max_header_bytes=config.limits.max_header_bytes, header_timeout=config.limits.header_timeout
    )


@cli.command("dashboard")
@click.option("--db", default=".truecost/demo.db", show_default=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True)
@click.option(
    "--admin-key-env",
    metavar="VAR",
    help="log in with the key in this environment variable (default: a random one-time key, printed once at start)",
)
def dashboard(db, host, port, admin_key_env) -> None:
    """Serve the read-only dashboard over a ledger at http://HOST:PORT/ui (behind a login)."""
    import os

    try:
        import uvicorn
        from starlette.applications import Starlette
        from starlette.responses import RedirectResponse
        from starlette.routing import Mount, Route
    except ImportError:
        raise click.ClickException("the dashboard needs the gateway extra: pip install 'truecost[gateway]'") from None
    from truecost.dashboard.app import create_dashboard
    from truecost.dashboard.auth import StaticKeyAuth, key_sha256, one_time_key
    from truecost.ledger.sqlite import SQLiteLedgerStore

    if admin_key_env:
        key = os.environ.get(admin_key_env, "").strip()
        if not key:
            raise click.ClickException(f"--admin-key-env {admin_key_env}: that environment variable is empty or unset")
        shown = f"the key in ${admin_key_env}"
    else:
        key = shown = one_time_key()
    auth = StaticKeyAuth(key_sha256(key))
    del key
    app = Starlette(
        routes=[
            Route("/", lambda r: RedirectResponse("/ui/")),
            Mount("/ui", create_dashboard(SQLiteLedgerStore(db), title=f"truecost · {db}", auth=auth)),
        ]
    )
    click.echo(f"dashboard: http://{host}:{port}/ui/  (ledger {db}; Ctrl-C to stop)\nlogin key: {shown}")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


def main() -> None:
    try:
        cli(standalone_mode=True)
    except TruecostError as exc:  # pragma: no cover - click handles most
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
