"""Key terms through every wire protocol and the server's default list, over real sockets with the
NeMo-saved small model behind the real engine: Deepgram's `keyterm` / `keywords` and OpenAI
Realtime's `keywords` give the native protocol's transcript for the same list (which
tests/test_boosting_server.py holds to NeMo's tokens), and a `--keyterms-file` list applies to every
stream and is extended by a stream's own."""
from __future__ import annotations

import asyncio
import base64
import itertools
import json
from urllib.parse import urlencode

import numpy as np
import pytest
from integration_helpers import pcm16, same_words
from keyterm_helpers import skip_without_case
from server_helpers import TIMEOUT, WsClient, finals, running_server, tokens_of
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from parakeet_streaming import audio
from parakeet_streaming.engine.engine import Engine
from parakeet_streaming.model.boosting import KeytermError

skip_without_case()


def run(model, main, slots: int = 4, **engine_args) -> None:
    engine = Engine(model, slots, **engine_args)
    engine.start()
    try:
        asyncio.run(main(engine))
    finally:
        engine.shutdown()


async def native(app, samples: np.ndarray, keyterms: list | None = None, rate: int = 16000) -> list[dict]:
    client = await WsClient.open(app, f"/?sample_rate={rate}")
    assert (await client.recv())["type"] == "hello"
    if keyterms is not None:
        await client.send({"type": "config", "keyterms": keyterms})
    for i in range(0, len(samples), 4096):
        await client.send(pcm16(samples[i:i + 4096]))
    await client.send({"type": "close"})
    return await client.collect()


def native_text(msgs: list[dict]) -> str:
    assert not [m for m in msgs if m["type"] == "error"], msgs
    return finals(msgs)[-1]["text"]


async def deepgram(app, samples: np.ndarray, params: list[tuple[str, str]] = ()) -> list[dict]:
    query = urlencode([("encoding", "linear16"), ("sample_rate", "16000"), *params])
    async with connect(f"ws://127.0.0.1:{app.ports['ws']}/v1/listen?{query}", max_size=None) as ws:
        for i in range(0, len(samples), 4096):
            await ws.send(pcm16(samples[i:i + 4096]))
        await ws.send(json.dumps({"type": "CloseStream"}))
        return [json.loads(m) async for m in ws]


def deepgram_text(msgs: list[dict]) -> str:
    assert not [m for m in msgs if m["type"] == "Error"], msgs
    assert msgs[-1]["type"] == "Metadata"
    return " ".join(t for m in msgs if m["type"] == "Results" and m["is_final"]
                    if (t := m["channel"]["alternatives"][0]["transcript"]))


def test_deepgram_keyterm_and_keywords_boost_as_the_native_protocol_does(keyterm_case) -> None:
    doc, ref, model = keyterm_case
    samples, terms = ref["samples"], doc["streams"][1]["keyterms"]  # NeMo's default scores
    weighted = [*terms[:2], {"text": terms[2], "weight": 4.0}]

    async def main(engine) -> None:
        async with running_server(engine, model) as app:
            boosted, plain, dg_plain, dg_keyterm = await asyncio.gather(
                native(app, samples, terms), native(app, samples), deepgram(app, samples),
                deepgram(app, samples, [("keyterm", t) for t in terms]))
            assert tokens_of(boosted) == doc["streams"][1]["offline_tokens"]  # = NeMo's
            assert same_words(deepgram_text(dg_plain), native_text(plain))
            assert same_words(deepgram_text(dg_keyterm), native_text(boosted))
            assert not same_words(deepgram_text(dg_keyterm), deepgram_text(dg_plain))
            # keywords=word:intensifier: the intensifier is the phrase's weight.
            heavy, dg_heavy, dg_keywords = await asyncio.gather(
                native(app, samples, weighted),
                deepgram(app, samples, [*[("keywords", t) for t in terms[:2]], ("keywords", f"{terms[2]}:4")]),
                deepgram(app, samples, [("keywords", t) for t in terms]))
            assert same_words(deepgram_text(dg_heavy), native_text(heavy))
            assert same_words(deepgram_text(dg_keywords), native_text(boosted))
            assert not same_words(native_text(heavy), native_text(boosted))

    run(model, main)


def test_deepgram_refuses_an_unusable_list_before_the_upgrade(keyterm_case) -> None:
    _, ref, model = keyterm_case
    samples = ref["samples"][:32000]

    async def refused(app, params: list[tuple[str, str]]) -> str:
        query = urlencode([("encoding", "linear16"), ("sample_rate", "16000"), *params])
        with pytest.raises(InvalidStatus) as info:
            async with connect(f"ws://127.0.0.1:{app.ports['ws']}/v1/listen?{query}", open_timeout=TIMEOUT):
                pass
        response = info.value.response
        assert response.status_code == 400 and response.headers["dg-error"]
        body = json.loads(response.body)
        assert body["err_code"] == "Bad Request" and body["err_msg"] == response.headers["dg-error"]
        return body["err_msg"]

    async def main(engine) -> None:
        async with running_server(engine, model) as app:
            other = asyncio.create_task(deepgram(app, samples))
            assert "cannot be spelled" in await refused(app, [("keyterm", "good"), ("keyterm", "NVIDIA")])
            assert "(0, 100]" in await refused(app, [("keywords", "um:-5")])
            assert "must be a number" in await refused(app, [("keywords", "um:lots")])
            assert deepgram_text(await other) == deepgram_text(await deepgram(app, samples))

    run(model, main)


def realtime_events(samples_24k: np.ndarray, keywords: list[str] | None) -> list[str]:
    transcription: dict = {"model": "parakeet"}
    if keywords is not None:
        transcription["keywords"] = keywords
    update = {"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
        "format": {"type": "audio/pcm", "rate": 24000}, "transcription": transcription, "turn_detection": None}}}}
    data = pcm16(samples_24k)
    appends = [{"type": "input_audio_buffer.append", "audio": base64.b64encode(data[i:i + 9600]).decode()}
               for i in range(0, len(data), 9600)]
    return [json.dumps(e) for e in [update, *appends, {"type": "input_audio_buffer.commit"}]]


async def realtime(app, events: list[str]) -> list[dict]:
    """The events, then read until the commit's item is completed (or an error follows the commit)."""
    async with connect(f"ws://127.0.0.1:{app.ports['ws']}/v1/realtime?intent=transcription", max_size=None) as ws:
        got = [json.loads(await ws.recv())]
        for event in events:
            await ws.send(event)
        while not got[-1]["type"].endswith("transcription.completed"):
            got.append(json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)))
        return got


def test_openai_realtime_keywords_are_key_terms(keyterm_case) -> None:
    doc, ref, model = keyterm_case
    terms = doc["streams"][3]["keyterms"]  # 40 phrases: they change the transcript of the resampled audio too
    at24k = audio.resample(ref["samples"], 16000, 24000)

    async def main(engine) -> None:
        async with running_server(engine, model) as app:
            boosted, plain, rt_plain, rt_boosted, rt_bad = await asyncio.gather(
                native(app, at24k, terms, rate=24000), native(app, at24k, rate=24000),
                realtime(app, realtime_events(at24k, None)), realtime(app, realtime_events(at24k, terms)),
                realtime(app, realtime_events(at24k, ["good", "NVIDIA"])))
            updated = next(e for e in rt_boosted if e["type"] == "session.updated")
            assert updated["session"]["audio"]["input"]["transcription"]["keywords"] == terms
            assert not [e for e in rt_plain + rt_boosted if e["type"] == "error"]
            assert rt_plain[-1]["transcript"] == native_text(plain)
            assert rt_boosted[-1]["transcript"] == native_text(boosted) != native_text(plain)
            # A list the model cannot spell: an error in OpenAI's shape; the session goes on without it.
            errors = [e["error"] for e in rt_bad if e["type"] == "error"]
            assert [(e["code"], e["param"]) for e in errors] == [
                ("invalid_value", "session.audio.input.transcription.keywords")]
            assert "cannot be spelled" in errors[0]["message"]
            assert rt_bad[-1]["transcript"] == native_text(plain)

    run(model, main, slots=5)


def test_the_server_list_applies_to_every_stream_and_a_streams_own_extends_it(keyterm_case) -> None:
    doc, ref, model = keyterm_case
    samples, default, own = ref["samples"], doc["streams"][1]["keyterms"], doc["streams"][3]["keyterms"][:12]
    got: dict[str, list[int]] = {}

    async def with_default(engine) -> None:
        async with running_server(engine, model) as app:
            alone, empty, extended, dg = await asyncio.gather(
                native(app, samples), native(app, samples, []), native(app, samples, own), deepgram(app, samples))
            assert tokens_of(alone) == doc["streams"][1]["offline_tokens"]  # = NeMo's with that list
            assert tokens_of(empty) == tokens_of(alone)  # []: the server's list alone
            assert same_words(deepgram_text(dg), native_text(alone))
            got["extended"] = tokens_of(extended)

    async def without_default(engine) -> None:
        async with running_server(engine, model) as app:
            both, plain = await asyncio.gather(native(app, samples, [*own, *default]), native(app, samples))
            assert got["extended"] == tokens_of(both)
            assert tokens_of(plain) == ref["offline_tokens"].tolist() != got["extended"]

    run(model, with_default, keyterms=default)
    run(model, without_default)


def test_the_server_list_is_checked_against_the_model_and_shares_the_limit(keyterm_case) -> None:
    _, _, model = keyterm_case
    with pytest.raises(KeytermError, match="cannot be spelled"):
        Engine(model, 1, keyterms=["good", "NVIDIA"])
    words = ["".join(p) for p in itertools.product("abcdefghijk", repeat=3)]
    engine = Engine(model, 1, keyterms=words[:990])
    with pytest.raises(KeytermError, match="the server adds 990 of its own; got 11"):
        engine.compile_keyterms(words[990:1001])
    assert engine.compile_keyterms([]) is engine.compile_keyterms(())  # the server's tree, cached

