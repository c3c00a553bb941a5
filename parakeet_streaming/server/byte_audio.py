"""Raw audio that arrives as a byte stream cut anywhere (Deepgram binary frames, OpenAI
`input_audio_buffer.append` chunks): a sample split across two messages is kept until it is whole,
never dropped or refused."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from parakeet_streaming import audio

SAMPLE_BYTES = {"pcm16": 2, "mulaw": 1, "alaw": 1}


@dataclass
class ByteAudio:
    encoding: str  # an `audio.decode` name with a fixed sample size: pcm16, mulaw, alaw
    _carry: bytes = b""

    @property
    def sample_bytes(self) -> int:
        return SAMPLE_BYTES[self.encoding]

    def decode(self, data: bytes) -> np.ndarray:
        """The whole samples of (carry + data) as float32; the rest waits for the next call."""
        data = self._carry + data
        cut = len(data) - len(data) % self.sample_bytes
        self._carry = data[cut:]
        return audio.decode(data[:cut], self.encoding)
