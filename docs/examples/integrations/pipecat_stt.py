#!/usr/bin/env python3
"""Transcribe a WAV file in a Pipecat pipeline with DeepgramSTTService or OpenAIRealtimeSTTService,
pointed at parakeet-server by their `base_url`.

    pip install "pipecat-ai[deepgram,openai]"
    python pipecat_stt.py speech.wav --service deepgram --url ws://localhost:8000
    python pipecat_stt.py speech24k.wav --service openai --url ws://localhost:8000

The file (16-bit PCM mono) is fed as the input transport would feed it: 20 ms InputAudioRawFrames.
At its end the example sends the VADUserStoppedSpeakingFrame a local VAD would send, on which both
services close the open segment (Deepgram: `Finalize`; OpenAI: `input_audio_buffer.commit`), and
ends the pipeline once no transcription has come for `--settle` seconds. Prints `partial: <text>`
per InterimTranscriptionFrame, `segment: <text>` per TranscriptionFrame, `final: <segments joined>`.
"""
from __future__ import annotations

import argparse
import asyncio
import wave

from pipecat.frames.frames import (EndFrame, Frame, InputAudioRawFrame, InterimTranscriptionFrame, TranscriptionFrame,
                                   VADUserStoppedSpeakingFrame)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner


class Printer(FrameProcessor):
    def __init__(self) -> None:
        super().__init__()
        self.segments: list[str] = []
        self.last = asyncio.get_running_loop().time()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TranscriptionFrame):
            self.segments.append(frame.text)
            print(f"segment: {frame.text}", flush=True)
        elif isinstance(frame, InterimTranscriptionFrame):
            print(f"partial: {frame.text}", flush=True)
        if isinstance(frame, (TranscriptionFrame, InterimTranscriptionFrame)):
            self.last = asyncio.get_running_loop().time()
        await self.push_frame(frame, direction)


def make_stt(service: str, url: str, api_key: str):
    if service == "deepgram":
        from pipecat.services.deepgram.stt import DeepgramSTTService

        return DeepgramSTTService(api_key=api_key, base_url=url)  # a host: the SDK adds /v1/listen
    from pipecat.services.openai.stt import OpenAIRealtimeSTTService

    # turn_detection=False (the default): turns end where the pipeline's VAD says, by commits
    return OpenAIRealtimeSTTService(api_key=api_key, base_url=f"{url}/v1/realtime")


async def main(args: argparse.Namespace) -> None:
    with wave.open(args.wav, "rb") as w:
        rate, pcm = w.getframerate(), w.readframes(w.getnframes())
    printer = Printer()
    worker = PipelineWorker(Pipeline([make_stt(args.service, args.url, args.api_key), printer]),
                            params=PipelineParams(audio_in_sample_rate=rate), enable_rtvi=False)
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def on_started(worker, frame):
        started.set()

    async def feed() -> None:
        await started.wait()
        step = rate // 50 * 2  # 20 ms
        for i in range(0, len(pcm), step):
            await worker.queue_frame(InputAudioRawFrame(audio=pcm[i:i + step], sample_rate=rate, num_channels=1))
        await worker.queue_frame(VADUserStoppedSpeakingFrame())
        loop = asyncio.get_running_loop()
        printer.last = loop.time()
        while loop.time() - printer.last < args.settle:
            await asyncio.sleep(0.1)
        await worker.queue_frame(EndFrame())

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await asyncio.gather(runner.run(), feed())
    print(f"final: {' '.join(printer.segments)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wav")
    parser.add_argument("--service", choices=("deepgram", "openai"), default="deepgram")
    parser.add_argument("--url", default="ws://localhost:8000", help="the server's WebSocket port")
    parser.add_argument("--api-key", default="none", help="the server's --api-key, if it has one")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds without a transcription before ending")
    asyncio.run(main(parser.parse_args()))
