"""The call stage of a streamed answer, and the replay of a whole answer as a stream.

A stream falls back to the next candidate only before its first chunk; a cut afterwards ends
with an error event. Whatever happens -- the last chunk, a cut, the client hanging up -- the
step is charged what the provider may bill, and the exchange is settled when the stream ends.
"""

from __future__ import annotations

import json
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping, Sequence

from truecost.cache.replay import replay_chunks
from truecost.errors import UpstreamError
from truecost.gateway.config import Candidate
from truecost.gateway.errors import GatewayError
from truecost.gateway.exchange import Exchange
from truecost.gateway.metering import Meter, StreamTally
from truecost.tracking.scope import StepScope
from truecost.upstream.base import Upstream
from truecost.upstream.errors import UpstreamStreamCut

DONE = b"data: [DONE]\n\n"


def event(data: Any) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"


async def stream_answer(
    ex: Exchange,
    candidates: Sequence[Candidate],
    upstreams: Mapping[str, Upstream],
    meter: Meter,
    settle: Callable[[Exchange], Awaitable[None]],
) -> AsyncIterator[bytes]:
    """SSE bytes of the first candidate that starts answering; settles ``ex`` when it ends, however it ends."""
    sent_any = False
    last_error: Exception | None = None
    want_usage = bool((ex.body.get("stream_options") or {}).get("include_usage"))
    try:
        before_upstream_ms: float | None = None  # a stream's overhead: the gateway's time before the first call
        for i, cand in enumerate(candidates):
            step = ex.step("generate", cand.model)
            t_up = time.perf_counter()
            if before_upstream_ms is None:
                before_upstream_ms = (t_up - ex.t0) * 1000
            tally = StreamTally()
            upstream_stream = upstreams[cand.upstream].stream({**ex.body, "model": cand.wire_model})
            try:
                async for chunk in upstream_stream:
                    tally.add(chunk)
                    data = chunk.data
                    if data.get("usage") and not data.get("choices") and not want_usage:
                        continue  # the caller did not ask for the usage chunk
                    sent_any = True
                    yield event(data)
            except UpstreamError as exc:
                last_error = exc
                meter.charge_partial(ex, step, cand, tally, exc, hung_up=False)
                if sent_any or isinstance(exc, UpstreamStreamCut):
                    yield event(
                        GatewayError(
                            502, f"upstream stream failed mid-way: {exc}", "upstream_error", "stream_cut"
                        ).body()
                    )
                    return
                continue
            except BaseException as exc:  # the client went away (or we were cancelled): charge what was used
                meter.charge_partial(ex, step, cand, tally, exc, hung_up=True)
                raise
            finally:
                await upstream_stream.aclose()  # closes the upstream response: the upstream call is cancelled
            _charge_complete(ex, step, cand, tally, meter, (time.perf_counter() - t_up) * 1000)
            step.annotate(streamed_chunks=tally.chunks, upstream=cand.upstream, fallback=i > 0)
            ex.finish(step)
            meter.count(ex.req, cand.model, ex.attribution, before_upstream_ms)
            yield DONE
            return
        yield event(ex.all_failed(last_error).body())
    finally:
        await settle(ex)


def _charge_complete(
    ex: Exchange, step: StepScope, cand: Candidate, tally: StreamTally, meter: Meter, call_ms: float
) -> None:
    if tally.reported:
        meter.charge(ex, step, cand, tally.usage, tally.native, tally.last)
    else:  # some servers (llama.cpp) send no usage in streams: estimate, and say so
        meter.estimate(ex, step, cand.model, tally.chunks)
    if cand.self_hosted:
        meter.tracker.charge_compute(step, call_ms)


async def replay(answer: dict, body: dict, usage: Any = None) -> AsyncIterator[bytes]:
    """A whole answer (a cache hit, or a cascade's decision) as the stream the client asked for."""
    include = bool((body.get("stream_options") or {}).get("include_usage"))
    for chunk in replay_chunks(answer, include_usage=include, usage=usage):
        yield event(chunk)
    yield DONE
