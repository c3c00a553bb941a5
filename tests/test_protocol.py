"""server/protocol.py with plain strings and bytes: parsing, validation, message builders."""
from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parakeet_streaming.engine.events import Result, UtteranceEnd
from parakeet_streaming.engine.words import Word
from parakeet_streaming.server import protocol as p


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def code_of(text) -> str:
    with pytest.raises(p.ProtocolError) as err:
        p.parse_text(text)
    assert not err.value.fatal
    return err.value.code


def test_seed_audio_message():
    msg = p.parse_text(json.dumps({"type": "audio", "data": b64(b"\x01\x00\x02\x00"),
                                   "encoding": "pcm16", "final": False}))
    assert msg == p.Audio(data=b"\x01\x00\x02\x00", encoding="pcm16", final=False)


def test_audio_defaults_and_bare_final():
    assert p.parse_text('{"type":"audio","final":true}') == p.Audio(data=b"", final=True)
    assert p.parse_text('{"type":"audio","data":""}') == p.Audio(data=b"")


def test_debug_samples_form():
    msg = p.parse_text('{"type":"audio","samples":[0.5,-1,0],"final":true}')
    assert msg == p.Audio(samples=[0.5, -1, 0], final=True)


def test_sample_rate_and_mulaw():
    msg = p.parse_text('{"type":"audio","data":"","encoding":"mulaw","sample_rate":8000}')
    assert msg.encoding == "mulaw" and msg.sample_rate == 8000


def test_simple_messages_bytes_and_str():
    assert p.parse_text('{"type":"ping"}') == p.Ping()
    assert p.parse_text(b'{"type":"close"}') == p.Close()
    assert p.parse_text('{"type":"flush"}\n') == p.Flush()


def test_binary_frame_is_non_final_audio():
    assert p.parse_binary(b"\x00\x01") == p.Audio(data=b"\x00\x01")


@pytest.mark.parametrize("text", ["{", "not json", "", '{"type":"audio"', b"\xff\xfe{}"])
def test_bad_json(text):
    assert code_of(text) == p.BAD_JSON


@pytest.mark.parametrize("text", ["[]", "42", '"audio"', "null", "true"])
def test_non_object_json(text):
    assert code_of(text) == p.BAD_JSON


@pytest.mark.parametrize("text", ['{}', '{"type":"dance"}', '{"type":5}', '{"type":null}', '{"type":["audio"]}'])
def test_unknown_or_missing_type(text):
    assert code_of(text) == p.UNKNOWN_TYPE


@pytest.mark.parametrize("data", ['"***"', '"abc"', '"YQ=x"', "5", "[1,2]", "{}", "true"])
def test_bad_data(data):
    assert code_of('{"type":"audio","data":%s}' % data) == p.BAD_AUDIO


@pytest.mark.parametrize("samples", ['"0.1"', "0.1", '[0.1,"x"]', "[true]", "[null]", "[NaN]", "[Infinity]",
                                     "[[0.1]]", "{}"])
def test_bad_samples(samples):
    assert code_of('{"type":"audio","samples":%s}' % samples) == p.BAD_AUDIO


def test_data_and_samples_together():
    assert code_of('{"type":"audio","data":"","samples":[]}') == p.BAD_AUDIO


@pytest.mark.parametrize("enc", ['"opus"', '"PCM16"', "5", '""', "[]"])
def test_unknown_encoding(enc):
    assert code_of('{"type":"audio","data":"","encoding":%s}' % enc) == p.UNSUPPORTED_ENCODING


@pytest.mark.parametrize("final", ['"yes"', "2", "[]", "0.5"])
def test_bad_final(final):
    assert code_of('{"type":"audio","final":%s}' % final) == p.BAD_AUDIO


@pytest.mark.parametrize("rate", ["0", "-8000", "16000.5", '"abc"', "true", "100000000"])
def test_bad_sample_rate(rate):
    assert code_of('{"type":"audio","sample_rate":%s}' % rate) == p.BAD_AUDIO


def test_query_string_sample_rate():
    assert p.parse_sample_rate("8000") == 8000
    with pytest.raises(p.ProtocolError):
        p.parse_sample_rate("8k")


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.binary()))
def test_parser_never_raises_anything_else(data):
    try:
        p.parse_text(data)
    except p.ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["type", "data", "samples", "encoding", "final", "sample_rate"]),
                       st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8),
                                 st.lists(st.floats(), max_size=3), st.just("audio"))))
def test_parser_handles_arbitrary_objects(obj):
    try:
        p.parse_text(json.dumps(obj))
    except p.ProtocolError:
        pass


def test_hello_builder():
    msg = p.hello(3, 16000, model="tiny", chunk_ms=160)
    assert msg["type"] == "hello" and msg["stream_id"] == 3 and msg["sample_rate"] == 16000
    assert msg["model"] == "tiny" and msg["chunk_ms"] == 160 and "pcm16" in msg["encodings"]
    assert msg["protocol"] == p.PROTOCOL_VERSION


def test_result_builder():
    ev = Result(stream_id=1, text="hi", token_ids=[5, 6], confidences=[0.123456, 1.0], token_frames=[1, 2],
                audio_ms=320, utterance=0, is_final=True)
    msg = p.result(ev)
    assert msg == {"type": "result", "stream_id": 1, "text": "hi", "token_ids": [5, 6],
                   "confidence_scores": [0.1235, 1.0], "is_final": True, "audio_ms": 320, "utterance": 0}
    flushed = p.result(Result(1, "", [], [], [], 0, 0, flushed=True))
    assert flushed["flushed"] is True and flushed["is_final"] is False


def test_eou_error_pong_status_builders():
    assert p.eou(UtteranceEnd(2, 1, "yes", 800, backchannel=True)) == {
        "type": "eou", "stream_id": 2, "utterance": 1, "text": "yes", "audio_ms": 800, "backchannel": True,
        "reason": "model"}
    silence = UtteranceEnd(2, 1, "yes", 800, reason="silence", words=[Word("yes", 480, 720, 0.876543)])
    assert p.eou(silence, timestamps=True)["words"] == [
        {"word": "yes", "start_ms": 480, "end_ms": 720, "confidence": 0.8765}]
    assert p.eou(silence)["reason"] == "silence" and "words" not in p.eou(silence)
    assert p.error(p.SERVER_FULL, "full", fatal=True) == {
        "type": "error", "code": "server_full", "message": "full", "fatal": True}
    assert p.error_from(p.ProtocolError(p.BAD_JSON, "x")) == p.error(p.BAD_JSON, "x", False)
    assert p.pong() == {"type": "pong"}
    assert p.status(4, max_num_streams=8) == {"type": "status", "connected_streams": 4, "max_num_streams": 8}


def test_config_message():
    assert p.parse_text('{"type":"config","timestamps":true}') == p.Config(timestamps=True)
    assert p.parse_text('{"type":"config"}') == p.Config()
    for bad in ('{"type":"config","timestamps":2}', '{"type":"config","timestamp":true}'):
        assert code_of(bad) == p.BAD_CONFIG
    assert p.parse_flag("timestamps", "1") is True and p.parse_flag("timestamps", "false") is False
    assert p.parse_text('{"type":"config","endpoint_silence_ms":300}') == p.Config(endpoint_silence_ms=300)
    for bad in (-1, 60_001, 1.5, True, "300ms"):
        assert code_of(json.dumps({"type": "config", "endpoint_silence_ms": bad})) == p.BAD_CONFIG
    assert p.parse_silence_ms("0") == 0


def test_dumps_is_one_line():
    line = p.dumps(p.result(Result(0, "a\nb", [1], [0.5], [0], 80, 0)))
    assert "\n" not in line and json.loads(line)["text"] == "a\nb"
