"""The gateway's OpenAPI 3.0 description, served at /openapi.json (and used to fuzz it)."""

from __future__ import annotations

from typing import Any

_ERROR = {
    "description": "an OpenAI-shaped error",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "error": {
                        "type": "object",
                        "properties": {
                            "message": {"type": "string"},
                            "type": {"type": "string"},
                            "code": {"type": "string", "nullable": True},
                        },
                    }
                },
            }
        }
    },
}
_MESSAGE = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {
        "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
        "content": {
            "oneOf": [
                {"type": "string"},
                {
                    "type": "array",
                    "items": {"type": "object", "properties": {"type": {"type": "string"}, "text": {"type": "string"}}},
                },
            ]
        },
    },
}
_CHAT = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        "model": {"type": "string"},
        "messages": {"type": "array", "items": _MESSAGE},
        "max_tokens": {"type": "integer", "minimum": 1},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1},
        "stream": {"type": "boolean"},
        "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
        "user": {"type": "string"},
    },
}
_EMBED = {
    "type": "object",
    "required": ["model", "input"],
    "properties": {
        "model": {"type": "string"},
        "input": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
    },
}
_ANTHROPIC = {
    "type": "object",
    "required": ["model", "messages", "max_tokens"],
    "properties": {
        "model": {"type": "string"},
        "max_tokens": {"type": "integer", "minimum": 1},
        "system": {"type": "string"},
        "messages": {"type": "array", "items": _MESSAGE},
        "stream": {"type": "boolean"},
    },
}
_FEEDBACK = {
    "type": "object",
    "required": ["request_id"],
    "description": "send correct or verdict (one of them)",
    "properties": {
        "request_id": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"},
        "correct": {"type": "boolean"},
        "verdict": {"type": "string", "enum": ["wrong", "right"]},
    },
    "additionalProperties": False,
}
_INVALIDATE = {
    "type": "object",
    "properties": {"doc_ids": {"type": "array", "items": {"type": "string"}}, "kb_version": {"type": "string"}},
}


def _op(summary: str, body: dict | None = None, ok: str = "success") -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            "200": {"description": ok},
            "400": _ERROR,
            "401": _ERROR,
            "404": _ERROR,
            "413": _ERROR,
            "429": _ERROR,
            "502": _ERROR,
            "503": _ERROR,
        },
    }
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


def openapi_spec() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "truecost gateway",
            "version": "0.1.0",
            "description": "OpenAI-compatible gateway: every request priced, attributed, cached and routed.",
        },
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": {
            "/v1/chat/completions": {"post": _op("chat completion (JSON or SSE)", _CHAT)},
            "/v1/embeddings": {"post": _op("embeddings", _EMBED)},
            "/v1/messages": {"post": _op("Anthropic messages", _ANTHROPIC)},
            "/v1/models": {"get": _op("the aliases this gateway serves")},
            "/v1/cache/feedback": {
                "post": {
                    **_op("report a cache hit this key was served (x-request-id) as wrong or right", _FEEDBACK),
                    "responses": {
                        "200": {"description": "accepted: {accepted, request_id, verdict, cache, learned}"},
                        "400": _ERROR,
                        "401": _ERROR,
                        "404": _ERROR,
                        "409": _ERROR,
                        "413": _ERROR,
                        "429": _ERROR,
                    },
                }
            },
            "/healthz": {"get": {"summary": "liveness", "security": [], "responses": {"200": {"description": "ok"}}}},
            "/metrics": {
                "get": {"summary": "Prometheus metrics", "security": [], "responses": {"200": {"description": "text"}}}
            },
            "/admin/cache/invalidate": {
                "post": {
                    **_op("drop entries of changed documents / switch the kb version", _INVALIDATE),
                    "responses": {
                        "200": {"description": "done"},
                        "400": _ERROR,
                        "401": _ERROR,
                        "403": _ERROR,
                        "409": _ERROR,
                    },
                }
            },
        },
    }
