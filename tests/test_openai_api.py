"""`POST /v1/audio/transcriptions` on the HTTP port, driven by the official `openai` package against
the real server (real engine, tiny model, real sockets). Reference: `parakeet-server transcribe`."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from client_helpers import offline_transcript
from integration_helpers import write_wav
from server_helpers import engine_factory, hold_slots, running_server, settle  # noqa: F401 - fixture

from parakeet_streaming.server.transcript_formats import _clock

openai = pytest.importorskip("openai")
pytest.importorskip("parakeet_streaming.engine.engine")

API_KEY = "sk-local-test"


@pytest.fixture(scope="module")
def expected(tiny_model, speech_wav: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    return offline_transcript(tiny_model, speech_wav, tmp_path_factory.mktemp("openai_model"))


def client_for(app, key: str = API_KEY) -> "openai.AsyncOpenAI":
    return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{app.ports['http']}/v1", api_key=key, max_retries=0)


async def test_json_and_text(engine_factory, tiny_model, speech_wav, expected):
    engine, model = engine_factory(2)
    async with running_server(engine, model, api_keys=[API_KEY]) as app:
        client = client_for(app)
        with open(speech_wav, "rb") as f:
            result = await client.audio.transcriptions.create(file=f, model="parakeet")
        assert result.text == expected
        assert result.usage is not None and result.usage.seconds > 1
        with open(speech_wav, "rb") as f:
            text = await client.audio.transcriptions.create(file=f, model="parakeet", response_format="text")
        assert text.strip() == expected
        await settle(app)


async def test_verbose_json_segments_and_words(engine_factory, tiny_model, speech_wav, expected):
    engine, model = engine_factory(1)
    async with running_server(engine, model, api_keys=[API_KEY]) as app:
        with open(speech_wav, "rb") as f:
            v = await client_for(app).audio.transcriptions.create(
                file=f, model="parakeet", response_format="verbose_json", timestamp_granularities=["word", "segment"])
    assert v.text == expected and v.duration == pytest.approx(_seconds(speech_wav), abs=0.01)
    assert " ".join(s.text for s in v.segments if s.text) == expected
    assert [w.word for w in v.words] == expected.split()
    starts = [s.start for s in v.segments]
    assert starts == sorted(starts) and all(s.start <= s.end <= v.duration + 0.2 for s in v.segments)
    assert all(w.start <= w.end for w in v.words)
    assert [s.id for s in v.segments] == list(range(len(v.segments)))


@pytest.mark.parametrize("kind", ["srt", "vtt"])
async def test_subtitles(engine_factory, tiny_model, speech_wav, expected, kind):
    engine, model = engine_factory(1)
    async with running_server(engine, model, api_keys=[API_KEY]) as app:
        client = client_for(app)
        with open(speech_wav, "rb") as f:
            body = await client.audio.transcriptions.create(file=f, model="parakeet", response_format=kind)
        with open(speech_wav, "rb") as f:
            v = await client.audio.transcriptions.create(file=f, model="parakeet", response_format="verbose_json")
    sep = "," if kind == "srt" else "."
    stamp = r"(\d\d:\d\d:\d\d" + re.escape(sep) + r"\d\d\d)"
    cues = re.findall(stamp + " --> " + stamp + r"\n(.+)\n", body)
    assert kind == "srt" or body.startswith("WEBVTT\n\n")
    assert " ".join(text for _, _, text in cues) == expected
    segs = [s for s in v.segments if s.text]
    assert [(a, b) for a, b, _ in cues] == [(_clock(round(s.start * 1000), sep), _clock(round(s.end * 1000), sep))
                                           for s in segs]
    if kind == "srt":
        assert re.findall(r"^(\d+)\n", body, re.M) == [str(i + 1) for i in range(len(cues))]


async def test_stream_sse(engine_factory, tiny_model, speech_wav, expected):
    engine, model = engine_factory(1)
    async with running_server(engine, model, api_keys=[API_KEY]) as app:
        with open(speech_wav, "rb") as f:
            stream = await client_for(app).audio.transcriptions.create(file=f, model="parakeet", stream=True)
            events = [ev async for ev in stream]
        await settle(app)
    deltas = [ev for ev in events if ev.type == "transcript.text.delta"]
    assert len(deltas) > 1 and "".join(d.delta for d in deltas) == expected
    assert events[-1].type == "transcript.text.done" and events[-1].text == expected


async def test_file_shares_slots_with_live_streams(engine_factory, tiny_model, speech, speech_wav, expected):
    engine, model = engine_factory(1)
    async with running_server(engine, model, api_keys=[API_KEY]) as app:
        client = client_for(app)
        import aiohttp
        from server_helpers import WsClient

        conn = await WsClient.open(app, f"/?token={API_KEY}")
        assert (await conn.recv())["type"] == "hello"
        await hold_slots(app, [conn], speech[:1600])  # the only slot is taken
        with open(speech_wav, "rb") as f, pytest.raises(openai.RateLimitError) as info:
            await client.audio.transcriptions.create(file=f, model="parakeet")
        assert info.value.code == "server_full"
        async with aiohttp.ClientSession() as http:  # counted like a refused live connection
            async with http.get(f"http://127.0.0.1:{app.ports['http']}/metrics") as r:
                metrics = await r.text()
        assert 'parakeet_connections_rejected_total{reason="server_full"} 1.0' in metrics
        assert 'parakeet_errors_total{code="server_full"} 1.0' in metrics
        await conn.send_audio(speech[1600:], final=True)  # the live stream is unaffected
        msgs = await conn.collect()
        assert msgs[-1]["is_final"] and msgs[-1]["text"] == expected
        await settle(app)
        with open(speech_wav, "rb") as f:  # the slot is free again
            assert (await client.audio.transcriptions.create(file=f, model="parakeet")).text == expected


async def test_errors(engine_factory, tiny_model, speech_wav, tmp_path):
    engine, model = engine_factory(1)
    bad = tmp_path / "notes.txt"
    bad.write_text("not audio")
    async with running_server(engine, model, api_keys=[API_KEY], max_stream_seconds=1.0) as app:
        client = client_for(app)
        with open(bad, "rb") as f, pytest.raises(openai.BadRequestError) as info:
            await client.audio.transcriptions.create(file=f, model="parakeet")
        assert info.value.code == "unsupported_format"
        with open(speech_wav, "rb") as f, pytest.raises(openai.BadRequestError) as info:
            await client.audio.transcriptions.create(file=f, model="parakeet")
        assert info.value.code == "stream_too_long"
        with open(speech_wav, "rb") as f, pytest.raises(openai.BadRequestError) as info:
            await client.audio.transcriptions.create(file=f, model="parakeet", response_format="xml")
        assert info.value.code == "bad_request"
        with open(speech_wav, "rb") as f, pytest.raises(openai.AuthenticationError):
            await client_for(app, "wrong").audio.transcriptions.create(file=f, model="parakeet")
        await settle(app)


def _seconds(path: Path) -> float:
    import wave

    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()


def test_formats_from_events():
    """collect() + srt/vtt on hand-made events: two utterances and an unfinished tail."""
    from parakeet_streaming.engine.events import Result, UtteranceEnd
    from parakeet_streaming.engine.words import Word
    from parakeet_streaming.server import transcript_formats as fmt

    def res(text, words, final=False, audio_ms=0):
        return Result(1, text, [1] * len(words), [0.5] * len(words), [0] * len(words), audio_ms, 0, final,
                      words=words)

    events = [
        res("hello", [Word("hello", 100, 400, 0.9)]),
        UtteranceEnd(1, 0, "hello", 640, words=[]),
        res("hello big", []),
        UtteranceEnd(1, 1, "big", 1920, words=[Word("big", 1500, 1700, 0.8)]),
        UtteranceEnd(1, 2, "", 2080),  # an utterance without words: no segment
        res("hello big world", [], final=True, audio_ms=3725),
    ]
    t = fmt.collect(events, 3.8)
    assert [(s.id, s.start_ms, s.end_ms, s.text) for s in t.segments] == [
        (0, 100, 640, "hello"), (1, 1500, 1920, "big"), (2, 2080, 3725, "world")]
    assert fmt.srt(t.segments) == ("1\n00:00:00,100 --> 00:00:00,640\nhello\n\n"
                                   "2\n00:00:01,500 --> 00:00:01,920\nbig\n\n"
                                   "3\n00:00:02,080 --> 00:00:03,725\nworld\n")
    assert fmt.vtt(t.segments).startswith("WEBVTT\n\n00:00:00.100 --> 00:00:00.640\nhello\n\n")
    assert fmt.render(t, "text") == "hello big world\n"
    assert [w["word"] for w in fmt.render(t, "verbose_json", True)["words"]] == ["hello", "big"]


async def test_docs_example_runs(engine_factory, tiny_model, speech_wav, expected, tmp_path):
    """The Python block of docs/openai-api.md, pointed at the server, prints the transcript twice."""
    import asyncio
    import shutil
    import sys

    doc = Path(__file__).resolve().parents[1] / "docs" / "openai-api.md"
    code = re.findall(r"```python\n(.*?)```", doc.read_text(), re.S)[0]
    shutil.copy(speech_wav, tmp_path / "speech.wav")
    engine, model = engine_factory(1)
    async with running_server(engine, model) as app:
        script = tmp_path / "example.py"
        script.write_text(code.replace("http://localhost:8080", f"http://127.0.0.1:{app.ports['http']}"))
        proc = await asyncio.create_subprocess_exec(sys.executable, str(script), cwd=tmp_path,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    assert out.decode().splitlines() == [expected, expected]


async def test_client_leaving_mid_stream_frees_the_slot(engine_factory, tiny_model, speech, tmp_path):
    """An SSE client that disconnects after the first event: the engine stream is aborted, the slot
    is free again, and the server keeps serving."""
    import aiohttp

    long_wav = tmp_path / "long.wav"
    write_wav(long_wav, np.tile(speech, 15), 16000)  # about a minute
    engine, model = engine_factory(1)
    async with running_server(engine, model) as app:
        url = f"http://127.0.0.1:{app.ports['http']}/v1/audio/transcriptions"
        form = aiohttp.FormData()
        form.add_field("file", long_wav.read_bytes(), filename="long.wav")
        form.add_field("model", "parakeet")
        form.add_field("stream", "true")
        async with aiohttp.ClientSession() as http:
            async with http.post(url, data=form) as r:
                assert r.status == 200 and r.content_type == "text/event-stream"
                first = await r.content.readline()
                assert first.startswith(b"data: ")
            # leaving the block closed the connection long before the file is decoded
        await settle(app)
        assert engine.num_active == 0
        with open(long_wav, "rb") as f:
            result = await client_for(app).audio.transcriptions.create(file=f, model="parakeet", response_format="text")
        assert result.strip()


