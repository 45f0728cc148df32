import pytest

from truecost.integrations.genai import UsageError, genai_kind, price_name, usage_of


def test_semconv_counts_include_cache_and_reasoning():
    usage, missing, note = usage_of(
        {
            "gen_ai.usage.input_tokens": 1000,
            "gen_ai.usage.output_tokens": 300,
            "gen_ai.usage.cache_read.input_tokens": 400,
            "gen_ai.usage.cache_creation.input_tokens": 100,
            "gen_ai.usage.reasoning.output_tokens": 120,
        },
        "generate",
    )
    t = usage.tokens
    assert (t.input, t.cached_input, t.cache_write_5m, t.output, t.reasoning) == (500, 400, 100, 180, 120)
    assert missing is None and note is None


def test_cache_counts_larger_than_input_are_read_the_raw_anthropic_way():
    usage, _, note = usage_of(
        {
            "gen_ai.usage.input_tokens": 1000,
            "gen_ai.usage.output_tokens": 800,
            "gen_ai.usage.cache_read.input_tokens": 20000,
        },
        "generate",
    )
    assert (usage.tokens.input, usage.tokens.cached_input) == (1000, 20000)
    assert note == "cache tokens not included in input tokens"


def test_openinference_and_openllmetry_spellings():
    oi, _, _ = usage_of(
        {
            "llm.token_count.prompt": 50,
            "llm.token_count.completion": 7,
            "llm.token_count.prompt_details.cache_read": 10,
            "llm.token_count.completion_details.reasoning": 2,
        },
        "generate",
    )
    assert (oi.tokens.input, oi.tokens.cached_input, oi.tokens.output, oi.tokens.reasoning) == (40, 10, 5, 2)
    legacy, _, _ = usage_of(
        {
            "gen_ai.usage.prompt_tokens": 9,
            "gen_ai.usage.completion_tokens": "3",
            "gen_ai.usage.cache_read_input_tokens": 4,
        },
        "generate",
    )
    assert (legacy.tokens.input, legacy.tokens.cached_input, legacy.tokens.output) == (5, 4, 3)
    # the newer spelling wins when both are there
    both, _, _ = usage_of({"gen_ai.usage.prompt_tokens": 1, "gen_ai.usage.input_tokens": 10}, "generate")
    assert both.tokens.input == 10


def test_embedding_with_only_a_total():
    usage, _, _ = usage_of({"llm.token_count.total": 64}, "embed")
    assert (usage.tokens.input, usage.tokens.output) == (64, 0)


def test_missing_counts_are_missing_not_zero():
    usage, missing, _ = usage_of({"gen_ai.request.model": "x"}, "generate")
    assert usage is None and "no token counts" in missing


@pytest.mark.parametrize("bad", [-1, 1.5, "ten", True])
def test_a_count_that_is_not_one_is_refused(bad):
    with pytest.raises(UsageError):
        usage_of({"gen_ai.usage.input_tokens": bad}, "generate")


def test_kinds():
    assert genai_kind({"gen_ai.operation.name": "embeddings"}) == "embed"
    assert genai_kind({"gen_ai.operation.name": "chat"}) == "generate"
    assert genai_kind({"openinference.span.kind": "EMBEDDING", "embedding.model_name": "m"}) == "embed"
    assert genai_kind({"openinference.span.kind": "LLM"}) == "generate"
    assert genai_kind({"llm.request.type": "chat", "gen_ai.system": "openai"}) == "generate"
    assert genai_kind({"gen_ai.usage.input_tokens": 3}) == "generate"
    assert genai_kind({"http.request.method": "GET"}) is None
    assert genai_kind({"gen_ai.operation.name": "execute_tool"}) is None


def test_provider_names_become_price_prefixes():
    assert price_name("openai", "gpt-x") == ("openai/gpt-x", None)
    assert price_name("aws.bedrock", "anthropic.claude-x") == ("bedrock/anthropic.claude-x", None)
    assert price_name("gcp.vertex_ai", "gemini-x") == ("vertex_ai/gemini-x", None)
    assert price_name(None, "gpt-x") == ("gpt-x", None)
    assert price_name("openai", "openai/gpt-x") == ("openai/gpt-x", None)
    name, reason = price_name("ollama", "llama3")
    assert name is None and "self-hosted" in reason
