"""Deepgram live protocol, sans-I/O: query options, client messages, and engine events -> Results /
UtteranceEnd / SpeechStarted / Metadata (checked against deepgram-sdk's own types when installed)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest

from parakeet_streaming.config import ServerConfig
from parakeet_streaming.engine.events import Result, StreamFailed, UtteranceEnd
from parakeet_streaming.engine.words import Word
from parakeet_streaming.server import deepgram as dg
from parakeet_streaming.server.context import ModelInfo
from parakeet_streaming.server.wire import OVERSIZED, Audio, Close, Endpointing, Finish, Flush, Request, Send, State

MODEL = "tiny"


def query(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


def test_defaults_without_parameters() -> None:
    opts = dg.parse_query({})
    assert opts == dg.ListenOptions()
    assert opts.audio_encoding == "pcm16" and opts.sample_rate is None and opts.silence_ms is None


def test_pipecat_query() -> None:
    """What Pipecat's DeepgramSTTService sends (every value a string)."""
    opts = dg.parse_query(query(
        "/v1/listen?detect_entities=false&diarize=false&dictation=false&interim_results=true&numerals=false"
        "&punctuate=true&smart_format=false&model=nova-3-general&language=en&encoding=linear16&channels=1"
        "&multichannel=false&sample_rate=16000"))
    assert (opts.interim_results, opts.punctuate, opts.smart_format) == (True, True, False)
    assert (opts.encoding, opts.sample_rate, opts.model, opts.language) == ("linear16", 16000, "nova-3-general", "en")
    assert opts.endpointing_ms is None


def test_livekit_query() -> None:
    """What livekit-plugins-deepgram sends by default (endpointing=25, lowercase bools, extra params)."""
    opts = dg.parse_query(query(
        "/v1/listen?model=nova-3&punctuate=true&smart_format=false&no_delay=true&interim_results=true"
        "&encoding=linear16&vad_events=true&sample_rate=16000&channels=1&endpointing=25&filler_words=true"
        "&profanity_filter=false&numerals=false&mip_opt_out=false&language=en-US&keyterm=parakeet&keyterm=nvidia"))
    assert opts.endpointing_ms == 25 and opts.silence_ms == 25 and opts.vad_events
    assert opts.keyterms == ("parakeet", "nvidia")


@pytest.mark.parametrize("value, expected", [("false", 0), ("300", 300), ("true", None), ("0", 0)])
def test_endpointing(value: str, expected: int | None) -> None:
    assert dg.parse_query({"endpointing": [value]}).endpointing_ms == expected


def test_utterance_end_ms_sets_the_silence_when_endpointing_is_absent() -> None:
    assert dg.parse_query({"utterance_end_ms": ["1000"]}).silence_ms == 1000
    assert dg.parse_query({"utterance_end_ms": ["1000"], "endpointing": ["200"]}).silence_ms == 200


@pytest.mark.parametrize("params, words", [
    ({"encoding": ["opus"], "sample_rate": ["16000"]}, "Unsupported encoding"),
    ({"encoding": ["flac"], "sample_rate": ["16000"]}, "Unsupported encoding"),
    ({"encoding": ["mulaw"]}, "sample_rate is required"),
    ({"channels": ["2"]}, "channels=2"),
    ({"multichannel": ["true"]}, "multichannel"),
    ({"sample_rate": ["abc"]}, "sample_rate"),
    ({"interim_results": ["yes"]}, "interim_results"),
    ({"endpointing": ["-5"]}, "endpointing"),
    ({"utterance_end_ms": ["0"]}, "utterance_end_ms"),
])
def test_bad_parameters_are_refused_with_http_400(params: dict, words: str) -> None:
    with pytest.raises(dg.ListenRejected) as info:
        dg.parse_query(params)
    assert info.value.status == 400 and words in info.value.err_msg
    body = info.value.body()
    assert body == {"err_code": "Bad Request", "err_msg": info.value.err_msg, "request_id": info.value.request_id}
    status, raw, code, headers = info.value.http()
    assert (status, json.loads(raw), code) == (400, body, "bad_request") and ("dg-error", info.value.err_msg) in headers


def test_the_docs_list_the_parameters_the_code_knows() -> None:
    """docs/integrations/deepgram.md: one row per effective parameter, the ignored ones in one row."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "integrations" / "deepgram.md").read_text()
    rows = [line for line in doc.splitlines() if line.startswith("| `")]
    named = {p for row in rows for p in re.findall(r"`([a-z_0-9]+)`", row.split("|")[1])}
    ignored_row = next(line for line in doc.splitlines() if line.startswith("| all other Deepgram parameters"))
    ignored = set(re.findall(r"`([a-z_0-9]+)`", ignored_row.split("|")[2]))
    assert named >= set(dg.EFFECTIVE)
    assert ignored == set(dg.IGNORED) - {"token"}  # ?token= is the API key (documented above the table)


def test_mulaw_and_alaw_map_to_the_audio_decoders() -> None:
    assert dg.parse_query({"encoding": ["mulaw"], "sample_rate": ["8000"]}).audio_encoding == "mulaw"
    assert dg.parse_query({"encoding": ["alaw"], "sample_rate": ["8000"]}).audio_encoding == "alaw"


def test_api_key_token_bearer_or_query() -> None:
    assert dg.api_key({"Authorization": "Token abc"}, {}) == "abc"
    assert dg.api_key({"Authorization": "Bearer abc"}, {}) == "abc"
    assert dg.api_key({}, {"token": ["q"]}) == "q"
    assert dg.api_key({"Authorization": "Basic zzz"}, {}) is None


def test_client_messages() -> None:
    assert dg.parse_text('{"type":"KeepAlive"}') == dg.KeepAlive()
    assert dg.parse_text(b'{"type":"Finalize"}') == dg.Finalize()
    assert dg.parse_text('{"type":"CloseStream"}') == dg.CloseStream()
    assert isinstance(dg.parse_text('{"type":"Configure","keyterms":["a"]}'), dg.Configure)
    assert dg.parse_binary(b"\x01\x02") == dg.Media(b"\x01\x02")
    assert dg.parse_binary(b"") == dg.CloseStream()  # Deepgram's legacy close


@pytest.mark.parametrize("text", ["not json", "[1,2]", '{"type":"Hello"}', "{}"])
def test_bad_text_is_a_schema_error(text: str) -> None:
    with pytest.raises(dg.SchemaError) as info:
        dg.parse_text(text)
    msg = dg.schema_error(info.value)
    assert msg["type"] == "Error" and msg["variant"] == "SchemaError" and msg["message"] == text


def test_word_form_strips_punctuation_and_case() -> None:
    assert dg.word_form("Hello,") == "hello" and dg.word_form("don't") == "don't" and dg.word_form("...") == ""


# --- engine events -> messages -------------------------------------------------------------------


def result(text: str, starts: list[int], words: list[Word] = (), audio_ms: int = 0, utterance: int = 0,
           final: bool = False, flushed: bool = False) -> Result:
    return Result(stream_id=1, text=text, token_ids=list(range(len(starts))), confidences=[0.9] * len(starts),
                  token_frames=[s // 80 for s in starts], audio_ms=audio_ms, utterance=utterance, is_final=final,
                  flushed=flushed, token_start_ms=starts, words=list(words))


def end(reason: str = "model", audio_ms: int = 0, words: list[Word] = (), utterance: int = 0) -> UtteranceEnd:
    return UtteranceEnd(stream_id=1, utterance=utterance, text="", audio_ms=audio_ms, reason=reason, words=list(words))


def transcript(**options) -> dg.Transcript:
    return dg.Transcript(dg.ListenOptions(**{"punctuate": True, **options}), MODEL, "req-1")


HELLO = Word("hello", 80, 400, 0.8)
WORLD = Word("World.", 480, 800, 0.6)


def test_interim_then_speech_final_at_the_model_end() -> None:
    t = transcript(interim_results=True)
    first = t.on_result(result("hel", [80], audio_ms=320))
    assert [m["is_final"] for m in first] == [False]
    alt = first[0]["channel"]["alternatives"][0]
    assert alt["transcript"] == "hel" and [w["word"] for w in alt["words"]] == ["hel"]  # the growing word
    second = t.on_result(result("hello wor", [240, 480], words=[HELLO], audio_ms=640))
    alt = second[0]["channel"]["alternatives"][0]
    assert alt["transcript"] == "hello wor" and [w["word"] for w in alt["words"]] == ["hello", "wor"]
    assert t.on_result(result("hello wor", [640], words=[], audio_ms=720)) == []  # <EOU> only: no new text
    final = t.on_utterance_end(end("model", 800, words=[WORLD]))
    assert len(final) == 1 and final[0]["is_final"] and final[0]["speech_final"]
    alt = final[0]["channel"]["alternatives"][0]
    assert alt["transcript"] == "hello wor"  # the stream text as the latest Result gave it
    assert [(w["word"], w["punctuated_word"], w["start"], w["end"]) for w in alt["words"]] == [
        ("hello", "hello", 0.08, 0.4), ("world", "World.", 0.48, 0.8)]
    assert alt["confidence"] == pytest.approx(0.7)
    assert (final[0]["start"], final[0]["duration"]) == (0.0, 0.8)


def test_segments_tile_the_audio_and_finals_join_to_the_stream_text() -> None:
    t = transcript()
    msgs = t.on_result(result("hello", [80], audio_ms=400))
    assert msgs == []  # interim_results off: finals only
    msgs += t.on_utterance_end(end("silence", 900, words=[HELLO]))
    msgs += t.on_result(result("hello again", [1000], audio_ms=1200, utterance=1))
    msgs += t.on_result(result("hello again", [], audio_ms=1500, utterance=1, final=True,
                               words=[Word("again", 1000, 1300, 0.9)]))
    finals = [m for m in msgs if m["is_final"]]
    assert [m["channel"]["alternatives"][0]["transcript"] for m in finals] == ["hello", "again"]
    assert [m["speech_final"] for m in finals] == [True, False]
    assert [(m["start"], m["duration"]) for m in finals] == [(0.0, 0.9), (0.9, 0.6)]
    assert " ".join(m["channel"]["alternatives"][0]["transcript"] for m in finals) == "hello again"


def test_finalize_is_answered_from_finalize_even_when_empty() -> None:
    t = transcript()
    t.finalize_requested()
    msgs = t.on_result(result("", [], audio_ms=500, flushed=True))
    assert len(msgs) == 1 and msgs[0]["from_finalize"] and msgs[0]["is_final"] and not msgs[0]["speech_final"]
    t.finalize_requested()
    t.on_result(result("hi", [600], audio_ms=700))
    msgs = t.on_result(result("hi", [], audio_ms=900, flushed=True, words=[Word("hi", 600, 680, 0.9)]))
    assert msgs[0]["channel"]["alternatives"][0]["transcript"] == "hi" and msgs[0]["from_finalize"]
    assert t.on_utterance_end(end("flush", 900)) == []  # the flushed Result already answered


def test_utterance_end_and_speech_started() -> None:
    t = transcript(utterance_end_ms=1000, vad_events=True, interim_results=True)
    msgs = t.on_result(result("hello", [160], audio_ms=480))
    assert msgs[0] == {"type": "SpeechStarted", "channel": [0, 1], "timestamp": 0.16}
    assert t.on_result(result("hello you", [480], audio_ms=640))[0]["type"] == "Results"  # once per utterance
    msgs = t.on_utterance_end(end("silence", 1600, words=[HELLO]))
    assert [m["type"] for m in msgs] == ["Results", "UtteranceEnd"]
    assert msgs[1] == {"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 0.4}
    assert t.on_result(result("hello you there", [1700], audio_ms=1900, utterance=1))[0]["type"] == "SpeechStarted"


def test_unformatted_transcripts_use_the_plain_word_forms() -> None:
    t = transcript(punctuate=False)
    msgs = t.on_result(result("Hello, World.", [80], audio_ms=900, final=True, words=[Word("Hello,", 80, 400, 0.9),
                                                                                      WORLD]))
    alt = msgs[0]["channel"]["alternatives"][0]
    assert alt["transcript"] == "hello world" and all("punctuated_word" not in w for w in alt["words"])


def test_metadata_and_digest() -> None:
    digest = dg.AudioDigest(sample_rate=8000, bytes_per_sample=1)
    digest.update(b"\x00" * 4000)
    msg = dg.metadata(request_id="r", sha256=digest.sha256, created=dg.now_iso(), duration_s=digest.duration_s,
                      model=MODEL)
    assert msg["duration"] == 0.5 and msg["channels"] == 1 and len(msg["sha256"]) == 64 and msg["created"].endswith("Z")


def test_messages_fit_the_deepgram_sdk_types() -> None:
    types = pytest.importorskip("deepgram.listen.v1.types")
    t = transcript(interim_results=True, utterance_end_ms=500, vad_events=True)
    msgs = t.on_result(result("hello", [80], audio_ms=400)) + t.on_utterance_end(end("model", 500, words=[HELLO]))
    msgs.append(dg.metadata(request_id="r", sha256="0" * 64, created=dg.now_iso(), duration_s=1.0, model=MODEL))
    msgs.append(dg.schema_error(dg.SchemaError("bad", "x")))
    model_of = {"Results": types.ListenV1Results, "UtteranceEnd": types.ListenV1UtteranceEnd,
                "SpeechStarted": types.ListenV1SpeechStarted, "Metadata": types.ListenV1Metadata,
                "Error": types.ListenV1Error}
    assert {m["type"] for m in msgs} == set(model_of)
    for msg in msgs:
        parsed = model_of[msg["type"]].model_validate(msg)  # required fields present, types right
        assert parsed.type == msg["type"]


# --- the per-connection object ------------------------------------------------------------------

CONFIG = ServerConfig(handshake_timeout=10, idle_timeout=30, max_message_bytes=1 << 20, sample_rate=16000)
SERVED = ModelInfo("tiny", 16000, 160)


def stream(path: str = "/v1/listen?encoding=linear16&sample_rate=16000&interim_results=true") -> dg.DeepgramStream:
    s = dg.DeepgramStream(Request(path, {}, "test"), CONFIG, SERVED)
    s.open(5, now=0.0)
    return s


def sent(outputs: list) -> list[dict]:
    return [json.loads(o.data) for o in outputs if isinstance(o, Send)]


def pcm(seconds: float, rate: int = 16000) -> bytes:
    return (np.sin(np.arange(int(seconds * rate)) / 7) * 9000).astype("<i2").tobytes()


def test_no_greeting_and_endpointing_from_the_query() -> None:
    assert stream().outputs() == []
    assert stream("/v1/listen?endpointing=300").outputs() == [Endpointing(300)]
    assert stream("/v1/listen?endpointing=false").outputs() == [Endpointing(0)]


def test_a_bad_query_is_an_error_and_a_policy_close() -> None:
    s = stream("/v1/listen?encoding=opus&sample_rate=48000")
    out = s.outputs()
    assert sent(out)[0]["type"] == "Error" and "Unsupported encoding" in sent(out)[0]["description"]
    assert out[-1].code == 1008 and s.state is State.CLOSED


def test_binary_audio_keeps_split_samples() -> None:
    s = stream()
    data = pcm(0.1)
    s.receive(data[:1001], now=1.0)
    s.receive(data[1001:], now=1.1)
    out = s.outputs()
    assert sum(len(o.samples) for o in out if isinstance(o, Audio)) == len(data) // 2
    assert s.state is State.STREAMING


def test_mulaw_at_8khz_is_resampled() -> None:
    s = stream("/v1/listen?encoding=mulaw&sample_rate=8000")
    s.receive(b"\xff\x7f" * 4000, now=1.0)  # 1 s
    s.receive('{"type":"CloseStream"}', now=1.1)
    out = s.outputs()
    assert abs(sum(len(o.samples) for o in out if isinstance(o, Audio)) - 16000) < 50
    assert s.state is State.FINISHING


def test_control_messages() -> None:
    s = stream()
    s.receive(pcm(0.2), now=1.0)
    s.receive('{"type":"KeepAlive"}', now=1.5)
    assert s.deadline() == 31.5
    s.receive('{"type":"Finalize"}', now=1.6)
    out = s.outputs()
    assert isinstance(out[-1], Flush)
    s.engine_event(result("hi", [80], words=[Word("hi", 80, 160, 0.9)], audio_ms=200, flushed=True))
    assert sent(s.outputs())[0]["from_finalize"] is True
    s.receive('{"type":"Configure","keyterms":["x"]}', now=1.7)
    s.receive("not json", now=1.8)
    assert [m["type"] for m in sent(s.outputs())] == ["ConfigureFailure", "Error"]
    s.receive(b"", now=2.0)  # legacy close
    assert isinstance(s.outputs()[-1], Finish) and s.state is State.FINISHING
    s.receive(pcm(0.1), now=2.1)  # after CloseStream: ignored
    assert s.outputs() == []
    s.engine_event(result("hi", [], audio_ms=200, final=True))
    out = s.outputs()
    assert [m["type"] for m in sent(out)] == ["Metadata"] and out[-1] == Close(1000, "")
    meta = sent(out)[0]
    assert meta["duration"] == 0.2 and meta["request_id"] == s.request_id


def test_fatal_errors_finish_then_close_with_a_code() -> None:
    s = stream()
    s.receive(pcm(0.2), now=1.0)
    s.outputs()
    s.receive(OVERSIZED, now=1.1)
    out = s.outputs()
    assert sent(out)[0]["variant"] == "message_too_large" and s.state is State.FINISHING
    s.engine_event(result("", [], audio_ms=200, final=True))
    assert s.outputs()[-1].code == 1009
    t = stream()
    t.receive(pcm(0.2), now=1.0)
    t.timeout(31.0)
    assert "NET-0001" in sent(t.outputs())[0]["description"]
    t.engine_event(result("", [], audio_ms=200, final=True))
    assert t.outputs()[-1].code == 1011
    w = stream()
    w.timeout(10.0)  # no audio yet: closed at once, no stream
    out = w.outputs()
    assert sent(out)[0]["variant"] == "handshake_timeout" and isinstance(out[-1], Close)


def test_engine_failure_and_refusal() -> None:
    s = stream()
    s.receive(pcm(0.2), now=1.0)
    s.outputs()
    s.engine_event(StreamFailed(5, "server_full", "no free stream slot"))
    out = s.outputs()
    assert sent(out)[0]["variant"] == "server_full" and out[-1].code == 1013
    r = dg.DeepgramStream(Request("/v1/listen"), CONFIG, SERVED)
    r.refuse("unauthorized", "missing or wrong API key")
    assert r.outputs()[-1].code == 1008
