"""Cache scope, deny by default; the partition string; refusals written as text are never stored."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.cache.test_semantic_cache import HashEmbedder, answer, body
from truecost.cache.entries import MemoryEntryStore
from truecost.cache.verifier import NormalisedMatch
from truecost.cache.index import ExactIndex
from truecost.cache.policy import FixedThreshold
from truecost.cache.refusal import DEFAULT_PATTERNS, RefusalDetector
from truecost.cache.request import ANSWER_NEUTRAL, KNOWN_SCOPE_PARAMS, cache_key, cacheable_response
from truecost.cache.semantic import SemanticCache


def greedy(**kw):
    """A cache whose policy hits on anything in its own scope: only the scope keeps answers apart."""
    return SemanticCache(
        HashEmbedder(), ExactIndex(64), MemoryEntryStore(), FixedThreshold(-1.0), NormalisedMatch(), **kw
    )


# -- strategies shared with tests/contract/test_cache_isolation.py ----------------------------------------------
def _unknown(name: str) -> bool:
    return name not in ANSWER_NEUTRAL and name not in KNOWN_SCOPE_PARAMS


UNKNOWN_NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,11}", fullmatch=True).filter(_unknown)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(-2, 2, allow_nan=False, width=32) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=5,
)
UNKNOWN_PARAMS = st.dictionaries(UNKNOWN_NAMES, JSON_VALUES, max_size=2)
# fields that never change the answer: they may vary freely without splitting a scope
NEUTRAL = st.sampled_from(
    [
        {},
        {"user": "u-1"},
        {"stream": True},
        {"metadata": {"trace": "abc"}},
        {"stream": True, "stream_options": {"include_usage": True}},
    ]
)
WORDS = ["cancel", "my", "order", "refund", "card", "please", "now"]
QUERIES = st.lists(st.sampled_from(WORDS), min_size=1, max_size=4).map(" ".join)


def canon(params: dict) -> str:
    return json.dumps(params, sort_keys=True, separators=(",", ":"))


def ops_strategy(partitions, max_ops):
    """(partition, query, index into a pool of unknown-parameter sets, neutral fields): the pool always holds {}
    so plain requests meet requests carrying unknown parameters, in both orders."""
    return st.tuples(
        st.lists(UNKNOWN_PARAMS, min_size=1, max_size=3).map(lambda pool: [{}] + pool),
        st.lists(
            st.tuples(st.sampled_from(partitions), QUERIES, st.integers(0, 3), NEUTRAL), min_size=4, max_size=max_ops
        ),
    )


def run_isolation_ops(cache, pool, ops):
    """Store and look up; every hit must come from the same partition with the same unknown parameters."""
    owner, hits = {}, 0
    for partition, q, i, neutral in ops:
        params = pool[i % len(pool)]
        me = (partition, canon(params))
        r = cache.lookup({**body(q), **params, **neutral}, partition)
        if r.hit:
            hits += 1
            assert owner[r.entry.id] == me, (r.status, owner[r.entry.id], me)
        else:
            e = cache.store(r, answer(f"answer number {len(owner)}"))
            if e is not None:
                owner[e.id] = me
    # the cache does serve: each stored answer is found again by its own kind of request
    for partition, q, i, _neutral in ops[:5]:
        params = pool[i % len(pool)]
        assert cache.lookup({**body(q + " again"), **params}, partition).hit
    return hits


@settings(max_examples=80, deadline=None)
@given(data=ops_strategy(["t1", "t2", "key:a", "anonymous"], 60))
def test_property_unknown_parameters_never_cross(data):
    pool, ops = data
    run_isolation_ops(greedy(), pool, ops)


# -- named parameters from the finding -------------------------------------------------------------------------
FINDING_PARAMS = {
    "guided_choice": ["yes", "no"],
    "guided_regex": r"\d{3}-\d{4}",
    "guided_json": {"type": "object", "properties": {"answer": {"type": "integer"}}},
    "functions": [{"name": "get_weather", "parameters": {"type": "object", "properties": {}}}],
    "function_call": {"name": "get_weather"},
    "top_k": 5,
    "x_vendor_knob": "anything",  # a parameter nobody has heard of
    "min_p": 0.2,
    "guided_grammar": 'root ::= "yes" | "no"',
    "chat_template_kwargs": {"enable_thinking": False},
}


@pytest.mark.parametrize("name", list(FINDING_PARAMS))
@pytest.mark.parametrize("direction", ["stored_with", "looked_up_with"])
def test_an_answer_made_with_a_parameter_is_never_served_without_it(name, direction):
    c = greedy()
    extra = {name: FINDING_PARAMS[name]}
    store_body = body("what is the refund policy", **(extra if direction == "stored_with" else {}))
    look = lambda text: body(text, **(extra if direction == "looked_up_with" else {}))  # noqa: E731
    c.store(c.lookup(store_body, "acme"), answer("made under " + json.dumps(extra)))
    assert not c.lookup(look("what is the refund policy"), "acme").hit  # exact
    assert not c.lookup(look("what is the refund policy please"), "acme").hit  # paraphrase (policy hits on anything)
    # with the same parameter and value it is served, and another value is another scope
    assert c.lookup(store_body, "acme").status == "hit_exact"
    if direction == "stored_with":
        assert not c.lookup(body("what is the refund policy", **{name: "other"}), "acme").hit


def test_answer_neutral_fields_do_not_split_the_scope():
    c = greedy()
    c.store(c.lookup(body("cancel my order", temperature=0), "acme"), answer("done"))
    for neutral in [
        {"stream": True, "stream_options": {"include_usage": True}},
        {"user": "u-9"},
        {"metadata": {"k": "v"}},
        {"store": True},
        {"service_tier": "flex"},
        {"safety_identifier": "h"},
        {"prompt_cache_key": "p"},
    ]:
        assert c.lookup(body("cancel my order", temperature=0, **neutral), "acme").status == "hit_exact", neutral
    # a known parameter sent as null is the same as absent; an unknown one's null is not
    assert c.lookup(body("cancel my order", temperature=0, top_k=None), "acme").status == "hit_exact"
    assert not c.lookup(body("cancel my order", temperature=0, x_mystery=None), "acme").hit
    assert set(ANSWER_NEUTRAL) == {
        "model",
        "messages",
        "stream",
        "stream_options",
        "user",
        "safety_identifier",
        "metadata",
        "store",
        "service_tier",
        "prompt_cache_key",
        "prompt_cache_retention",
    }  # widening this list is a reviewed decision


def test_fields_of_the_last_user_message_other_than_its_text_are_scope():
    c = greedy()
    plain = {"model": "m", "messages": [{"role": "user", "content": "what is my name"}]}
    c.store(c.lookup(plain, "acme"), answer("I don't know your name"))
    named = {"model": "m", "messages": [{"role": "user", "content": "what is my name", "name": "bob"}]}
    assert not c.lookup(named, "acme").hit
    marked = {
        "model": "m",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "what is my name", "x_hint": "pirate voice"}]}
        ],
    }
    assert not c.lookup(marked, "acme").hit
    as_parts = {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "what is my name"}]}]}
    assert c.lookup(as_parts, "acme").status == "hit_exact"  # the same text as parts is the same request


def test_an_assistant_prefill_after_the_question_is_not_history_before_it():
    c = greedy()
    before = {
        "model": "m",
        "messages": [{"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "tell me a joke"}],
    }
    after = {
        "model": "m",
        "messages": [{"role": "user", "content": "tell me a joke"}, {"role": "assistant", "content": "Hello!"}],
    }
    c.store(c.lookup(before, "acme"), answer("a joke"))
    assert not c.lookup(after, "acme").hit


def test_remote_content_and_live_search_are_not_cached_inline_content_only_exactly():
    remote = {
        "model": "m",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is in this picture"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/latest.jpg"}},
                ],
            }
        ],
    }
    c = greedy()
    r = c.lookup(remote, "acme")
    assert r.status == "bypass" and "remote content" in r.reason
    assert c.store(r, answer("a cat")) is None
    in_history = {
        "model": "m",
        "messages": [
            remote["messages"][0],
            {"role": "assistant", "content": "a cat"},
            {"role": "user", "content": "and now?"},
        ],
    }
    assert c.lookup(in_history, "acme").status == "bypass"
    assert c.lookup(body("latest news", web_search_options={}), "acme").status == "bypass"
    inline = {
        "model": "m",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is in this picture"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                ],
            }
        ],
    }
    r = c.lookup(inline, "acme")
    assert r.status == "miss" and r.key.text is None
    c.store(r, answer("a dot"))
    assert c.lookup(inline, "acme").status == "hit_exact"
    other = json.loads(json.dumps(inline))
    other["messages"][0]["content"][1]["image_url"]["url"] = "data:image/png;base64,AAAAAAAAAAA="
    assert not c.lookup(other, "acme").hit  # another picture, same words: never semantic


# -- the partition ------------------------------------------------------------------------------------------
PARTITIONS = ["acme", "key:support", "key:billing", "anonymous", "", None]


def test_the_partition_string_is_a_hard_partition():
    c = greedy()
    for p in PARTITIONS:
        c.store(c.lookup(body("what is the support phone number"), p), answer(f"owner={p!r}"))
    for p in PARTITIONS:
        for text in ("what is the support phone number", "what is the support phone number today"):
            r = c.lookup(body(text), p)
            assert r.hit and r.entry.answer["choices"][0]["message"]["content"] == f"owner={p!r}"
    assert len({cache_key(body("x"), p).scope for p in PARTITIONS}) == len(PARTITIONS)
    # a tenant named like a key or "anonymous" is only itself; the string is compared exactly
    assert not c.lookup(body("what is the support phone number"), "key:support ").hit
    assert not c.lookup(body("what is the support phone number"), "Anonymous").hit


def test_partition_is_positional_and_the_old_keyword_still_works():
    c = greedy()
    c.store(c.lookup(body("reset my pin"), "key:support"), answer("in the app"))
    assert c.lookup(body("reset my pin"), "key:support").hit
    assert c.lookup(body("reset my pin"), scope="key:support").hit
    assert c.lookup(body("reset my pin"), tenant="key:support").hit
    assert not c.lookup(body("reset my pin")).hit
    with pytest.raises(TypeError):
        c.lookup(body("reset my pin"), "a", tenant="b")


# -- refusals written as text ---------------------------------------------------------------------------------
REFUSALS = [
    "I'm sorry, but I can't help with that.",
    "I\u2019m sorry, but I can\u2019t assist with that request.",
    "Sorry, I cannot provide that information.",
    "I cannot help with creating malware.",
    "I can't assist with that.",
    "I'm unable to share details about other customers.",
    "As an AI language model, I do not have opinions.",
    "I must decline this request.",
    "I apologize, but I won't be able to do that.",
    "I'm afraid I can't do that, Dave.",
    "**I can't help with that.** If you have another question, ask away.",
    "Thanks for reaching out. Unfortunately, I am not able to discuss that topic.",
    "That request violates the content policy, so I won't continue.",
]
BENIGN = [
    "Sorry for the wait, here is your tracking number: 1Z999.",
    "I'm sorry to hear your parcel is late. Here is how to get a refund: open Orders and choose Refund.",
    "I can't help but notice you asked twice: refunds take 5 days.",
    "As an airline, we refund cancelled flights within 7 days.",
    "You cannot cancel after 30 days, but you can return the item.",
    "Refunds take five to seven working days. " + "Details follow. " * 20 + "I can't help with taxes.",
]


@pytest.mark.parametrize("text", REFUSALS)
def test_refusals_written_as_text_are_not_stored(text):
    c = greedy()
    r = c.lookup(body("how do I do the thing"), "acme")
    assert c.store(r, answer(text)) is None
    assert "refusal written as text" in cacheable_response(answer(text))
    assert c.stats["refused_refusal"] == 1 and len(c) == 0
    assert not c.lookup(body("how do I do the thing"), "acme").hit


@pytest.mark.parametrize("text", BENIGN)
def test_benign_answers_that_look_apologetic_are_stored(text):
    c = greedy()
    assert c.store(c.lookup(body("where is my parcel"), "acme"), answer(text)) is not None
    assert c.lookup(body("where is my parcel"), "acme").status == "hit_exact"


def test_one_refusing_choice_keeps_the_whole_answer_out():
    resp = answer("Here you go.")
    resp["choices"].append(
        {"index": 1, "message": {"role": "assistant", "content": "I can't help with that."}, "finish_reason": "stop"}
    )
    assert "refusal" in cacheable_response(resp)


def test_the_detector_is_configurable():
    custom = greedy(refusal_patterns=[r"\bcomputer says no\b"])
    assert custom.store(custom.lookup(body("q one"), "t"), answer("Computer says no.")) is None
    assert custom.store(custom.lookup(body("q two"), "t"), answer("I can't help with that.")) is not None
    off = greedy(refusal_patterns=None)
    assert off.store(off.lookup(body("q"), "t"), answer("I can't help with that.")) is not None
    assert cacheable_response(answer("I can't help with that."), 200, None) is None
    # the structured refusal field and the other rules still apply with the detector off
    assert (
        cacheable_response(
            {"choices": [{"message": {"content": "x", "refusal": "no"}, "finish_reason": "stop"}]}, 200, None
        )
        == "refusal"
    )
    short = RefusalDetector(DEFAULT_PATTERNS, window=10)
    assert short.match("Well, well. I can't help with that.") is None
    assert RefusalDetector().match("Well, well. I can't help with that.") == "i can't help"
    with pytest.raises(TypeError):
        RefusalDetector("as an ai")
