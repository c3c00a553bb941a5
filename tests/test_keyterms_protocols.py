"""Key terms in the Deepgram and OpenAI Realtime protocols, sans-I/O: how each spells a list, the
commands it emits, and how it answers a list the engine rejects. tests/test_keyterms_server.py runs
them over sockets against the real engine."""
from __future__ import annotations

import json

import pytest

from parakeet_streaming.config import ServerConfig
from parakeet_streaming.engine.events import KeytermsRejected
from parakeet_streaming.server import deepgram as dg
from parakeet_streaming.server import openai_realtime as rt
from parakeet_streaming.server.context import ModelInfo
from parakeet_streaming.server.wire import Close, Keyterms, Request, Send


def sent(outputs: list) -> list[dict]:
    return [json.loads(o.data) for o in outputs if isinstance(o, Send)]


def test_deepgram_keyterm_then_keywords_with_the_intensifier_as_weight() -> None:
    opts = dg.parse_query({"keyterm": ["good morning", "kitchen"], "keywords": ["name:4", "are", "please:0.5"]})
    assert opts.keyterms == ("good morning", "kitchen", ("name", 4.0), "are", ("please", 0.5))


@pytest.mark.parametrize("value, words", [("um:-5", "(0, 100]"), ("um:0", "(0, 100]"), ("um:101", "(0, 100]"),
                                          ("um:lots", "must be a number")])
def test_deepgram_refuses_intensifiers_it_cannot_honour(value: str, words: str) -> None:
    with pytest.raises(dg.ListenRejected) as info:
        dg.parse_query({"keywords": [value]})
    assert info.value.status == 400 and words in info.value.err_msg and "negative intensifier" in info.value.err_msg


def test_deepgram_a_list_rejected_after_the_upgrade_is_an_error_and_a_policy_close() -> None:
    """Where no upgrade check ran (the protocol driven directly), the engine's rejection still gets
    Deepgram's shape: an Error, then close 1008."""
    stream = dg.DeepgramStream(Request("/v1/listen?keyterm=good&keywords=name:4"), ServerConfig(), ModelInfo("m"))
    stream.open(1, 0.0)
    assert [o for o in stream.outputs() if isinstance(o, Keyterms)] == [Keyterms(("good", ("name", 4.0)))]
    stream.engine_event(KeytermsRejected(1, "key term 'X' cannot be spelled"))
    out = stream.outputs()
    assert sent(out) == [{"type": "Error", "variant": "bad_request",
                          "description": "keyterm: key term 'X' cannot be spelled"}]
    assert out[-1] == Close(1008, "keyterm: key term 'X' cannot be spelled")


def update(keywords) -> str:
    return json.dumps({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
        "transcription": {"model": "parakeet", "keywords": keywords}}}}})


NAME = "session.audio.input.transcription.keywords"


@pytest.mark.parametrize("keywords, code", [("kitchen", "invalid_type"), (["a", 3], "invalid_type"),
                                            (["a"] * 1001, "invalid_value")])
def test_openai_keywords_must_be_an_array_of_strings(keywords, code: str) -> None:
    with pytest.raises(rt.RealtimeError) as info:
        rt.update_session(rt.SessionConfig(), json.loads(update(keywords))["session"])
    assert (info.value.code, info.value.param) == (code, NAME)


def test_openai_keywords_become_the_streams_key_terms_and_a_rejected_list_is_undone() -> None:
    stream = rt.RealtimeStream(Request("/v1/realtime?intent=transcription"), ServerConfig(), ModelInfo("m"))
    stream.open(7, 0.0)
    assert not [o for o in stream.outputs() if isinstance(o, Keyterms)]  # none until the client sends some
    stream.receive(update(["kitchen", "good morning"]), 1.0)
    out = stream.outputs()
    assert [o for o in out if isinstance(o, Keyterms)] == [Keyterms(("kitchen", "good morning"))]
    assert sent(out)[-1]["session"]["audio"]["input"]["transcription"]["keywords"] == ["kitchen", "good morning"]
    stream.receive(update(["kitchen", "good morning"]), 2.0)  # unchanged: no new command
    assert not [o for o in stream.outputs() if isinstance(o, Keyterms)]
    stream.receive(update(["NVIDIA"]), 3.0)
    assert [o for o in stream.outputs() if isinstance(o, Keyterms)] == [Keyterms(("NVIDIA",))]
    stream.engine_event(KeytermsRejected(7, "key term 'NVIDIA' cannot be spelled"))
    error = sent(stream.outputs())[0]
    assert error["type"] == "error" and (error["error"]["code"], error["error"]["param"]) == ("invalid_value", NAME)
    assert stream.session_config.keywords == ("kitchen", "good morning")  # what the engine still uses
    stream.receive(update(None), 4.0)
    out = stream.outputs()
    assert [o for o in out if isinstance(o, Keyterms)] == [Keyterms(())]
    assert "keywords" not in sent(out)[-1]["session"]["audio"]["input"]["transcription"]
