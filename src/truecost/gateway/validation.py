"""Input checks at the gateway's edge: parse a request body safely and validate each API's parameters.

Every check here runs before any upstream call, budget admission or cache lookup. Errors are
:class:`GatewayError` 400s that name the parameter at fault (OpenAI's ``error.param``) and never
echo the value a client sent (it may be huge, or someone else's secret pasted by mistake).

``parse_json_body`` decodes strictly (UTF-8; JSON without ``NaN``/``Infinity``), bounds nesting
depth and refuses lone UTF-16 surrogates (``"\\ud800"`` parses in Python but cannot be encoded
again, so it would fail later — in the tokenizer, the cache, the ledger — as a 500). One iterative
walk, level by level, checks both; strings are checked only when the text has an escape (strict
UTF-8 decoding never yields a surrogate) and only when not ASCII (an O(1) test).
"""

from __future__ import annotations

import json
import math
from typing import Any

from truecost.gateway.errors import GatewayError

MAX_JSON_DEPTH = 64
MAX_N = 16
MAX_TOKENS_BOUND = 1_000_000  # no model writes more in one answer; larger values are typos or probes
MAX_STOP = 4
MAX_TOOLS = 128
MAX_TOP_LOGPROBS = 20
MAX_MODEL_NAME = 256
MAX_EMBED_INPUTS = 2048
_INT64 = 2**63


# ---------------------------------------------------------------- body parsing


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def parse_json_body(raw: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Bytes of a request body -> the JSON value, or a 400 GatewayError that does not echo the body."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise GatewayError(400, "request body is not valid UTF-8", code="invalid_body") from None
    try:
        value = json.loads(text, parse_constant=_no_constants)
    except RecursionError:
        raise GatewayError(400, f"request body is nested deeper than {max_depth} levels", code="invalid_body") from None
    except json.JSONDecodeError as exc:  # msg is a fixed phrase of the parser; position only, no body text
        raise GatewayError(
            400,
            f"request body is not valid JSON: {exc.msg} (line {exc.lineno} column {exc.colno})",
            code="invalid_body",
        ) from None
    except ValueError:  # NaN/Infinity, integers past the interpreter's digit limit
        raise GatewayError(
            400, "request body is not valid JSON: a number is out of range or not finite", code="invalid_body"
        ) from None
    # strict UTF-8 never yields a surrogate, only a \\u escape can: without a backslash (a memchr) no
    # string needs a check
    _walk(value, max_depth, "\\" in text)
    return value


def _walk(value: Any, max_depth: int, check_strings: bool) -> None:
    """One iterative pass, level by level: containers deeper than ``max_depth``, and (when asked)
    strings, keys included, holding a lone surrogate."""
    if type(value) is str:
        if check_strings:
            _check_str(value)
        return
    level = [value] if type(value) is dict or type(value) is list else []
    depth = 1
    while level:
        if depth > max_depth:
            raise GatewayError(400, f"request body is nested deeper than {max_depth} levels", code="invalid_body")
        deeper: list = []
        push = deeper.append
        node: Any
        for node in level:
            if type(node) is dict:
                if check_strings:
                    for k in node:
                        if not k.isascii():
                            _check_str(k)
                node = node.values()
            if check_strings:
                for v in node:
                    t = type(v)
                    if t is dict or t is list:
                        push(v)
                    elif t is str and not v.isascii():
                        _check_str(v)
            else:
                for v in node:
                    t = type(v)
                    if t is dict or t is list:
                        push(v)
        level = deeper
        depth += 1


def _check_str(s: str) -> None:
    try:
        s.encode("utf-8")  # faster than a regex over the string, and exactly the property wanted
    except UnicodeEncodeError:
        raise GatewayError(
            400, "request body contains invalid Unicode (a lone UTF-16 surrogate escape)", code="invalid_body"
        ) from None


async def read_body(request: Any, *, max_bytes: int) -> bytes:
    """A Starlette request's body, up to ``max_bytes`` (413 beyond, without reading the rest)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise GatewayError(413, f"request body is larger than {max_bytes:,} bytes", code="body_too_large")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > max_bytes:
            raise GatewayError(413, f"request body is larger than {max_bytes:,} bytes", code="body_too_large")
    return bytes(raw)


async def read_json_body(request: Any, *, max_bytes: int, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Read a Starlette request's body up to ``max_bytes`` and parse it."""
    return parse_json_body(await read_body(request, max_bytes=max_bytes), max_depth=max_depth)


# ---------------------------------------------------------------- parameter checks


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def _invalid(param: str, message: str, code: str = "invalid_value") -> GatewayError:
    return GatewayError(400, f"Invalid '{param}': {message}.", code=code, param=param)


def _type_error(param: str, wanted: str, got: Any) -> GatewayError:
    return _invalid(param, f"expected {wanted}, got {_kind(got)}", code="invalid_type")


def _is_int(v: Any) -> bool:
    return type(v) is int  # bool is a subclass of int and never a number here


def _is_number(v: Any) -> bool:
    return type(v) is int or (type(v) is float and math.isfinite(v))


def _int(body: dict, name: str, lo: int, hi: int) -> None:
    v = body.get(name)
    if v is None:
        return
    if not _is_int(v):
        raise _type_error(name, "an integer", v)
    if not lo <= v <= hi:
        raise _invalid(name, f"must be an integer between {lo:,} and {hi:,}")


def _number(body: dict, name: str, lo: float, hi: float) -> None:
    v = body.get(name)
    if v is None:
        return
    if not _is_number(v):
        raise _type_error(name, "a number", v)
    if not lo <= v <= hi:
        raise _invalid(name, f"must be a number between {lo:g} and {hi:g}")


def _bool(body: dict, name: str) -> None:
    v = body.get(name)
    if v is not None and type(v) is not bool:
        raise _type_error(name, "a boolean", v)


def _str(body: dict, name: str) -> None:
    v = body.get(name)
    if v is not None and type(v) is not str:
        raise _type_error(name, "a string", v)


def _object(body: dict, name: str) -> dict | None:
    v = body.get(name)
    if v is not None and type(v) is not dict:
        raise _type_error(name, "an object", v)
    return v


def _model(body: dict) -> None:
    m = body.get("model")
    if type(m) is not str or not m:
        raise GatewayError(400, "'model' must be a non-empty string", code="invalid_model", param="model")
    if len(m) > MAX_MODEL_NAME:
        raise GatewayError(
            400, f"'model' must be at most {MAX_MODEL_NAME} characters", code="invalid_model", param="model"
        )


def _stop(body: dict, name: str) -> None:
    v = body.get(name)
    if v is None or type(v) is str:
        return
    if type(v) is not list:
        raise _type_error(name, "a string or an array of strings", v)
    if len(v) > MAX_STOP:
        raise _invalid(name, f"at most {MAX_STOP} stop sequences are allowed")
    for s in v:
        if type(s) is not str:
            raise _type_error(name, "an array of strings", s)


def _require_object(body: Any) -> dict:
    if type(body) is not dict:
        raise GatewayError(400, "request body must be a JSON object", code="invalid_body")
    return body


def _messages(body: dict[str, Any]) -> None:
    msgs = body.get("messages")
    if type(msgs) is not list or not msgs:
        raise GatewayError(400, "'messages' must be a non-empty array", code="invalid_type", param="messages")
    for i, m in enumerate(msgs):
        if type(m) is not dict or type(m.get("role")) is not str or not m["role"]:
            raise GatewayError(
                400, f"messages[{i}] must be an object with a 'role'", code="invalid_type", param=f"messages[{i}]"
            )
        content = m.get("content")
        if type(content) is list:
            for j, part in enumerate(content):
                if type(part) is not dict or type(part.get("type")) is not str:
                    raise GatewayError(
                        400,
                        f"messages[{i}].content[{j}] must be an object with a 'type'",
                        code="invalid_type",
                        param=f"messages[{i}].content[{j}]",
                    )
        elif content is not None and type(content) is not str:
            raise GatewayError(
                400,
                f"messages[{i}].content must be a string, an array of parts, or null",
                code="invalid_type",
                param=f"messages[{i}].content",
            )


def _tools(body: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is not None:
        if type(tools) is not list:
            raise _type_error("tools", "an array", tools)
        if len(tools) > MAX_TOOLS:
            raise _invalid("tools", f"at most {MAX_TOOLS} tools are allowed")
        for i, tool in enumerate(tools):
            where = f"tools[{i}]"
            if type(tool) is not dict:
                raise _type_error(where, "an object", tool)
            if tool.get("type") != "function":
                raise _invalid(where, "'type' must be 'function'")
            fn = tool.get("function")
            if type(fn) is not dict:
                raise _type_error(f"{where}.function", "an object", fn)
            if type(fn.get("name")) is not str or not fn["name"]:
                raise _invalid(f"{where}.function.name", "must be a non-empty string")
            if fn.get("parameters") is not None and type(fn["parameters"]) is not dict:
                raise _type_error(f"{where}.function.parameters", "an object", fn["parameters"])
    choice = body.get("tool_choice")
    if choice is not None:
        if type(choice) is str:
            if choice not in ("none", "auto", "required"):
                raise _invalid("tool_choice", "must be 'none', 'auto', 'required' or an object")
        elif type(choice) is not dict or type(choice.get("type")) is not str:
            raise _invalid("tool_choice", "must be 'none', 'auto', 'required' or an object with a 'type'")


def validate_chat(body: Any, *, max_n: int = MAX_N) -> None:
    """An OpenAI chat-completions body: shape and every parameter the gateway prices, routes or forwards."""
    body = _require_object(body)
    _model(body)
    _messages(body)
    if "stream" in body and type(body["stream"]) is not bool:
        raise _type_error("stream", "a boolean", body["stream"])
    _int(body, "n", 1, max_n)
    _int(body, "max_tokens", 1, MAX_TOKENS_BOUND)
    _int(body, "max_completion_tokens", 1, MAX_TOKENS_BOUND)
    _number(body, "temperature", 0, 2)
    _number(body, "top_p", 0, 1)
    _number(body, "presence_penalty", -2, 2)
    _number(body, "frequency_penalty", -2, 2)
    _int(body, "seed", -_INT64, _INT64 - 1)
    _bool(body, "logprobs")
    _int(body, "top_logprobs", 0, MAX_TOP_LOGPROBS)
    _bool(body, "parallel_tool_calls")
    _stop(body, "stop")
    _str(body, "user")
    bias = _object(body, "logit_bias")
    if bias:
        for v in bias.values():
            if not _is_number(v) or not -100 <= v <= 100:
                raise _invalid("logit_bias", "each bias must be a number between -100 and 100")
    _tools(body)
    fmt = _object(body, "response_format")
    if fmt is not None and (type(fmt.get("type")) is not str or not fmt["type"]):
        raise _invalid("response_format", "must be an object with a 'type'")
    opts = _object(body, "stream_options")
    if opts is not None and "include_usage" in opts and type(opts["include_usage"]) is not bool:
        raise _type_error("stream_options.include_usage", "a boolean", opts["include_usage"])


def validate_embeddings(body: Any) -> None:
    """An OpenAI embeddings body: model, input (text, texts, token ids or arrays of token ids), options."""
    body = _require_object(body)
    _model(body)
    inp = body.get("input")
    if type(inp) is str:
        pass
    elif type(inp) is list and inp:
        if len(inp) > MAX_EMBED_INPUTS:
            raise _invalid("input", f"at most {MAX_EMBED_INPUTS:,} inputs are allowed")
        first = type(inp[0])
        if first is str:
            ok = all(type(x) is str for x in inp)
        elif first is int:
            ok = all(type(x) is int and x >= 0 for x in inp)
        elif first is list:
            ok = all(type(x) is list and x and all(type(t) is int and t >= 0 for t in x) for x in inp)
        else:
            ok = False
        if not ok:
            raise _invalid(
                "input",
                "must be a string, an array of strings, an array of token ids, or an array of arrays of token ids",
                code="invalid_type",
            )
    else:
        raise GatewayError(400, "'input' must be a string or a non-empty array", code="invalid_type", param="input")
    fmt = body.get("encoding_format")
    if fmt is not None and fmt not in ("float", "base64"):
        raise _invalid("encoding_format", "must be 'float' or 'base64'")
    _int(body, "dimensions", 1, 65_536)
    _str(body, "user")


def validate_messages(body: Any) -> None:
    """An Anthropic Messages body (before translation to the OpenAI shape)."""
    body = _require_object(body)
    _model(body)
    mt = body.get("max_tokens")
    if mt is None:
        raise GatewayError(
            400, "max_tokens: field required (a positive integer)", code="invalid_value", param="max_tokens"
        )
    _int(body, "max_tokens", 1, MAX_TOKENS_BOUND)
    msgs = body.get("messages")
    if type(msgs) is not list or not msgs:
        raise GatewayError(400, "messages: a non-empty array is required", code="invalid_type", param="messages")
    for i, m in enumerate(msgs):
        if type(m) is not dict or m.get("role") not in ("user", "assistant"):
            raise GatewayError(
                400, f"messages[{i}]: role must be user or assistant", code="invalid_value", param=f"messages[{i}]"
            )
        content = m.get("content")
        if type(content) is not str and type(content) is not list:
            raise GatewayError(
                400,
                f"messages[{i}]: content must be a string or an array of content blocks",
                code="invalid_type",
                param=f"messages[{i}].content",
            )
    system = body.get("system")
    if system is not None and type(system) is not str and type(system) is not list:
        raise _type_error("system", "a string or an array of content blocks", system)
    if "stream" in body and type(body["stream"]) is not bool:
        raise _type_error("stream", "a boolean", body["stream"])
    _number(body, "temperature", 0, 1)
    _number(body, "top_p", 0, 1)
    _int(body, "top_k", 1, 1_000_000)
    seqs = body.get("stop_sequences")
    if seqs is not None:
        if type(seqs) is not list:
            raise _type_error("stop_sequences", "an array of strings", seqs)
        if len(seqs) > MAX_STOP:  # they become OpenAI's `stop`, which allows at most four
            raise _invalid("stop_sequences", f"at most {MAX_STOP} stop sequences are allowed")
        for s in seqs:
            if type(s) is not str:
                raise _type_error("stop_sequences", "an array of strings", s)
    _object(body, "metadata")
