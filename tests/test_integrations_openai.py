"""OpenAI Realtime transcription (`/v1/realtime?intent=transcription`) on a real server (tiny
random-weight model): over a plain WebSocket, and with the real `openai` package's
`client.realtime.connect(..., extra_query={"intent": "transcription"})` at `websocket_base_url`."""
from __future__ import annotations

import asyncio
import base64
import json

import numpy as np
import pytest
from integration_helpers import (RATE_24K, native_text, pcm16, same_words, two_utterances,  # noqa: F401
                                 two_utterances_24k)
from server_helpers import engine_factory, running_server, settle  # noqa: F401
from websockets.asyncio.client import connect

TIMEOUT = 30
SERVER_VAD = {"type": "transcription", "audio": {"input": {
    "format": {"type": "audio/pcm", "rate": 24000}, "transcription": {"model": "parakeet"},
    "turn_detection": {"type": "server_vad", "silence_duration_ms": 500}}}, "include": [
    "item.input_audio_transcription.logprobs"]}


def appends(samples: np.ndarray, n: int = 4800) -> list[str]:
    """100 ms `input_audio_buffer.append` events."""
    data = pcm16(samples)
    return [json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(data[i:i + 2 * n]).decode()})
            for i in range(0, len(data), 2 * n)]


async def session(app, events: list[str], query: str = "intent=transcription") -> list[dict]:
    """Send `events`, then a commit, and read until the answer to that commit is completed."""
    url = f"ws://127.0.0.1:{app.ports['ws']}/v1/realtime?{query}"
    async with connect(url, max_size=None) as ws:
        first = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        for event in events:
            await ws.send(event)
        await ws.send(json.dumps({"type": "input_audio_buffer.commit", "event_id": "last"}))
        got = [first]
        commits = 1 + sum('"input_audio_buffer.commit"' in e for e in events)
        answered: list[str] = []  # items closed by a client commit (not by the server's VAD)
        while True:
            event = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
            got.append(event)
            if event["type"] == "error" and event["error"].get("event_id") == "last":
                return got
            if event["type"] == "input_audio_buffer.committed" and not any(
                    e["type"] == "input_audio_buffer.speech_stopped" and e["item_id"] == event["item_id"] for e in got):
                answered.append(event["item_id"])
            if event["type"].endswith("transcription.completed") and len(answered) == commits \
                    and event["item_id"] == answered[-1]:
                return got  # the item our last commit closed: everything before it is in


def completed(events: list[dict]) -> list[dict]:
    return [e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed"]


def text_of(events: list[dict]) -> str:
    return " ".join(e["transcript"] for e in completed(events) if e["transcript"])


async def test_two_turns_with_server_vad_equal_the_native_transcript(engine_factory, two_utterances_24k):
    engine, model = engine_factory(4)
    async with running_server(engine, model) as app:
        expected = await native_text(app, two_utterances_24k, RATE_24K)
        events = await session(app, [json.dumps({"type": "session.update", "session": SERVER_VAD}),
                                     *appends(two_utterances_24k)])
        assert events[0]["type"] == "session.created" and events[1]["type"] == "session.updated"
        assert events[1]["session"]["include"] == ["item.input_audio_transcription.logprobs"]
        assert not [e for e in events if e["type"] == "error"]
        assert same_words(text_of(events), expected) and expected
        turns = [e for e in completed(events) if e["transcript"]]
        assert len(turns) >= 2  # the pause ended the first turn
        for turn in turns:  # each turn: started, deltas that join to its transcript, stopped, committed
            item = turn["item_id"]
            mine = [e for e in events if e.get("item_id") == item]
            kinds = [e["type"].rsplit(".", 1)[-1] for e in mine]
            assert kinds[0] == "speech_started" and kinds[-3:] == ["speech_stopped", "committed", "completed"]
            assert "".join(e["delta"] for e in mine if e["type"].endswith(".delta")) == turn["transcript"]
            assert turn["logprobs"] and all(p["logprob"] <= 0 for p in turn["logprobs"])
        starts = [e["audio_start_ms"] for e in events if e["type"].endswith("speech_started")]
        stops = [e["audio_end_ms"] for e in events if e["type"].endswith("speech_stopped")]
        assert starts == sorted(starts) and all(a < b for a, b in zip(starts, stops))
        await settle(app)


async def test_manual_commits_without_turn_detection(engine_factory, two_utterances_24k):
    engine, model = engine_factory(4)
    async with running_server(engine, model) as app:
        half = len(two_utterances_24k) // 2
        manual = {"type": "transcription", "audio": {"input": {"turn_detection": None}}}
        events = await session(app, [json.dumps({"type": "session.update", "session": manual}),
                                     *appends(two_utterances_24k[:half]),
                                     json.dumps({"type": "input_audio_buffer.commit"}),
                                     *appends(two_utterances_24k[half:])])
        assert not any(e["type"].startswith("input_audio_buffer.speech") for e in events)
        done = completed(events)
        assert len(done) == 2 and done[0]["transcript"]  # one item per commit
        committed = [e for e in events if e["type"] == "input_audio_buffer.committed"]
        assert committed[1]["previous_item_id"] == committed[0]["item_id"]


async def test_g711_alaw_at_8khz(engine_factory, two_utterances):
    """`audio/pcma`: A-law bytes at 8 kHz, resampled by the server; the same words as pcm16 at 8 kHz."""
    from parakeet_streaming import audio

    engine, model = engine_factory(4)
    async with running_server(engine, model) as app:
        at8k = audio.resample(two_utterances, 16000, 8000)
        ints = np.clip(np.round(at8k * 32768), -32768, 32767).astype(np.int32)
        table = np.round(audio.decode(bytes(range(256)), "alaw") * 32768).astype(np.int32)
        alaw = np.abs(ints[:, None] - table[None, :]).argmin(axis=1).astype(np.uint8).tobytes()  # nearest code
        chunks = [json.dumps({"type": "input_audio_buffer.append",
                              "audio": base64.b64encode(alaw[i:i + 800]).decode()}) for i in range(0, len(alaw), 800)]
        pcma = {"type": "transcription", "audio": {"input": {"format": {"type": "audio/pcma"}, "turn_detection": None}}}
        events = await session(app, [json.dumps({"type": "session.update", "session": pcma}), *chunks])
        assert events[1]["session"]["audio"]["input"]["format"] == {"type": "audio/pcma"}
        assert not [e for e in events if e["type"] == "error"]
        decoded = audio.decode(alaw, "alaw")
        expected = await native_text(app, decoded, 8000)
        assert text_of(events) == expected and expected


async def test_bad_events_get_openai_errors_and_nothing_is_lost(engine_factory, two_utterances_24k):
    engine, model = engine_factory(4)
    async with running_server(engine, model) as app:
        update = json.dumps({"type": "session.update", "session": SERVER_VAD})
        audio = appends(two_utterances_24k)
        bad = ["{not json", json.dumps({"type": "response.create", "event_id": "c7"}),
               json.dumps({"type": "input_audio_buffer.append", "audio": "!!"}),
               json.dumps({"type": "session.update", "session": {"type": "realtime"}})]
        clean, noisy = await asyncio.gather(session(app, [update, *audio]),
                                            session(app, [update, audio[0], *bad, *audio[1:]]))
        errors = [e["error"] for e in noisy if e["type"] == "error"]
        assert [e["code"] for e in errors] == ["invalid_json", "invalid_value", "invalid_value", "invalid_value"]
        assert errors[1]["event_id"] == "c7" and all(e["type"] == "invalid_request_error" for e in errors)
        assert text_of(noisy) == text_of(clean) and text_of(clean)


async def test_a_wrong_intent_is_refused(engine_factory):
    engine, model = engine_factory(2)
    async with running_server(engine, model) as app:
        async with connect(f"ws://127.0.0.1:{app.ports['ws']}/v1/realtime?model=gpt-realtime") as ws:
            event = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
            await ws.wait_closed()
        assert event["type"] == "error" and event["error"]["code"] == "unsupported_intent"
        assert ws.close_code == 1008 and engine.num_active == 0


# --- the openai package ------------------------------------------------------------------------------


@pytest.mark.slow
async def test_openai_realtime_connect(engine_factory, two_utterances_24k):
    openai = pytest.importorskip("openai")
    pytest.importorskip("openai.types.realtime")
    engine, model = engine_factory(4)
    async with running_server(engine, model) as app:
        expected = await native_text(app, two_utterances_24k, RATE_24K)
        client = openai.AsyncOpenAI(api_key="unused", base_url=f"http://127.0.0.1:{app.ports['http']}/v1",
                                    websocket_base_url=f"ws://127.0.0.1:{app.ports['ws']}/v1")
        deltas: dict[str, str] = {}
        done: list = []
        async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
            created = await asyncio.wait_for(conn.recv(), TIMEOUT)
            assert created.type == "session.created"
            await conn.session.update(session={"type": "transcription", "audio": {"input": {
                "format": {"type": "audio/pcm", "rate": 24000}, "transcription": {"model": "parakeet"},
                "turn_detection": {"type": "server_vad", "silence_duration_ms": 500}}}})
            data = pcm16(two_utterances_24k)
            for i in range(0, len(data), 9600):
                await conn.input_audio_buffer.append(audio=base64.b64encode(data[i:i + 9600]).decode())
            await conn.input_audio_buffer.commit()
            stopped: set[str] = set()  # items the server's VAD ended (committed by the server)
            async for event in conn:
                if event.type == "error":
                    pytest.fail(f"server error: {event.error}")
                if event.type == "conversation.item.input_audio_transcription.delta":
                    deltas[event.item_id] = deltas.get(event.item_id, "") + (event.delta or "")
                if event.type == "input_audio_buffer.speech_stopped":
                    stopped.add(event.item_id)
                if event.type == "conversation.item.input_audio_transcription.completed":
                    done.append(event)
                    if event.item_id not in stopped:
                        break  # the item our commit closed: everything before it is in
        texts = [d.transcript for d in done if d.transcript]
        assert len(texts) >= 2 and same_words(" ".join(texts), expected)
        assert all(deltas[d.item_id] == d.transcript for d in done if d.transcript)
        assert all(d.usage.type == "duration" and d.usage.seconds > 0 for d in done if d.transcript)
