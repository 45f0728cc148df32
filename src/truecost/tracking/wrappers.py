"""Wrappers for the official ``openai`` and ``anthropic`` clients.

    client = wrap_openai(OpenAI(), tracker)
    client.chat.completions.create(model="gpt-6-luna", messages=[...])  # priced and recorded

Every call (streaming included) becomes a ``generate`` (or ``embed``) step of the current
request, or of a request of its own when none is open. For streams the wrapper asks for
usage in the last chunk (``stream_options.include_usage``) and hides that extra chunk
from callers who did not ask for it themselves.
"""

from __future__ import annotations

import inspect
from typing import Any

from truecost.ledger.events import check_source
from truecost.tracking.scope import StepScope, current_request
from truecost.tracking.tracker import Tracker

# neither the request nor the response named a model: priced as unknown, with this in the reason
NO_MODEL = "(no model named)"


def _open_step(tracker: Tracker, kind: str, model: str | None, source: str | None) -> StepScope:
    req = current_request() or tracker.request(source=source)
    step = StepScope(req, kind, model)
    step.source = source
    return step.begin()


class _StreamRecorder:
    """Shared bookkeeping for a stream: usage seen so far, chunks, and the final record."""

    def __init__(self, step: StepScope, model: str, flavour: str, hide_usage_chunk: bool) -> None:
        self.step, self.model, self.flavour, self.hide = step, model, flavour, hide_usage_chunk
        self.usage: Any = None
        self.anthropic_usage: dict[str, Any] = {}
        self.chunks = 0
        self.done = False

    def see(self, chunk: Any) -> bool:
        """Record a chunk; return False when the chunk should be hidden from the caller."""
        self.chunks += 1
        if self.flavour == "anthropic":
            kind = getattr(chunk, "type", None)
            if kind == "message_start":
                u = chunk.message.usage
                self.anthropic_usage.update(u.model_dump() if hasattr(u, "model_dump") else dict(u))
            elif kind == "message_delta" and getattr(chunk, "usage", None) is not None:
                self.anthropic_usage["output_tokens"] = chunk.usage.output_tokens
            return True
        usage = getattr(chunk, "usage", None)
        if usage is not None:
            self.usage = usage
            if self.hide and not getattr(chunk, "choices", None):
                return False
        return True

    def finish(self, exc: BaseException | None = None) -> None:
        if self.done:
            return
        self.done = True
        usage = self.anthropic_usage if self.flavour == "anthropic" else self.usage
        complete = usage is not None and (self.flavour != "anthropic" or "output_tokens" in usage)
        if complete and usage:
            self.step.tokens(self.model, usage, flavour=self.flavour)
        else:
            self.step.cost(
                None,
                service=self.model,
                quantity=0,
                unit="tokens",
                reason=f"stream ended after {self.chunks} chunks before usage arrived",
            )
        if exc is None and not complete:
            exc = RuntimeError("stream closed before it completed")
        self.step.annotate(streamed_chunks=self.chunks)
        self.step.finish(exc)


class _SyncStream:
    def __init__(self, stream: Any, rec: _StreamRecorder) -> None:
        self._stream, self._rec = stream, rec

    def __iter__(self):
        try:
            for chunk in self._stream:
                if self._rec.see(chunk):
                    yield chunk
        except BaseException as exc:
            self._rec.finish(exc)
            raise
        self._rec.finish()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        try:
            if hasattr(self._stream, "close"):
                self._stream.close()
        finally:
            self._rec.finish()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _AsyncStream:
    def __init__(self, stream: Any, rec: _StreamRecorder) -> None:
        self._stream, self._rec = stream, rec

    async def __aiter__(self):
        try:
            async for chunk in self._stream:
                if self._rec.see(chunk):
                    yield chunk
        except BaseException as exc:
            self._rec.finish(exc)
            raise
        self._rec.finish()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    async def close(self) -> None:
        try:
            if hasattr(self._stream, "close"):
                await self._stream.close()
        finally:
            self._rec.finish()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _instrument(create: Any, tracker: Tracker, kind: str, flavour: str, source: str | None = None) -> Any:
    """Wrap one ``create`` method so that each call is a priced step.

    Sync and async clients are told apart by what ``create`` returns (SDK methods are
    wrapped in decorators that hide ``async def`` from ``inspect``).
    """

    def record(step: StepScope, model: str | None, resp: Any, hide: bool, stream: bool, is_async: bool) -> Any:
        if stream:
            rec = _StreamRecorder(step, model or NO_MODEL, flavour, hide)
            return _AsyncStream(resp, rec) if is_async else _SyncStream(resp, rec)
        usage = getattr(resp, "usage", None)
        if usage is None:
            step.cost(None, service=model, reason="response carried no usage")
        else:
            from truecost.pricing.usage import normalise_call  # the response says which service tier served it

            step.tokens(
                model or getattr(resp, "model", None) or NO_MODEL,
                normalise_call(usage, flavour, response=resp),
                flavour=flavour,
            )
        step.finish()
        return resp

    def failed(step: StepScope, model: str | None, exc: BaseException) -> None:
        step.cost(None, service=model, reason=f"call failed: {type(exc).__name__}")
        step.finish(exc)

    def call(*args: Any, **kwargs: Any) -> Any:
        hide = False
        stream = bool(kwargs.get("stream"))
        if stream and flavour == "openai" and kind == "generate":
            opts = dict(kwargs.get("stream_options") or {})
            if not opts.get("include_usage"):
                opts["include_usage"] = hide = True
            kwargs = {**kwargs, "stream_options": opts}
        model = kwargs.get("model")
        step = _open_step(tracker, kind, model, source)
        try:
            resp = create(*args, **kwargs)
        except BaseException as exc:
            failed(step, model, exc)
            raise
        if not inspect.isawaitable(resp):
            return record(step, model, resp, hide, stream, False)

        async def finish_async() -> Any:
            try:
                result = await resp
            except BaseException as exc:
                failed(step, model, exc)
                raise
            return record(step, model, result, hide, stream, True)

        return finish_async()

    return call


class _Proxy:
    """Delegates everything to the wrapped object except the attributes given."""

    def __init__(self, target: Any, overrides: dict[str, Any]) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_overrides", overrides)

    def __getattr__(self, name: str) -> Any:
        if name in self._overrides:
            return self._overrides[name]
        return getattr(self._target, name)


def wrap_openai(client: Any, tracker: Tracker, *, source: str | None = None) -> Any:
    """Record every chat completion and embedding call of an ``openai`` client (sync or async).
    ``source``: where the events say they were recorded (default: the current request's, else the tracker's)."""
    source = None if source is None else check_source(source)
    completions = _Proxy(
        client.chat.completions,
        {"create": _instrument(client.chat.completions.create, tracker, "generate", "openai", source)},
    )
    chat = _Proxy(client.chat, {"completions": completions})
    embeddings = _Proxy(
        client.embeddings, {"create": _instrument(client.embeddings.create, tracker, "embed", "openai", source)}
    )
    return _Proxy(client, {"chat": chat, "embeddings": embeddings})


def wrap_anthropic(client: Any, tracker: Tracker, *, source: str | None = None) -> Any:
    """Record every ``messages.create`` call of an ``anthropic`` client (sync or async); ``source`` as in wrap_openai."""
    source = None if source is None else check_source(source)
    messages = _Proxy(
        client.messages, {"create": _instrument(client.messages.create, tracker, "generate", "anthropic", source)}
    )
    return _Proxy(client, {"messages": messages})
