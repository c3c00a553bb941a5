"""Pipecat's DeepgramSTTService and OpenAIRealtimeSTTService, pointed at a real server by their
base-URL options, in a real Pipecat pipeline fed from a WAV file: the TranscriptionFrames that come
out hold the native protocol's transcript of the same audio."""
from __future__ import annotations

import asyncio
import wave

import numpy as np
import pytest
from integration_helpers import (RATE, RATE_24K, native_text, same_words, two_utterances,  # noqa: F401
                                 two_utterances_24k, write_wav)
from server_helpers import engine_factory, running_server  # noqa: F401

pytest.importorskip("pipecat", reason="the integrations extra is not installed")
pytest.importorskip("deepgram", reason="the integrations extra is not installed")

from pipecat.frames.frames import (EndFrame, ErrorFrame, Frame, InputAudioRawFrame,  # noqa: E402
                                   InterimTranscriptionFrame, TranscriptionFrame, VADUserStoppedSpeakingFrame)
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.pipeline.worker import PipelineParams, PipelineWorker  # noqa: E402
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor  # noqa: E402
from pipecat.workers.runner import WorkerRunner  # noqa: E402

pytestmark = pytest.mark.slow
TIMEOUT = 60


class Collect(FrameProcessor):
    """The end of the pipeline: keeps every transcription (and error) frame."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[Frame] = []
        self.changed = asyncio.Event()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, (TranscriptionFrame, InterimTranscriptionFrame, ErrorFrame)):
            self.frames.append(frame)
            self.changed.set()
        await self.push_frame(frame, direction)

    def finals(self) -> str:
        return " ".join(f.text for f in self.frames if type(f) is TranscriptionFrame)


def wav_frames(path, ms: int = 20) -> tuple[list[InputAudioRawFrame], int]:
    """The WAV file as the input transport would deliver it: 20 ms InputAudioRawFrames."""
    with wave.open(str(path)) as w:
        rate, data = w.getframerate(), w.readframes(w.getnframes())
    step = rate * ms // 1000 * 2
    return [InputAudioRawFrame(audio=data[i:i + step], sample_rate=rate, num_channels=1)
            for i in range(0, len(data), step)], rate


async def run_pipeline(stt, path, expected: str, tail: list[Frame] = ()) -> Collect:
    """WAV -> stt -> Collect; ends the pipeline once the finals hold `expected` (or on timeout)."""
    frames, rate = wav_frames(path)
    collect = Collect()
    worker = PipelineWorker(Pipeline([stt, collect]), params=PipelineParams(audio_in_sample_rate=rate),
                            cancel_on_idle_timeout=False, enable_rtvi=False)
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _started(worker, frame):
        started.set()

    async def feed() -> None:
        await asyncio.wait_for(started.wait(), TIMEOUT)
        for frame in frames:
            await worker.queue_frame(frame)
        for frame in tail:
            await worker.queue_frame(frame)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        while not same_words(collect.finals(), expected) and loop.time() < deadline:
            collect.changed.clear()
            try:
                await asyncio.wait_for(collect.changed.wait(), max(0.1, deadline - loop.time()))
            except asyncio.TimeoutError:
                break
        await worker.queue_frame(EndFrame())

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await asyncio.wait_for(asyncio.gather(runner.run(), feed()), 2 * TIMEOUT)
    return collect


async def test_deepgram_stt_service(engine_factory, two_utterances, tmp_path):
    from pipecat.services.deepgram.stt import DeepgramSTTService

    engine, model = engine_factory(4)
    async with running_server(engine, model) as app:
        expected = await native_text(app, two_utterances)
        stt = DeepgramSTTService(api_key="unused", base_url=f"ws://127.0.0.1:{app.ports['ws']}",
                                 settings=DeepgramSTTService.Settings(endpointing=300))
        wav = write_wav(tmp_path / "speech.wav", two_utterances, RATE)
        # the local VAD's end of speech: Pipecat sends Finalize, whose answer closes the last segment
        collect = await run_pipeline(stt, wav, expected, tail=[VADUserStoppedSpeakingFrame()])
        finals = [f for f in collect.frames if type(f) is TranscriptionFrame]
        assert not [f for f in collect.frames if isinstance(f, ErrorFrame)]
        assert len(finals) >= 2 and same_words(collect.finals(), expected)
        assert any(isinstance(f, InterimTranscriptionFrame) for f in collect.frames)  # Pipecat asks for interims
        assert all(f.result.metadata.request_id == finals[0].result.metadata.request_id for f in finals)


async def test_openai_realtime_stt_service(engine_factory, two_utterances_24k, tmp_path):
    pytest.importorskip("openai")
    from pipecat.services.openai.stt import OpenAIRealtimeSTTService

    engine, model = engine_factory(4)
    async with running_server(engine, model) as app:
        expected = await native_text(app, two_utterances_24k, RATE_24K)
        stt = OpenAIRealtimeSTTService(api_key="unused", base_url=f"ws://127.0.0.1:{app.ports['ws']}/v1/realtime",
                                       turn_detection={"type": "server_vad", "silence_duration_ms": 500})
        wav = write_wav(tmp_path / "speech24k.wav", two_utterances_24k, RATE_24K)
        collect = await run_pipeline(stt, wav, expected)
        finals = [f for f in collect.frames if type(f) is TranscriptionFrame]
        assert not [f for f in collect.frames if isinstance(f, ErrorFrame)]
        assert len(finals) >= 2 and same_words(collect.finals(), expected)
        deltas = [f for f in collect.frames if isinstance(f, InterimTranscriptionFrame)]
        assert "".join(f.text for f in deltas).replace(" ", "") == collect.finals().replace(" ", "")


def test_frames_from_the_wav_cover_it(two_utterances, tmp_path):
    frames, rate = wav_frames(write_wav(tmp_path / "s.wav", two_utterances, RATE))
    assert rate == RATE and sum(f.num_frames for f in frames) == len(two_utterances)
    assert np.frombuffer(frames[0].audio, "<i2").size == RATE // 50
