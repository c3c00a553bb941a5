"""Silence endpointing: our Silero VAD against the package's TorchScript model, the endpoint rules on
their own, and both signals end to end on espeak-ng speech with a 1.5 s pause (engine and sockets)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from calibration import calibrate_joint_bias
from conftest import espeak_wav, read_wav, tiny_config
from server_helpers import chunks, running_server, tokens_of, transcribe, transcribe_over

from parakeet_streaming.config import ServerConfig
from parakeet_streaming.endpointing import (DEFAULT_SILENCE_MS_WITHOUT_EOU, EndpointConfig, Endpointer, VadBank,
                                            resolve, silero_weights_dir)
from parakeet_streaming.engine.engine import Engine
from parakeet_streaming.model.asr import ASRModel
from parakeet_streaming.model.tokenizer import Tokenizer
from parakeet_streaming.server.app import build_engine

SILENCE_MS = 500
PAUSE_S = 1.5


@pytest.fixture(scope="module")
def sentences(speech_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    a = read_wav(espeak_wav("turn the lights off please", speech_dir / "ep_a.wav"))
    b = read_wav(espeak_wav("this is a streaming test", speech_dir / "ep_b.wav"))
    return a, b


@pytest.fixture(scope="module")
def paused(sentences) -> np.ndarray:
    """sentence, 1.5 s of silence, sentence."""
    a, b = sentences
    return np.concatenate([a, np.zeros(int(PAUSE_S * 16000), np.float32), b])


def speech_end_ms(x: np.ndarray) -> int:
    """Where the first sentence's sound ends, by plain energy (independent of the VAD)."""
    loud = np.flatnonzero(np.abs(x) > 0.02)
    return int(loud[-1] * 1000 // 16000)


@pytest.fixture(scope="module")
def no_eou_model(paused) -> ASRModel:
    """A tiny random model without <EOU> (like `large`), calibrated on the paused speech."""
    model = ASRModel(tiny_config(), Tokenizer.synthetic(40), name="tiny-no-eou")
    model.randomize(0, std=0.2)
    calibrate_joint_bias(model, paused, emit_rate=0.35)
    assert model.tokenizer.eou_id is None
    return model


def started(model: ASRModel, slots: int, endpoint: EndpointConfig) -> Engine:
    engine = Engine(model, slots, endpoint=endpoint)
    engine.start()
    assert engine.ready.wait(30)
    return engine


# --- the VAD ---------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_silero_matches_the_packaged_torchscript_model(paused) -> None:
    jit = torch.jit.load(str(silero_weights_dir() / "silero_vad.jit"))
    jit.reset_states()
    with torch.no_grad():
        ref = [float(jit(torch.from_numpy(paused[i:i + 512]), 16000)) for i in range(0, len(paused) - 511, 512)]
    bank = VadBank(2, 16000)
    got: list[float] = []
    for part in chunks(paused, 1234):  # odd sizes: frames straddle pushes
        bank.push(1, part)
        got += bank.run([1]).get(1, (0, []))[1]
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert max(ref) > 0.9 and min(ref) < 0.1  # speech and silence both present


def test_vad_bank_batches_streams_independently(paused, sentences) -> None:
    a = sentences[0]
    alone = VadBank(1, 16000)
    alone.push(0, a)
    (_, ref), = alone.run([0]).values()
    bank = VadBank(3, 16000)
    bank.push(0, paused)
    bank.push(2, a)
    out = bank.run([0, 2])
    assert out[2][0] == 0 and np.allclose(out[2][1], ref, atol=1e-4)  # batch size changes rounding only
    assert len(out[0][1]) == len(paused) // 512
    bank.reset(2)  # a new stream in the slot starts from a fresh state and clock
    bank.push(2, a[:600])
    assert bank.run([2])[2] == (0, [pytest.approx(ref[0], abs=1e-4)])


# --- the rules -------------------------------------------------------------------------------


def test_vad_rule_waits_for_silence_after_speech() -> None:
    ep = Endpointer(EndpointConfig(300, "vad"))
    ep.on_vad(0, 32, [0.1] * 20)  # silence only: nothing to end
    assert ep.due(10_000) is None
    ep.on_vad(640, 32, [0.9] * 10 + [0.1] * 5)  # speech until 960, then 160 ms of silence
    assert ep.due(10_000) is None
    ep.on_vad(1120, 32, [0.1] * 5)  # silence reaches 320 ms at 1280
    assert ep.due(1259) is None  # the decoder has not reached the endpoint yet
    assert ep.due(1260) == 1260
    ep.ended(1260)
    assert ep.due(10_000) is None  # one endpoint per pause


def test_vad_hysteresis_keeps_speech_through_a_dip() -> None:
    ep = Endpointer(EndpointConfig(100, "vad", threshold=0.5))
    ep.on_vad(0, 32, [0.9, 0.4, 0.4, 0.4, 0.4, 0.9, 0.2, 0.2, 0.2, 0.2])  # 0.4 is within the hysteresis
    assert ep.due(10_000) == 192 + 100


def test_vad_pauses_shorter_than_the_rule_do_not_end() -> None:
    ep = Endpointer(EndpointConfig(500, "vad"))
    ep.on_vad(0, 32, ([0.9] * 10 + [0.1] * 10) * 3)  # 320 ms pauses
    assert ep.due(10_000) is None


def test_token_rule() -> None:
    ep = Endpointer(EndpointConfig(400, "tokens"), frame_ms=80)
    assert ep.due(10_000) is None  # no token yet
    ep.on_token(800)
    assert ep.due(1279) is None and ep.due(1280) == 880 + 400
    ep.ended(1280)
    assert ep.due(10_000) is None
    ep.on_token(2000)
    ep.on_token(2300)  # gaps shorter than the rule
    assert ep.due(2779) is None and ep.due(2780) == 2780


def test_either_fires_first_and_only_once_per_pause() -> None:
    ep = Endpointer(EndpointConfig(300, "either"), frame_ms=80)
    ep.on_vad(0, 32, [0.9] * 20 + [0.1] * 20)  # speech until 640; VAD endpoint at 940
    ep.on_token(400)  # token rule: 480 + 300 = 780
    assert ep.due(10_000) == 780
    ep.ended(780)
    assert ep.due(10_000) is None  # the VAD's candidate belonged to the same pause


def test_model_eou_cancels_a_pending_silence_endpoint() -> None:
    ep = Endpointer(EndpointConfig(300, "vad"))
    ep.on_vad(0, 32, [0.9] * 10 + [0.1] * 15)
    ep.ended(400)  # <EOU> after the speech ended at 320
    assert ep.due(10_000) is None


def test_config_validation_and_defaults() -> None:
    with pytest.raises(ValueError):
        EndpointConfig(100, "loud")
    with pytest.raises(ValueError):
        EndpointConfig(-1)
    assert resolve(None, "vad", 0.5, model_has_eou=True).silence_ms == 0
    assert resolve(None, "vad", 0.5, model_has_eou=False).silence_ms == DEFAULT_SILENCE_MS_WITHOUT_EOU
    assert resolve(700, "tokens", 0.5, model_has_eou=True) == EndpointConfig(700, "tokens", 0.5)


def test_server_flags_reach_the_engine(no_eou_model, tiny_model) -> None:
    assert build_engine(no_eou_model, ServerConfig()).endpoint.silence_ms == DEFAULT_SILENCE_MS_WITHOUT_EOU
    assert not build_engine(tiny_model, ServerConfig()).endpoint.enabled  # it has <EOU>
    engine = build_engine(tiny_model, ServerConfig(endpoint_silence_ms=250, endpoint_signal="either"))
    assert engine.endpoint == EndpointConfig(250, "either") and engine.vad is not None
    assert build_engine(no_eou_model, ServerConfig(endpoint_silence_ms=0)).vad is None


# --- end to end ------------------------------------------------------------------------------


def check_utterances(result: dict, boundary_ms: int) -> None:
    """Tokens before the endpoint belong to utterance 0, the rest to 1; texts add up."""
    (first, second) = result["utterances"]
    assert first["ended"] and first["reason"] == "silence" and not second["ended"]
    assert abs(first["audio_ms"] - boundary_ms) <= 80
    assert first["text"] and second["text"]
    # (random tokens: the second utterance may start mid-word, so compare without spaces)
    assert (first["text"] + second["text"]).replace(" ", "") == result["text"].replace(" ", "")


def test_vad_endpoint_in_the_pause(no_eou_model, paused, sentences) -> None:
    engine = started(no_eou_model, 2, EndpointConfig(SILENCE_MS, "vad"))
    try:
        result = transcribe(engine, paused)
    finally:
        engine.shutdown()
    end = speech_end_ms(sentences[0])
    (first, _) = result["utterances"]
    # Silero's speech end is within a couple of 32 ms frames of the energy end.
    assert end + SILENCE_MS - 100 <= first["audio_ms"] <= end + SILENCE_MS + 100
    check_utterances(result, first["audio_ms"])


def test_token_endpoint_follows_the_decoder(no_eou_model, paused) -> None:
    engine = started(no_eou_model, 2, EndpointConfig(SILENCE_MS, "tokens"))
    try:
        result = transcribe(engine, paused)
    finally:
        engine.shutdown()
    starts = result["token_start_ms"]
    gaps = [(a, b) for a, b in zip(starts, starts[1:]) if b - (a + 80) >= SILENCE_MS]
    assert len(gaps) == 1  # the model is silent in the pause only
    boundary = gaps[0][0] + 80 + SILENCE_MS
    check_utterances(result, boundary)
    n_first = sum(1 for t in starts if t < boundary)
    first_text = no_eou_model.tokenizer.decode(result["token_ids"][:n_first]).strip()
    assert result["utterances"][0]["text"] == first_text


def test_endpointing_off_means_one_utterance(no_eou_model, paused) -> None:
    engine = started(no_eou_model, 1, EndpointConfig(0))
    try:
        result = transcribe(engine, paused)
    finally:
        engine.shutdown()
    assert [u["ended"] for u in result["utterances"]] == [False]


async def test_silence_eou_over_sockets(no_eou_model, paused, sentences, transport) -> None:
    engine = started(no_eou_model, 2, EndpointConfig(SILENCE_MS, "vad"))
    try:
        async with running_server(engine, no_eou_model) as app:
            msgs = await transcribe_over(app, transport, paused)
    finally:
        engine.shutdown()
    eous = [m for m in msgs if m["type"] == "eou"]
    assert [(e["reason"], e["utterance"], e["backchannel"]) for e in eous] == [("silence", 0, False)]
    end = speech_end_ms(sentences[0])
    assert end + SILENCE_MS - 100 <= eous[0]["audio_ms"] <= end + SILENCE_MS + 100
    at = msgs.index(eous[0])
    before = [m for m in msgs[:at] if m["type"] == "result"]
    after = [m for m in msgs[at:] if m["type"] == "result"]
    assert before and all(m["utterance"] == 0 for m in before)
    assert after and all(m["utterance"] == 1 for m in after) and after[-1]["is_final"]
    assert eous[0]["text"] and before[-1]["text"].strip() == eous[0]["text"]
    assert all(m["audio_ms"] <= eous[0]["audio_ms"] + 160 for m in before)


# --- per stream ------------------------------------------------------------------------------


async def stream_paused(app, transport: str, paused: np.ndarray, path: str = "/", config_after: int | None = None,
                        silence_ms: int = SILENCE_MS) -> list[dict]:
    from server_helpers import WsClient, open_stream

    if transport == "ws":
        client = await WsClient.open(app, path)
        assert (await client.recv())["type"] == "hello"
    else:
        client, _ = await open_stream(app, "tcp")
    sent = 0
    for part in chunks(paused):
        if config_after is not None and sent >= config_after:
            await client.send({"type": "config", "endpoint_silence_ms": silence_ms})
            config_after = None
        await client.send_audio(part)
        sent += len(part)
    await client.send({"type": "close"})
    return await client.collect()


def silence_eous(msgs: list[dict]) -> list[int]:
    return [m["audio_ms"] for m in msgs if m["type"] == "eou" and m["reason"] == "silence"]


async def test_a_stream_turns_endpointing_on(no_eou_model, paused, sentences) -> None:
    """The server's default is off; one stream asks by URL, one by a config message sent after 0.5 s
    of audio (its VAD starts late but keeps the stream's clock), one does not ask."""
    engine = started(no_eou_model, 3, EndpointConfig(0))
    assert engine.vad is None
    expected = speech_end_ms(sentences[0]) + SILENCE_MS
    try:
        async with running_server(engine, no_eou_model) as app:
            by_url = await stream_paused(app, "ws", paused, path=f"/?endpoint_silence_ms={SILENCE_MS}")
            by_message = await stream_paused(app, "tcp", paused, config_after=8000)
            plain = await stream_paused(app, "ws", paused)
    finally:
        engine.shutdown()
    for msgs in (by_url, by_message):
        (at,) = silence_eous(msgs)
        assert expected - 100 <= at <= expected + 100
    assert not [m for m in plain if m["type"] == "eou"]
    assert tokens_of(plain) == tokens_of(by_url) == tokens_of(by_message)  # endpoints never change tokens


async def test_a_stream_turns_endpointing_off(no_eou_model, paused) -> None:
    engine = started(no_eou_model, 2, EndpointConfig(SILENCE_MS))
    try:
        async with running_server(engine, no_eou_model) as app:
            off = await stream_paused(app, "ws", paused, path="/?endpoint_silence_ms=0")
            on = await stream_paused(app, "ws", paused)
            bad = await stream_paused(app, "tcp", paused, config_after=0, silence_ms=-5)
    finally:
        engine.shutdown()
    assert not [m for m in off if m["type"] == "eou"] and len(silence_eous(on)) == 1
    assert [(m["code"], m["fatal"]) for m in bad if m["type"] == "error"] == [("bad_config", False)]
    assert len(silence_eous(bad)) == 1  # the bad message changed nothing


async def test_token_rule_over_sockets(no_eou_model, paused) -> None:
    engine = started(no_eou_model, 1, EndpointConfig(SILENCE_MS, "tokens"))
    try:
        async with running_server(engine, no_eou_model) as app:
            msgs = await stream_paused(app, "ws", paused, path="/?timestamps=true")
    finally:
        engine.shutdown()
    (eou,) = [m for m in msgs if m["type"] == "eou"]
    at = msgs.index(eou)
    before = [t for m in msgs[:at] if m["type"] == "result" for t in m["token_start_ms"]]
    after = [t for m in msgs[at:] if m["type"] == "result" for t in m["token_start_ms"]]
    assert eou["reason"] == "silence" and eou["audio_ms"] == before[-1] + 80 + SILENCE_MS
    assert after and after[0] - (before[-1] + 80) >= SILENCE_MS
    assert all(b - (a + 80) < SILENCE_MS for a, b in zip(before, before[1:]))
