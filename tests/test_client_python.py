"""The Python client package and `parakeet-client` against the real server in-process (real engine,
tiny model, real sockets); the CLI runs as a subprocess. The reference transcript is what
`parakeet-server transcribe` prints for the same file."""
from __future__ import annotations

import asyncio
import json
import os
import pty
import subprocess
import sys
import threading
import time
import types
import wave
from pathlib import Path

import numpy as np
import pytest
from client_helpers import CLIENT, RecordingEngine, file_is_in, offline_transcript, run_client
from integration_helpers import write_wav
from server_helpers import engine_factory, running_server, settle, until  # noqa: F401 - fixture

from parakeet_streaming.client import (Eou, Error, Hello, ProtocolViolation, Result, ServerError, StreamClosed,
                                       StreamingClient, SyncStreamingClient, parse_message, transcribe_file,
                                       transcribe_file_sync)

pytest.importorskip("parakeet_streaming.engine.engine")

@pytest.fixture(scope="module")
def expected(tiny_model, speech_wav: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    return offline_transcript(tiny_model, speech_wav, tmp_path_factory.mktemp("client_model"))


def url(app) -> str:
    return f"ws://127.0.0.1:{app.ports['ws']}/"


# --- message parsing -------------------------------------------------------------------------


def test_parse_ignores_unknown_fields_and_types():
    hello = parse_message('{"type":"hello","stream_id":3,"sample_rate":16000,"protocol":2,"future":1}')
    assert hello == Hello(3, 16000, protocol=2) and hello.raw["future"] == 1
    res = parse_message({"type": "result", "stream_id": 3, "text": "hi", "token_ids": [5], "confidence_scores": [0.5],
                         "is_final": False, "new_field": [1]})
    assert isinstance(res, Result) and res.token_ids == (5,) and res.audio_ms is None
    assert parse_message('{"type":"something_new","x":1}') is None
    seed_error = parse_message('{"type":"error","message":"no free stream"}')  # protocol 1: no code
    assert seed_error == Error("error", "no free stream", False)


@pytest.mark.parametrize("raw", ['not json', '[1]', '{"type":"result","text":"x"}', '{"type":"hello"}'])
def test_parse_rejects_malformed(raw):
    with pytest.raises(ProtocolViolation):
        parse_message(raw)


# --- async API -------------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False])
async def test_transcribe_file_matches_offline(engine_factory, tiny_model, speech_wav, expected, binary):
    engine, model = engine_factory(2)
    async with running_server(engine, model) as app:
        seen: list = []
        if binary:
            transcript = await transcribe_file(url(app), speech_wav, speed=0, on_message=seen.append)
        else:
            samples, rate = _read(speech_wav)
            async with StreamingClient(url(app), sample_rate=rate, binary=False) as client:
                transcript = await client.transcribe(samples, speed=0, on_message=seen.append)
        assert transcript.text == expected
        assert transcript.final.is_final and seen[-1] is transcript.final
        assert [m for m in seen if isinstance(m, Eou)] == transcript.utterances
        partials = [m for m in seen if isinstance(m, Result) and not m.is_final]
        assert partials and all(expected.startswith(p.text) for p in partials)
        await settle(app)


async def test_realtime_pacing_and_progress(engine_factory, tiny_model, speech_wav, expected):
    engine, model = engine_factory(1)
    duration = _duration(speech_wav)
    progress: list[tuple[float, float]] = []
    async with running_server(engine, model) as app:
        started = time.monotonic()
        transcript = await transcribe_file(url(app), speech_wav, speed=2, chunk_ms=200,
                                           on_progress=lambda s, t: progress.append((s, t)))
        elapsed = time.monotonic() - started
    assert transcript.text == expected
    assert elapsed >= 0.9 * duration / 2, elapsed
    assert progress[-1][0] == pytest.approx(duration) and progress[-1][1] == pytest.approx(duration)
    assert [s for s, _ in progress] == sorted(s for s, _ in progress)


async def test_numpy_array_and_manual_results(engine_factory, tiny_model, speech, expected):
    engine, model = engine_factory(1)
    async with running_server(engine, model) as app:
        async with StreamingClient(url(app)) as client:  # the server's rate: no resampling
            assert client.hello.sample_rate == 16000 and client.hello.protocol == 2
            for i in range(0, len(speech), 1234):
                await client.send(speech[i:i + 1234])
            await client.finish()
            msgs = [m async for m in client.results()]
        assert msgs[-1].is_final and msgs[-1].text == expected


async def test_resampled_file(engine_factory, tiny_model, speech, tmp_path):
    """A 44.1 kHz file is resampled by the client to the rate hello announces."""
    import soxr

    path = tmp_path / "speech44.wav"
    write_wav(path, soxr.resample(speech, 16000, 44100), 44100)
    engine, model = engine_factory(1)
    async with running_server(engine, model) as app:
        transcript = await transcribe_file(url(app), path, speed=0)
        assert transcript.final.audio_ms == pytest.approx(len(speech) / 16, abs=20)
        assert transcript.text


async def test_non_fatal_error_is_yielded_and_stream_goes_on(engine_factory, tiny_model, speech, expected):
    engine, model = engine_factory(1)
    async with running_server(engine, model) as app:
        async with StreamingClient(url(app)) as client:
            await client.send(speech[:8000])
            await client.send_message({"type": "bogus"})
            await client.send(speech[8000:])
            await client.finish()
            msgs = [m async for m in client.results()]
    errors = [m for m in msgs if isinstance(m, Error)]
    assert [(e.code, e.fatal) for e in errors] == [("unknown_type", False)]
    assert msgs[-1].text == expected


async def test_server_full_raises_with_code(engine_factory, tiny_model, speech_wav):
    engine, model = engine_factory(1)
    async with running_server(engine, model) as app:
        async with StreamingClient(url(app)) as holder:
            await holder.send(np.zeros(1600, np.float32))  # its first audio takes the only slot
            await until(lambda: engine.num_free == 0)
            with pytest.raises(ServerError) as info:
                await transcribe_file(url(app), speech_wav, speed=0)
        assert info.value.code == "server_full" and info.value.fatal and info.value.final is None


async def test_fatal_error_after_audio_raises_with_final(engine_factory, tiny_model, speech_wav):
    engine, model = engine_factory(1)
    async with running_server(engine, model, max_stream_seconds=1.0) as app:
        with pytest.raises(ServerError) as info:
            await transcribe_file(url(app), speech_wav, speed=0)
        assert info.value.code == "stream_too_long"
        assert info.value.final is not None and info.value.final.audio_ms == 1000
        await settle(app)


async def test_shutdown_raises_shutting_down_with_final(engine_factory, tiny_model, speech):
    engine, model = engine_factory(1)
    async with running_server(engine, model) as app:
        async with StreamingClient(url(app)) as client:
            await client.send(speech[:16000])
            await client.flush()
            results = client.results()
            async for msg in results:  # the server has the audio once the flush is answered
                if isinstance(msg, Result) and msg.flushed:
                    break
            stopping = asyncio.create_task(app.stop(drain_seconds=5))
            with pytest.raises(ServerError) as info:
                async for _ in results:
                    pass
            await stopping
    assert info.value.code == "shutting_down" and info.value.fatal
    assert info.value.final is not None and info.value.final.audio_ms == 1000


async def test_closed_connection_raises_stream_closed(engine_factory, tiny_model, speech):
    engine, model = engine_factory(1)
    async with running_server(engine, model) as app:
        async with StreamingClient(url(app)) as client:
            await client.send(speech[:8000])
            await client.close()
            with pytest.raises(StreamClosed):
                async for _ in client.results():
                    pass
        await settle(app)


async def test_local_errors(engine_factory, tiny_model):
    engine, model = engine_factory(1)
    async with running_server(engine, model) as app:
        async with StreamingClient(url(app)) as client:
            with pytest.raises(ValueError, match="NaN"):
                await client.send(np.array([0.0, np.nan], dtype=np.float32))
            with pytest.raises(ValueError, match="mono"):
                await client.send(np.zeros((10, 2), dtype=np.float32))
            await client.finish()
            with pytest.raises(RuntimeError, match="finished"):
                await client.send(np.zeros(10, dtype=np.float32))
            assert [m async for m in client.results()][-1].is_final


async def test_api_key_flush_and_timestamps(engine_factory, tiny_model, speech, expected):
    engine, model = engine_factory(1)
    async with running_server(engine, model, api_keys=["s3cret"]) as app:
        with pytest.raises(ServerError) as info:
            async with StreamingClient(url(app)):
                pass
        assert info.value.code == "unauthorized"
        async with StreamingClient(url(app) + "?timestamps=true", api_key="s3cret") as client:
            await client.send(speech)
            await client.flush()
            flushed, seen = None, []
            async for msg in client.results():
                seen.append(msg)
                if isinstance(msg, Result) and msg.flushed:
                    flushed = msg
                    break
            assert flushed is not None and not flushed.is_final
            await client.finish()
            msgs = [m async for m in client.results()]
        final = msgs[-1]
        assert final.is_final and final.text == expected and flushed.text == expected
        words = [w for m in [*seen, *msgs] if isinstance(m, Result) for w in m.words or ()]
        assert [w.word for w in words] == expected.split()
        assert all(w.start_ms <= w.end_ms for w in words)


# --- sync API --------------------------------------------------------------------------------


async def test_sync_client(engine_factory, tiny_model, speech, speech_wav, expected):
    engine, model = engine_factory(2)
    async with running_server(engine, model) as app:
        def blocking() -> tuple[list, str]:
            with SyncStreamingClient(url(app)) as client:
                sender = threading.Thread(target=client.stream, args=(speech,), kwargs={"speed": 0})
                sender.start()
                msgs = list(client.results())
                sender.join()
            return msgs, transcribe_file_sync(url(app), speech_wav, speed=0).text

        msgs, text = await asyncio.to_thread(blocking)
    assert msgs[-1].is_final and msgs[-1].text == expected and text == expected


# --- microphone ------------------------------------------------------------------------------


def test_microphone_without_sounddevice(monkeypatch):
    from parakeet_streaming.client.mic import Microphone

    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"parakeet-streaming\[mic\]"):
        Microphone()


async def test_microphone_blocks_stream_to_server(monkeypatch, engine_factory, tiny_model, speech, expected):
    """Microphone's PortAudio-thread -> event-loop bridge, with sounddevice replaced by a device that
    plays `speech` from its own thread (no sound card here)."""
    from parakeet_streaming.client.mic import Microphone

    monkeypatch.setitem(sys.modules, "sounddevice", _fake_sounddevice(speech))
    mic = Microphone(block_ms=100)
    assert mic.sample_rate == 16000
    stop = asyncio.Event()
    engine, model = engine_factory(1)
    async with running_server(engine, model) as app:
        async with StreamingClient(url(app), sample_rate=mic.sample_rate) as client:
            sender = asyncio.create_task(client.stream_from(mic.blocks(stop)))
            asyncio.get_running_loop().call_later(0.5, stop.set)  # the device runs dry long before
            msgs = [m async for m in client.results()]
            await sender
    assert msgs[-1].text == expected


def _fake_sounddevice(speech: np.ndarray) -> types.ModuleType:
    class InputStream:
        def __init__(self, samplerate, channels, dtype, device, blocksize, callback):
            assert (samplerate, channels, dtype) == (16000, 1, "float32")
            self.blocksize, self.callback = blocksize, callback
            self.thread = threading.Thread(target=self._run)

        def _run(self):
            for i in range(0, len(speech), self.blocksize):
                block = speech[i:i + self.blocksize]
                self.callback(block.reshape(-1, 1).copy(), len(block), None, None)

        def __enter__(self):
            self.thread.start()
            return self

        def __exit__(self, *exc):
            self.thread.join()

    sd = types.ModuleType("sounddevice")
    sd.InputStream = InputStream
    sd.query_devices = lambda device, kind: {"default_samplerate": 16000.0}
    return sd


# --- CLI -------------------------------------------------------------------------------------


async def test_cli_prints_utterances_and_final(engine_factory, tiny_model, speech_wav, expected):
    engine, model = engine_factory(1)
    async with running_server(engine, model) as app:
        code, out, err = await run_client("stream", str(speech_wav), "--url", url(app), "--speed", "0")
        assert code == 0, err
        transcript = await transcribe_file(url(app), speech_wav, speed=0)
    lines = out.splitlines()
    assert lines[-1] == f"final: {expected}"
    assert lines[:-1] == [f"utterance {u.utterance}{' (backchannel)' if u.backchannel else ''}: {u.text}"
                          for u in transcript.utterances]
    assert "\r" not in out  # piped: no live line


async def test_cli_json(engine_factory, tiny_model, speech_wav, expected):
    engine, model = engine_factory(1)
    async with running_server(engine, model) as app:
        code, out, err = await run_client("stream", str(speech_wav), "--url", url(app), "--speed", "0", "--json")
    assert code == 0, err
    msgs = [json.loads(line) for line in out.splitlines()]
    assert msgs[0]["type"] == "hello" and msgs[-1]["type"] == "result" and msgs[-1]["is_final"]
    assert msgs[-1]["text"] == expected
    assert [m["token_ids"] for m in msgs if m["type"] == "result"] != []


async def test_cli_live_line_on_a_terminal(engine_factory, tiny_model, speech_wav, expected):
    engine, model = engine_factory(1)
    master, slave = pty.openpty()
    async with running_server(engine, model) as app:
        proc = await asyncio.create_subprocess_exec(*CLIENT, "stream", str(speech_wav), "--url", url(app),
                                                    "--speed", "4", stdout=slave, stderr=subprocess.PIPE)
        os.close(slave)
        chunks: list[bytes] = []
        reader = asyncio.create_task(asyncio.to_thread(_drain, master, chunks))
        code = await asyncio.wait_for(proc.wait(), 120)
        await reader
    screen = b"".join(chunks).decode()
    assert code == 0, await proc.stderr.read()
    assert "\r\x1b[K[" in screen and "100%" in screen  # the progress bar, rewritten in place
    partial_words = expected.split()[0]
    assert any(partial_words in part for part in screen.split("\r\x1b[K")[:-1])
    assert screen.replace("\r\n", "\n").rstrip("\n").endswith(f"final: {expected}")


def _drain(fd: int, chunks: list[bytes]) -> None:
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:  # EIO once the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(fd)


async def test_cli_mic_without_sounddevice(tmp_path):
    try:
        import sounddevice  # noqa: F401
    except (ImportError, OSError):
        pass
    else:
        pytest.skip("sounddevice is installed here")
    code, _, err = await run_client("stream", "--mic", "--url", "ws://127.0.0.1:1/")
    assert code == 2 and "parakeet-streaming[mic]" in err


FAKE_SOUNDDEVICE = """
import os, threading, time, wave
import numpy as np

def query_devices(device, kind):
    return {"default_samplerate": 16000.0}

class InputStream:  # plays $FAKE_MIC_WAV in real time from its own thread, then silence
    def __init__(self, samplerate, channels, dtype, device, blocksize, callback):
        with wave.open(os.environ["FAKE_MIC_WAV"]) as w:
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        self.audio = pcm.astype(np.float32) / 32768.0
        self.blocksize, self.callback, self.stop = blocksize, callback, threading.Event()
        self.thread = threading.Thread(target=self.run)

    def run(self):
        pos = 0
        while not self.stop.is_set():
            block = self.audio[pos:pos + self.blocksize]
            block = np.pad(block, (0, self.blocksize - len(block)))
            pos += self.blocksize
            self.callback(block.reshape(-1, 1), len(block), None, None)
            time.sleep(self.blocksize / 16000)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
"""


async def test_cli_mic_streams_until_ctrl_c(engine_factory, tiny_model, speech_wav, tmp_path):
    """`--mic` with sounddevice replaced by a device that plays the WAV file (no sound card here):
    SIGINT ends the stream and the final transcript is printed."""
    import signal

    (tmp_path / "sounddevice.py").write_text(FAKE_SOUNDDEVICE)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "FAKE_MIC_WAV": str(speech_wav)}
    from server_helpers import transcribe

    engine, model = engine_factory(1)
    recorder = RecordingEngine(engine)
    async with running_server(recorder, model) as app:
        proc = await asyncio.create_subprocess_exec(*CLIENT, "stream", "--mic", "--url", url(app), "--json", env=env,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        await asyncio.wait_for(proc.stderr.readline(), 60)  # "listening; Ctrl-C to finish"
        await asyncio.sleep(_duration(speech_wav) + 1)
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        msgs = [json.loads(line) for line in out.decode().splitlines()]
    assert msgs[0]["type"] == "hello" and msgs[-1]["type"] == "result" and msgs[-1]["is_final"]
    assert msgs[-1]["audio_ms"] >= _duration(speech_wav) * 1000
    (_, chunks), = recorder.audio.items()
    received = np.concatenate(chunks)
    assert file_is_in(_read(speech_wav)[0], received)
    offline = await asyncio.to_thread(transcribe, engine, received)
    assert msgs[-1]["text"] == offline["text"] and offline["text"]


async def test_cli_errors(engine_factory, tiny_model, speech_wav, tmp_path):
    engine, model = engine_factory(1)
    async with running_server(engine, model) as app:
        async with StreamingClient(url(app)) as holder:
            await holder.send(np.zeros(1600, np.float32))  # its first audio takes the only slot
            await until(lambda: engine.num_free == 0)
            code, _, err = await run_client("stream", str(speech_wav), "--url", url(app))
        assert code == 1 and "server_full" in err
    code, _, err = await run_client("stream", str(tmp_path / "missing.wav"), "--url", url(app))
    assert code == 2 and "missing.wav" in err
    code, _, err = await run_client("stream", str(speech_wav), "--url", url(app))  # server gone
    assert code == 1 and "parakeet-client:" in err


# --- helpers ---------------------------------------------------------------------------------


def _read(path: Path) -> tuple[np.ndarray, int]:
    from parakeet_streaming.client.audio import load_audio

    return load_audio(path)


def _duration(path: Path) -> float:
    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()


