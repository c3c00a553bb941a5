"""Microphone capture with `sounddevice` (optional: `pip install 'parakeet-streaming[mic]'`)."""
from __future__ import annotations

import asyncio
from types import ModuleType
from typing import Any, AsyncIterator

import numpy as np


def _sounddevice() -> ModuleType:
    try:
        import sounddevice
    except (ImportError, OSError) as exc:  # sounddevice raises OSError when PortAudio is missing
        raise ImportError("microphone capture needs the `sounddevice` package and PortAudio: "
                          "pip install 'parakeet-streaming[mic]' (Debian: apt-get install libportaudio2)"
                          ) from exc
    return sounddevice


class Microphone:
    """Async iterator of float32 mono blocks from an input device.

        mic = Microphone()                      # the device's default rate
        async with StreamingClient(url, sample_rate=mic.sample_rate) as s:
            await s.stream_from(mic.blocks(stop_event))
    """

    def __init__(self, sample_rate: int | None = None, block_ms: int = 100, device: Any = None) -> None:
        self._sd = _sounddevice()
        if sample_rate is None:
            sample_rate = int(self._sd.query_devices(device, "input")["default_samplerate"])
        self.sample_rate, self.block_ms, self.device = sample_rate, block_ms, device

    async def blocks(self, stop: asyncio.Event | None = None) -> AsyncIterator[np.ndarray]:
        """Captured blocks until `stop` is set (then the blocks already captured are yielded too)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[np.ndarray | None] = asyncio.Queue()

        def callback(indata: np.ndarray, frames: int, time: Any, status: Any) -> None:  # PortAudio thread
            loop.call_soon_threadsafe(queue.put_nowait, np.array(indata[:, 0], dtype=np.float32))

        stop = stop or asyncio.Event()
        stopper = asyncio.ensure_future(stop.wait())
        stopper.add_done_callback(lambda _: queue.put_nowait(None))
        stream = self._sd.InputStream(samplerate=self.sample_rate, channels=1, dtype="float32", device=self.device,
                                      blocksize=self.sample_rate * self.block_ms // 1000, callback=callback)
        try:
            with stream:
                while (block := await queue.get()) is not None:
                    yield block
            while not queue.empty():  # blocks delivered between the stop and the device closing
                if (block := queue.get_nowait()) is not None:
                    yield block
        finally:
            stopper.cancel()
