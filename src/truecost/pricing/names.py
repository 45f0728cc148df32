"""Wire names: the model string as each provider's API and the common gateways spell it.

``candidates(name)`` turns one such string into the (provider hint, model name) pairs worth
looking up, most specific first:

* gateway and SDK prefixes: ``azure/gpt-4o``, ``gemini/gemini-3.8-flash``,
  ``models/gemini-3.8-flash``, ``vertex_ai/...``, ``bedrock/...``, ``openrouter/anthropic/...``,
  ``together_ai/...``, ``openai/...``, ``anthropic/...``;
* Bedrock ids: ``us.anthropic.claude-haiku-4-5-20251001-v1:0`` (region prefix and ``-vN:M``);
* Vertex ``@`` snapshots: ``claude-haiku-4-5@20251001``;
* an organisation prefix as Together and Hugging Face spell it: ``mistralai/Mixtral-...``;
* a dated snapshot falls back to its family only after the dated name itself was tried, and
  only a real date counts (``-2024-05-13`` or ``-20251001``, not any four digits).

Dots and dashes in version numbers are the same name (``claude-haiku-4.5`` = ``claude-haiku-4-5``):
``canon`` is the form the catalog indexes.
"""

from __future__ import annotations

import re
from datetime import date

# Gateway / SDK prefix -> the provider whose price applies (None: the prefix says nothing).
PREFIXES: dict[str, str | None] = {
    "openai": "openai",
    "azure": "azure",
    "azure_ai": "azure",
    "anthropic": "anthropic",
    "gemini": "google",
    "google": "google",
    "models": "google",
    "vertex_ai": "google",
    "vertex_ai_beta": "google",
    "google_genai": "google",
    "bedrock": "aws",
    "bedrock_converse": "aws",
    "aws": "aws",
    "together_ai": "together",
    "together": "together",
    "openrouter": "openrouter",
    "groq": "groq",
    "mistral": "mistral",
    "deepseek": "deepseek",
    "fireworks_ai": "fireworks",
    "fireworks": "fireworks",
    "xai": "x-ai",
    "cohere": "cohere",
    "cerebras": "cerebras",
    "litellm_proxy": None,
    "truecost": None,
}
_BEDROCK = re.compile(
    r"^(?:(?:us|eu|apac|ap|global|jp|au|ca|us-gov)\.)?"
    r"(anthropic|meta|amazon|mistral|cohere|ai21|deepseek|openai|qwen|writer|moonshotai)\.(.+?)(?:-v\d+(?::\d+)?)?(?::\d+)?$"
)
_DATED = re.compile(r"^(.*?)(?:-|@)(20\d\d)-?(\d\d)-?(\d\d)$")
_LATEST = re.compile(r"^(.*?)-latest$")


def canon(name: str) -> str:
    """The indexed form of a name: lower case, dots as dashes."""
    return name.strip().lower().replace(".", "-")


def strip_date(name: str) -> str | None:
    """'gpt-4o-2024-05-13' -> 'gpt-4o'; 'claude-haiku-4-5-20251001' -> 'claude-haiku-4-5'; else None."""
    m = _DATED.match(name)
    if not m:
        return None
    try:
        date(int(m.group(2)), int(m.group(3)), int(m.group(4)))
    except ValueError:
        return None
    return m.group(1) or None


def _split_prefix(name: str) -> tuple[str | None, str] | None:
    head, sep, rest = name.partition("/")
    if not sep or not rest:
        return None
    key = head.lower()
    if key in PREFIXES:
        return PREFIXES[key], rest
    return None


def candidates(name: str) -> list[tuple[str | None, str]]:
    """(provider hint, name) pairs to try, most specific first, without duplicates."""
    out: list[tuple[str | None, str]] = []

    def add(hint: str | None, n: str) -> None:
        if n and (hint, n) not in out:
            out.append((hint, n))

    def expand(hint: str | None, n: str, depth: int = 0) -> None:
        add(hint, n)
        split = _split_prefix(n)
        if split and depth < 3:
            new_hint, rest = split
            expand(new_hint or hint, rest, depth + 1)
        m = _BEDROCK.match(n)
        if m:
            add(hint or "aws", n)
            expand(hint or "aws", m.group(2), depth + 1)
            add(m.group(1) if m.group(1) in PREFIXES else None, m.group(2))
        if "/" in n and not split:  # an organisation prefix: 'mistralai/Mixtral-8x7B-Instruct-v0.1'
            expand(hint, n.rsplit("/", 1)[1], depth + 1)

    raw = name.strip()
    if _BEDROCK.match(raw):  # a Bedrock id is AWS's price first (regional endpoints cost more)
        add("aws", raw)
    split = _split_prefix(raw)
    if split and split[0] is not None:  # a known gateway prefix names the provider: try it first
        expand(split[0], split[1], 1)
    expand(None, raw)
    # Dated snapshots and '-latest' aliases fall back to their family, last.
    for hint, n in list(out):
        family = strip_date(n)
        if family is None:
            latest = _LATEST.match(n)
            family = latest.group(1) if latest else None
        if family:
            add(hint, family)
    return out
