"""OpenAI Realtime transcription, sans-I/O: the session configuration, client events, engine events ->
server events (validated against the `openai` package's own types), and the per-connection object."""
from __future__ import annotations

import base64
import json
import math

import numpy as np
import pytest

from parakeet_streaming import audio
from parakeet_streaming.config import ServerConfig
from parakeet_streaming.engine.events import Result, StreamFailed, UtteranceEnd
from parakeet_streaming.server import openai_realtime as rt
from parakeet_streaming.server.context import ModelInfo
from parakeet_streaming.server.wire import OVERSIZED, Audio, Close, Endpointing, Finish, Flush, Request, Send, State

PIPECAT_UPDATE = {"type": "transcription", "audio": {"input": {
    "format": {"type": "audio/pcm", "rate": 24000},
    "transcription": {"model": "gpt-realtime-whisper", "language": "en"}, "turn_detection": None}}}
LIVEKIT_UPDATE = {"type": "transcription", "audio": {"input": {
    "format": {"rate": 24000, "type": "audio/pcm"}, "transcription": {"model": "gpt-4o-transcribe", "language": "en"},
    "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 600,
                       "silence_duration_ms": 350}}}}


def test_the_query_must_ask_for_transcription() -> None:
    assert rt.check_query({"intent": ["transcription"], "model": ["gpt-4o-transcribe"]}) == "gpt-4o-transcribe"
    assert rt.check_query({"intent": ["transcription"]}) is None
    for query in ({}, {"model": ["gpt-realtime"]}, {"intent": ["conversation"]}):
        with pytest.raises(rt.RealtimeError) as info:
            rt.check_query(query)
        assert info.value.fatal and info.value.code == "unsupported_intent"


def test_default_session_is_server_vad_at_24khz() -> None:
    cfg = rt.SessionConfig()
    assert (cfg.format, cfg.decoder, cfg.sample_rate, cfg.silence_ms) == ("audio/pcm", "pcm16", 24000, 500)


def test_pipecat_and_livekit_session_updates() -> None:
    cfg = rt.update_session(rt.SessionConfig(), PIPECAT_UPDATE)
    assert cfg.turn_detection is None and cfg.silence_ms == 0 and cfg.model == "gpt-realtime-whisper"
    cfg = rt.update_session(cfg, LIVEKIT_UPDATE)
    assert cfg.turn_detection == rt.ServerVad(0.5, 600, 350) and cfg.silence_ms == 350
    assert cfg.language == "en" and cfg.model == "gpt-4o-transcribe"


def test_fields_absent_from_an_update_are_kept() -> None:
    cfg = rt.update_session(rt.SessionConfig(), LIVEKIT_UPDATE)
    cfg = rt.update_session(cfg, {"type": "transcription", "include": [rt.LOGPROBS],
                                  "audio": {"input": {"format": {"type": "audio/pcmu"},
                                                      "turn_detection": {"silence_duration_ms": 800}}}})
    assert cfg.logprobs and (cfg.decoder, cfg.sample_rate) == ("mulaw", 8000)
    assert cfg.turn_detection == rt.ServerVad(0.5, 600, 800) and cfg.model == "gpt-4o-transcribe"
    cfg = rt.update_session(cfg, {"type": "transcription", "audio": {"input": {"format": {"type": "audio/pcma"}}}})
    assert (cfg.decoder, cfg.sample_rate) == ("alaw", 8000)
    semantic = rt.update_session(cfg, {"type": "transcription",
                                       "audio": {"input": {"turn_detection": {"type": "semantic_vad"}}}})
    assert semantic.turn_detection.type == "semantic_vad" and semantic.silence_ms == 800


@pytest.mark.parametrize("session, code, param", [
    ({"type": "realtime"}, "invalid_value", "session.type"),
    ({"audio": {}}, "invalid_value", "session.type"),
    ("nope", "invalid_type", "session"),
    ({"type": "transcription", "voice": "x"}, "unknown_parameter", "session.voice"),
    ({"type": "transcription", "audio": {"input": {"format": {"type": "audio/opus"}}}}, "invalid_value",
     "session.audio.input.format.type"),
    ({"type": "transcription", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}},
     "invalid_value", "session.audio.input.format.rate"),
    ({"type": "transcription", "audio": {"input": {"turn_detection": {"type": "push"}}}}, "invalid_value",
     "session.audio.input.turn_detection.type"),
    ({"type": "transcription", "audio": {"input": {"turn_detection": {"threshold": 2}}}}, "invalid_value",
     "session.audio.input.turn_detection.threshold"),
    ({"type": "transcription", "audio": {"input": {"turn_detection": {"silence_duration_ms": -1}}}},
     "invalid_value", "session.audio.input.turn_detection.silence_duration_ms"),
    ({"type": "transcription", "audio": {"input": {"transcription": {"model": 5}}}}, "invalid_type",
     "session.audio.input.transcription.model"),
    ({"type": "transcription", "include": ["other"]}, "invalid_value", "session.include"),
])
def test_bad_session_updates(session, code: str, param: str) -> None:
    with pytest.raises(rt.RealtimeError) as info:
        rt.update_session(rt.SessionConfig(), session)
    assert (info.value.code, info.value.param, info.value.type) == (code, param, "invalid_request_error")


def test_client_events() -> None:
    assert rt.parse_event('{"type":"input_audio_buffer.commit","event_id":"e1"}') == rt.Commit("e1")
    assert rt.parse_event('{"type":"input_audio_buffer.clear"}') == rt.Clear()
    b64 = base64.b64encode(b"\x01\x00").decode()
    assert rt.parse_event(json.dumps({"type": "input_audio_buffer.append", "audio": b64})) == rt.Append(b"\x01\x00")
    assert rt.parse_event('{"type":"session.update","session":{}}') == rt.SessionUpdate({})


@pytest.mark.parametrize("text, code, param", [
    ("{oops", "invalid_json", None),
    ("[]", "invalid_json", None),
    ('{"event_id":"e9"}', "missing_required_parameter", "type"),
    ('{"type":"response.create","event_id":"e9"}', "invalid_value", "type"),
    ('{"type":"session.update","event_id":"e9"}', "missing_required_parameter", "session"),
    ('{"type":"input_audio_buffer.append","event_id":"e9"}', "missing_required_parameter", "audio"),
    ('{"type":"input_audio_buffer.append","audio":5,"event_id":"e9"}', "invalid_type", "audio"),
    ('{"type":"input_audio_buffer.append","audio":"%%%","event_id":"e9"}', "invalid_value", "audio"),
])
def test_bad_client_events(text: str, code: str, param: str | None) -> None:
    with pytest.raises(rt.RealtimeError) as info:
        rt.parse_event(text)
    assert (info.value.code, info.value.param) == (code, param)
    if "e9" in text:
        assert info.value.event_id == "e9"  # OpenAI passes the client's event id back
    event = rt.error_event(info.value, "event_1")
    assert event["type"] == "error" and event["error"]["code"] == code and event["error"]["message"]


def test_alaw_decoding_matches_g711() -> None:
    """Reference points of ITU-T G.711 A-law (16-bit linear values)."""
    decoded = audio.decode(bytes([0xD5, 0x55, 0xAA, 0x2A, 0x80, 0x00]), "alaw") * 32768
    assert decoded.tolist() == [8, -8, 32256, -32256, 5504, -5504]
    assert "alaw" not in audio.ENCODINGS  # not a native-protocol encoding


# --- engine events -> server events ------------------------------------------------------------


def result(text: str, starts: list[int], audio_ms: int, conf: float = 0.5, flushed: bool = False,
           final: bool = False) -> Result:
    return Result(stream_id=1, text=text, token_ids=[7] * len(starts), confidences=[conf] * len(starts),
                  token_frames=[s // 80 for s in starts], audio_ms=audio_ms, utterance=0, is_final=final,
                  flushed=flushed, token_start_ms=starts)


def end(reason: str, audio_ms: int) -> UtteranceEnd:
    return UtteranceEnd(stream_id=1, utterance=0, text="", audio_ms=audio_ms, reason=reason)


def turns(**config) -> rt.Turns:
    return rt.Turns(rt.Ids("t"), lambda i: f"tok{i}", rt.SessionConfig(**config))


def test_a_server_vad_turn() -> None:
    t = turns()
    out = t.on_result(result("hello", [400], 560))
    assert [e["type"] for e in out] == ["input_audio_buffer.speech_started",
                                        "conversation.item.input_audio_transcription.delta"]
    item = out[0]["item_id"]
    assert out[0]["audio_start_ms"] == 100 and out[1]["delta"] == "hello" and "logprobs" not in out[1]
    out = t.on_result(result("hello world", [640], 800))
    assert [e["delta"] for e in out] == [" world"]
    out = t.on_utterance_end(end("silence", 1400))
    assert [e["type"] for e in out] == ["input_audio_buffer.speech_stopped", "input_audio_buffer.committed",
                                        "conversation.item.input_audio_transcription.completed"]
    assert out[0]["audio_end_ms"] == 1400 and {e["item_id"] for e in out} == {item}
    assert out[1]["previous_item_id"] is None
    assert out[2]["transcript"] == "hello world" and out[2]["usage"] == {"type": "duration", "seconds": 1.4}
    out = t.on_result(result("hello world again", [1600], 1760))
    assert out[1]["item_id"] != item and out[1]["delta"] == "again"
    out = t.on_utterance_end(end("model", 1900))
    assert out[1]["previous_item_id"] == item and out[2]["transcript"] == "again"


def test_without_turn_detection_only_commits_end_items() -> None:
    t = turns(turn_detection=None)
    out = t.on_result(result("one", [100], 300))
    assert [e["type"] for e in out] == ["conversation.item.input_audio_transcription.delta"]  # no VAD events
    assert t.on_utterance_end(end("model", 400)) == []  # <EOU> does not end the turn
    t.on_result(result("one two", [500], 700))
    t.committing()
    out = t.on_result(result("one two", [], 900, flushed=True))
    assert [e["type"] for e in out] == ["input_audio_buffer.committed",
                                        "conversation.item.input_audio_transcription.completed"]
    assert out[1]["transcript"] == "one two"
    assert t.on_utterance_end(end("flush", 900)) == []


def test_clear_drops_the_open_item() -> None:
    t = turns(turn_detection=None)
    t.on_result(result("noise", [100], 300))
    t.clearing()
    assert t.on_result(result("noise", [], 400, flushed=True)) == []
    out = t.on_result(result("noise real", [500], 700))
    assert out[0]["delta"] == "real"
    t.committing()
    assert t.on_result(result("noise real", [], 800, flushed=True))[1]["transcript"] == "real"


def test_logprobs_are_the_log_of_token_confidences() -> None:
    t = turns(logprobs=True)
    out = t.on_result(result("hi", [100, 180], 300, conf=0.25))
    delta = out[-1]
    assert [p["token"] for p in delta["logprobs"]] == ["tok7", "tok7"]
    assert delta["logprobs"][0]["logprob"] == pytest.approx(math.log(0.25))
    assert delta["logprobs"][0]["bytes"] == list(b"tok7")
    completed = t.on_utterance_end(end("silence", 900))[-1]
    assert len(completed["logprobs"]) == 2


def test_a_final_result_commits_what_was_said() -> None:
    t = turns()
    t.on_result(result("bye", [100], 300))
    out = t.on_result(result("bye", [], 500, final=True))
    assert out[-1]["type"] == "conversation.item.input_audio_transcription.completed" and out[-1]["transcript"] == "bye"


def test_events_fit_the_openai_types() -> None:
    types = pytest.importorskip("openai.types.realtime")
    from pydantic import TypeAdapter

    adapter = TypeAdapter(types.RealtimeServerEvent)
    t = turns(logprobs=True)
    events = t.on_result(result("hello", [400], 560)) + t.on_utterance_end(end("silence", 1400))
    events.append(rt.error_event(rt.RealtimeError("invalid_value", "bad", param="type", event_id="c1"), "event_x"))
    cfg = rt.update_session(rt.SessionConfig(model="tiny"), LIVEKIT_UPDATE)
    events.append({"type": "session.created", "event_id": "e", "session": rt.session_object(cfg, "sess_1")})
    events.append({"type": "input_audio_buffer.cleared", "event_id": "e2"})
    for event in events:
        parsed = adapter.validate_python(event)
        assert parsed.type == event["type"] and type(parsed).__name__ != "dict"
    created = adapter.validate_python(events[-2])
    assert created.session.audio.input.turn_detection.silence_duration_ms == 350


# --- the per-connection object ------------------------------------------------------------------

CONFIG = ServerConfig(handshake_timeout=10, idle_timeout=30, max_message_bytes=1 << 20)
MODEL = ModelInfo("tiny", 16000, 160)


def opened(path: str = "/v1/realtime?intent=transcription") -> rt.RealtimeStream:
    s = rt.RealtimeStream(Request(path, {}, "test"), CONFIG, MODEL)
    s.open(3, now=0.0)
    return s


def sent(outputs: list) -> list[dict]:
    return [json.loads(o.data) for o in outputs if isinstance(o, Send)]


def append(seconds: float, rate: int = 24000) -> str:
    pcm = (np.sin(np.arange(int(seconds * rate)) / 9) * 8000).astype("<i2").tobytes()
    return json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()})


def test_greeting_and_session_update() -> None:
    s = opened("/v1/realtime?intent=transcription&model=gpt-4o-transcribe")
    out = s.outputs()
    created = sent(out)[0]
    assert created["type"] == "session.created" and created["session"]["audio"]["input"]["transcription"]["model"] == \
        "gpt-4o-transcribe"
    assert Endpointing(500) in out and s.state is State.WAITING
    s.receive(json.dumps({"type": "session.update", "session": PIPECAT_UPDATE}), now=1.0)
    out = s.outputs()
    assert Endpointing(0) in out and sent(out)[0]["type"] == "session.updated"
    assert sent(out)[0]["session"]["audio"]["input"]["turn_detection"] is None


def test_wrong_intent_is_an_error_and_a_close() -> None:
    out = opened("/v1/realtime?model=gpt-realtime").outputs()
    assert sent(out)[0]["error"]["code"] == "unsupported_intent" and out[-1] == Close(1008, out[-1].reason)


def test_audio_is_resampled_and_commit_flushes() -> None:
    s = opened()
    s.outputs()
    s.receive(append(0.05), now=1.0)
    s.receive('{"type":"input_audio_buffer.commit","event_id":"c1"}', now=1.1)
    first = s.outputs()
    errors = sent(first)
    assert errors[0]["error"]["code"] == "input_audio_buffer_commit_empty" and errors[0]["error"]["event_id"] == "c1"
    s.receive(append(0.5), now=1.2)
    s.receive('{"type":"input_audio_buffer.commit"}', now=1.3)
    out = s.outputs()
    samples = sum(len(o.samples) for o in first + out if isinstance(o, Audio))
    assert abs(samples - 0.55 * 16000) < 200 and isinstance(out[-1], Flush) and s.state is State.STREAMING
    s.engine_event(result("hi", [100], 500))
    s.engine_event(result("hi", [], 550, flushed=True))
    assert [e["type"] for e in sent(s.outputs())][-2:] == ["input_audio_buffer.committed",
                                                         "conversation.item.input_audio_transcription.completed"]


def test_bad_events_are_errors_and_the_session_goes_on() -> None:
    s = opened()
    s.outputs()
    for message in ("{bad", b"\x00\x01", OVERSIZED, '{"type":"session.update","session":{"type":"realtime"}}'):
        s.receive(message, now=1.0)
    codes = [e["error"]["code"] for e in sent(s.outputs())]
    assert codes == ["invalid_json", "invalid_value", "message_too_large", "invalid_value"]
    s.receive(append(0.2), now=2.0)
    assert any(isinstance(o, Audio) for o in s.outputs()) and s.state is State.STREAMING


def test_odd_bytes_wait_for_the_next_append() -> None:
    s = opened()
    s.receive(json.dumps({"type": "session.update", "session": {
        "type": "transcription", "audio": {"input": {"format": {"type": "audio/pcm"}}}}}), now=0.5)
    pcm = (np.ones(4801) * 1000).astype("<i2").tobytes()
    for part in (pcm[:4801], pcm[4801:]):
        s.receive(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(part).decode()}), 1.0)
    s.receive('{"type":"input_audio_buffer.commit"}', now=1.1)
    audio_out = sum(len(o.samples) for o in s.outputs() if isinstance(o, Audio))
    assert abs(audio_out - 4801 * 16000 / 24000) < 5


def test_stop_and_timeouts_finish_the_stream() -> None:
    s = opened()
    assert s.deadline() == 10.0  # no audio yet: the handshake timeout
    s.receive(append(0.2), now=1.0)
    assert s.deadline() == 31.0
    s.outputs()
    s.timeout(31.0)
    out = s.outputs()
    assert sent(out)[0]["error"]["code"] == "idle_timeout"
    assert isinstance(out[-1], Finish) or (isinstance(out[-1], Audio) and out[-1].final)  # the resampler's tail
    assert s.state is State.FINISHING and s.deadline() is None
    s.engine_event(result("x", [100], 300, final=True))
    out = s.outputs()
    assert sent(out)[-1]["type"] == "conversation.item.input_audio_transcription.completed"
    assert out[-1] == Close(1008, "no message for 30 s")


def test_waiting_timeout_closes_without_a_stream() -> None:
    s = opened()
    s.outputs()
    s.timeout(10.0)
    out = s.outputs()
    assert sent(out)[0]["error"]["code"] == "handshake_timeout" and isinstance(out[-1], Close)
    assert not any(isinstance(o, (Audio, Finish, Flush)) for o in out)


def test_engine_failure_and_refusal() -> None:
    s = opened()
    s.receive(append(0.2), now=1.0)
    s.outputs()
    s.engine_event(StreamFailed(1, "server_full", "no free stream slot"))
    out = s.outputs()
    assert sent(out)[0]["error"]["type"] == "server_error" and out[-1].code == 1013
    r = rt.RealtimeStream(Request("/v1/realtime?intent=transcription"), CONFIG, MODEL)
    r.refuse("unauthorized", "missing or wrong API key")
    out = r.outputs()
    assert sent(out)[0]["error"]["code"] == "invalid_api_key" and out[-1].code == 1008
