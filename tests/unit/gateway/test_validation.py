"""Edge validation: request bodies parse safely and every parameter the gateway forwards is checked
before any upstream call (issue 15, point 8 and its 'Smaller:' findings)."""

import json

import pytest

from truecost.gateway.errors import GatewayError
from truecost.gateway.validation import parse_json_body, validate_chat, validate_embeddings, validate_messages

SECRET = "sk-live-DO-NOT-ECHO-1234567890"


def rejected(fn, *args, **kwargs) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        fn(*args, **kwargs)
    assert info.value.status == 400
    return info.value


# ------------------------------------------------------------------ parse_json_body


def test_a_normal_body_parses():
    body = {"model": "m", "messages": [{"role": "user", "content": "héllo 😀 " + "x" * 100}], "n": 2}
    assert parse_json_body(json.dumps(body).encode()) == body
    assert parse_json_body(json.dumps(body, ensure_ascii=False).encode()) == body


def test_invalid_utf8_is_a_400():
    err = rejected(parse_json_body, b'{"model": "\xff\xfe"}')
    assert "UTF-8" in err.message


def test_malformed_json_is_a_400_that_does_not_echo_the_body():
    err = rejected(parse_json_body, ('{"api_key": "' + SECRET + '", oops').encode())
    assert "not valid JSON" in err.message and SECRET not in err.message and "oops" not in err.message
    assert SECRET not in json.dumps(err.body())


@pytest.mark.parametrize(
    "raw", [b'{"temperature": NaN}', b'{"x": Infinity}', b"[-Infinity]", b'{"n": 1' + b"0" * 5000 + b"}"]
)
def test_non_finite_and_absurd_numbers_are_a_400(raw):
    err = rejected(parse_json_body, raw)
    assert "not valid JSON" in err.message


@pytest.mark.parametrize("opener,closer", [("[", "]"), ('{"a":', "}")])
def test_100k_deep_json_is_a_400_not_a_500(opener, closer):
    raw = (opener * 100_000 + "1" + closer * 100_000).encode()
    err = rejected(parse_json_body, raw)
    assert "nested deeper than 64" in err.message


def test_depth_limit_is_exact():
    ok = "[" * 64 + "]" * 64
    assert parse_json_body(ok.encode()) is not None
    err = rejected(parse_json_body, ("[" * 65 + "]" * 65).encode())
    assert "nested deeper than 64" in err.message
    deep_dicts = '{"a":' * 65 + "1" + "}" * 65
    rejected(parse_json_body, deep_dicts.encode())
    # depth hidden behind a wide shallow part (the bracket-count shortcut must not skip the walk)
    wide_then_deep = "[" + ",".join(["[]"] * 200) + "," + "[" * 70 + "]" * 70 + "]"
    rejected(parse_json_body, wide_then_deep.encode())
    assert parse_json_body(ok.encode(), max_depth=100) is not None
    rejected(parse_json_body, ("[" * 11 + "]" * 11).encode(), max_depth=10)


def test_many_brackets_inside_strings_and_wide_arrays_are_fine():
    body = {"messages": [{"role": "user", "content": "[[[{{{" * 500}] * 100}
    assert parse_json_body(json.dumps(body).encode()) == body


@pytest.mark.parametrize(
    "raw",
    [
        rb'{"model": "m", "messages": [{"role": "user", "content": "hi \ud800 there"}]}',
        rb'{"model": "m", "messages": [{"role": "user", "content": "\udfff"}]}',
        rb'{"model": "m", "messages": [{"role": "user", "content": "caf\u00e9 \uDC00"}]}',
        rb'{"bad \ud83d key": 1}',
        rb'"\ud800"',
        rb'[["a", {"b": ["\ude00x"]}]]',
        rb'{"x": "\ud83d\ud83d"}',
    ],
)
def test_lone_surrogates_are_a_400_invalid_unicode(raw):
    err = rejected(parse_json_body, raw)
    assert "invalid Unicode" in err.message


@pytest.mark.parametrize(
    "raw,expected",
    [
        (rb'{"x": "\ud83d\ude00"}', {"x": "\U0001f600"}),  # a proper pair is one character
        (rb'{"x": "\\ud800"}', {"x": "\\ud800"}),  # an escaped backslash, not an escape
        (rb'{"x": "\u00e9\u4e2d"}', {"x": "é中"}),
    ],
)
def test_valid_escapes_pass(raw, expected):
    assert parse_json_body(raw) == expected


def test_parsed_bodies_can_always_be_encoded_again():
    raw = rb'{"model": "m", "messages": [{"role": "user", "content": "\ud83d\ude00 ok"}]}'
    json.dumps(parse_json_body(raw), ensure_ascii=False).encode("utf-8")


# ------------------------------------------------------------------ validate_chat


def chat(**extra):
    return {"model": "support", "messages": [{"role": "user", "content": "hi"}], **extra}


def test_a_full_valid_chat_body_passes():
    validate_chat(
        chat(
            n=2,
            max_tokens=100,
            max_completion_tokens=200,
            temperature=0.7,
            top_p=1,
            presence_penalty=-2,
            frequency_penalty=2.0,
            seed=42,
            logprobs=True,
            top_logprobs=5,
            stop=["a", "b", "c", "d"],
            stream=True,
            stream_options={"include_usage": True},
            user="u-1",
            response_format={"type": "json_object"},
            tools=[{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
            tool_choice={"type": "function", "function": {"name": "lookup"}},
            parallel_tool_calls=False,
            logit_bias={"50256": -100},
        )
    )
    validate_chat(chat(stop="END", tool_choice="auto", temperature=0, top_p=0))
    validate_chat(chat(n=None, max_tokens=None, temperature=None, stop=None, tools=None, user=None))
    validate_chat(
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                {"role": "assistant", "content": None},
            ],
        }
    )


@pytest.mark.parametrize(
    "param,value",
    [
        # the values the issue found forwarded unchecked
        ("n", -1),
        ("max_completion_tokens", -5),
        ("temperature", "hot"),
        ("n", 0),
        ("n", 17),
        ("n", 2.0),
        ("n", True),
        ("n", "2"),
        ("max_tokens", 0),
        ("max_tokens", -1),
        ("max_tokens", 1_000_001),
        ("max_tokens", 10.5),
        ("max_tokens", True),
        ("max_completion_tokens", 0),
        ("max_completion_tokens", "100"),
        ("max_completion_tokens", False),
        ("temperature", -0.1),
        ("temperature", 2.01),
        ("temperature", True),
        ("temperature", [1]),
        ("top_p", -0.5),
        ("top_p", 1.5),
        ("top_p", "1"),
        ("top_p", False),
        ("presence_penalty", 2.5),
        ("presence_penalty", -3),
        ("presence_penalty", True),
        ("frequency_penalty", -2.01),
        ("frequency_penalty", "0"),
        ("seed", 1.5),
        ("seed", True),
        ("seed", "42"),
        ("seed", 2**64),
        ("logprobs", 1),
        ("logprobs", "true"),
        ("top_logprobs", -1),
        ("top_logprobs", 21),
        ("top_logprobs", True),
        ("top_logprobs", 1.0),
        ("stop", 5),
        ("stop", ["a", "b", "c", "d", "e"]),
        ("stop", ["a", 1]),
        ("stop", {"a": 1}),
        ("tools", {"type": "function"}),
        ("tools", ["lookup"]),
        ("tools", [{"type": "retrieval"}]),
        ("tools", [{"type": "function"}]),
        ("tools", [{"type": "function", "function": {}}]),
        ("tools", [{"type": "function", "function": {"name": ""}}]),
        ("tools", [{"type": "function", "function": {"name": "f", "parameters": "x"}}]),
        ("tools", [{"type": "function", "function": {"name": "f"}}] * 129),
        ("tool_choice", "always"),
        ("tool_choice", 1),
        ("tool_choice", {"function": {"name": "f"}}),
        ("response_format", "json"),
        ("response_format", {}),
        ("response_format", {"type": 1}),
        ("stream_options", True),
        ("stream_options", {"include_usage": "yes"}),
        ("user", 123),
        ("user", {"id": 1}),
        ("stream", "yes"),
        ("stream", 1),
        ("logit_bias", [1]),
        ("logit_bias", {"1": 101}),
        ("logit_bias", {"1": True}),
        ("parallel_tool_calls", "no"),
    ],
)
def test_bad_chat_parameters_are_a_400_naming_the_parameter(param, value):
    err = rejected(validate_chat, chat(**{param: value}))
    assert err.param is not None and err.param.split("[")[0].split(".")[0] == param
    assert param in err.message
    assert err.body()["error"]["param"] == err.param


def test_n_upper_bound_is_configurable():
    validate_chat(chat(n=32), max_n=32)
    rejected(validate_chat, chat(n=33), max_n=32)


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        "x",
        {"messages": [{"role": "user", "content": "x"}]},
        {"model": "", "messages": [{"role": "user"}]},
        {"model": 3, "messages": [{"role": "user"}]},
        {"model": "m" * 300, "messages": [{"role": "user"}]},
        {"model": "m"},
        {"model": "m", "messages": []},
        {"model": "m", "messages": "hi"},
        {"model": "m", "messages": ["hi"]},
        {"model": "m", "messages": [{"content": "x"}]},
        {"model": "m", "messages": [{"role": 1, "content": "x"}]},
        {"model": "m", "messages": [{"role": "user", "content": 5}]},
        {"model": "m", "messages": [{"role": "user", "content": ["text"]}]},
        {"model": "m", "messages": [{"role": "user", "content": [{"text": "no type"}]}]},
    ],
)
def test_bad_chat_shapes_are_a_400(body):
    rejected(validate_chat, body)


@pytest.mark.parametrize("param", ["temperature", "user", "stop", "n", "model"])
def test_errors_never_echo_large_values(param):
    big = SECRET + "x" * 100_000
    body = chat(**{param: [big] * 5 if param == "stop" else {"v": big} if param == "user" else big})
    err = rejected(validate_chat, body)
    text = json.dumps(err.body())
    assert SECRET not in text and len(text) < 300


# ------------------------------------------------------------------ validate_embeddings


@pytest.mark.parametrize("inp", ["hello", ["a", "b"], [1, 2, 3], [[1, 2], [3]]])
def test_valid_embeddings_pass(inp):
    validate_embeddings({"model": "e", "input": inp, "encoding_format": "float", "dimensions": 256, "user": "u"})


@pytest.mark.parametrize(
    "body,param",
    [
        ({"input": "x"}, "model"),
        ({"model": 1, "input": "x"}, "model"),
        ({"model": "e"}, "input"),
        ({"model": "e", "input": []}, "input"),
        ({"model": "e", "input": 5}, "input"),
        ({"model": "e", "input": ["a", 1]}, "input"),
        ({"model": "e", "input": [1, "a"]}, "input"),
        ({"model": "e", "input": [True, False]}, "input"),
        ({"model": "e", "input": [-1]}, "input"),
        ({"model": "e", "input": [[1], []]}, "input"),
        ({"model": "e", "input": [{"a": 1}]}, "input"),
        ({"model": "e", "input": ["a"] * 2049}, "input"),
        ({"model": "e", "input": "x", "encoding_format": "hex"}, "encoding_format"),
        ({"model": "e", "input": "x", "dimensions": 0}, "dimensions"),
        ({"model": "e", "input": "x", "dimensions": True}, "dimensions"),
        ({"model": "e", "input": "x", "user": 5}, "user"),
    ],
)
def test_bad_embeddings_are_a_400(body, param):
    assert rejected(validate_embeddings, body).param == param


def test_embeddings_body_must_be_an_object():
    rejected(validate_embeddings, ["x"])


# ------------------------------------------------------------------ validate_messages (Anthropic)


def messages(**extra):
    return {"model": "claude", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}], **extra}


def test_valid_messages_pass():
    validate_messages(
        messages(
            system="be brief",
            temperature=1,
            top_p=0.9,
            top_k=40,
            stop_sequences=["\n\n"],
            stream=False,
            metadata={"user_id": "u"},
        )
    )
    validate_messages(
        messages(
            messages=[
                {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                {"role": "assistant", "content": "ok"},
            ]
        )
    )


@pytest.mark.parametrize(
    "param,value",
    [
        ("max_tokens", 0),
        ("max_tokens", -5),
        ("max_tokens", True),
        ("max_tokens", 1.5),
        ("max_tokens", "100"),
        ("max_tokens", 10**7),
        ("temperature", 1.5),
        ("temperature", -1),
        ("temperature", "hot"),
        ("temperature", True),
        ("top_p", 2),
        ("top_p", -0.1),
        ("top_p", False),
        ("top_k", 0),
        ("top_k", -3),
        ("top_k", 2.5),
        ("top_k", True),
        ("stop_sequences", "END"),
        ("stop_sequences", [1]),
        ("stop_sequences", ["a"] * 5),
        ("stream", "true"),
        ("system", 5),
        ("metadata", "x"),
    ],
)
def test_bad_messages_parameters_are_a_400(param, value):
    assert rejected(validate_messages, messages(**{param: value})).param == param


@pytest.mark.parametrize(
    "body",
    [
        None,
        {"model": "c", "messages": [{"role": "user", "content": "x"}]},  # max_tokens missing
        {"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},  # model missing
        {"model": "c", "max_tokens": 5, "messages": []},
        {"model": "c", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]},
        {"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": 5}]},
    ],
)
def test_bad_messages_shapes_are_a_400(body):
    rejected(validate_messages, body)


def test_gateway_error_body_keeps_the_openai_shape():
    err = GatewayError(400, "boom", code="c", param="n")
    assert err.body() == {"error": {"message": "boom", "type": "invalid_request_error", "code": "c", "param": "n"}}
    assert GatewayError(404, "x", "not_found_error", "model_not_found", {"a": "b"}).body()["error"]["param"] is None
