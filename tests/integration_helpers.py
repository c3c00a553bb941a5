"""Shared by the Deepgram / OpenAI Realtime endpoint tests: speech with two utterances (a long pause
between them, trailing silence so a silence endpointer closes the last one), the same audio at
24 kHz, and the native protocol's transcript of it on the same server."""
from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest
from conftest import espeak_wav, read_wav
from server_helpers import finals, pcm16, transcribe_over

from parakeet_streaming import audio

RATE, RATE_24K = 16000, 24000


@pytest.fixture(scope="session")
def two_utterances(speech_dir: Path) -> np.ndarray:
    """~3.5 s: two phrases 1.2 s apart, then 1.5 s of silence (16 kHz float32)."""
    first = read_wav(espeak_wav("hello world, this is a test", speech_dir / "utt1.wav"))
    second = read_wav(espeak_wav("turn the lights off please", speech_dir / "utt2.wav"))
    gap, tail = np.zeros(int(1.2 * RATE), np.float32), np.zeros(int(1.5 * RATE), np.float32)
    return np.concatenate([first, gap, second, tail])


@pytest.fixture(scope="session")
def two_utterances_24k(two_utterances: np.ndarray) -> np.ndarray:
    return audio.resample(two_utterances, RATE, RATE_24K)


def write_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm16(samples))
    return path


async def native_text(app, samples: np.ndarray, rate: int = RATE) -> str:
    """The native protocol's final transcript of `samples` (sent as pcm16 at `rate`)."""
    from server_helpers import WsClient

    client = await WsClient.open(app, f"/?sample_rate={rate}")
    hello = await client.recv()
    assert hello["type"] == "hello"
    for i in range(0, len(samples), 4096):
        await client.send(pcm16(samples[i:i + 4096]))
    await client.send({"type": "close"})
    msgs = await client.collect()
    return finals(msgs)[0]["text"]


def same_words(a: str, b: str) -> bool:
    """Equal up to where spaces fall (an utterance end inside a word splits it in two segments)."""
    return "".join(a.split()) == "".join(b.split())


__all__ = ["RATE", "RATE_24K", "native_text", "pcm16", "same_words", "transcribe_over", "write_wav"]
