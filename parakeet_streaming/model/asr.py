"""The whole model: NeMo's module tree (so state_dict keys match), its config and its tokenizer."""
from __future__ import annotations

import torch
from torch import nn

from parakeet_streaming.config import ModelConfig
from parakeet_streaming.model.encoder import ConformerEncoder
from parakeet_streaming.model.frontend import MelFrontend
from parakeet_streaming.model.rnnt import GreedyDecoder, RNNTDecoder, RNNTJoint
from parakeet_streaming.model.tokenizer import Tokenizer


class ASRModel(nn.Module):
    def __init__(self, config: ModelConfig, tokenizer: Tokenizer, name: str = "model") -> None:
        super().__init__()
        if tokenizer.vocab_size != config.decoder.vocab_size:
            raise ValueError(
                f"tokenizer has {tokenizer.vocab_size} pieces but decoder.vocab_size is "
                f"{config.decoder.vocab_size}"
            )
        self.config, self.tokenizer, self.name = config, tokenizer, name
        self.preprocessor = MelFrontend(config.features)
        self.encoder = ConformerEncoder(config.encoder)
        self.decoder = RNNTDecoder(config.decoder)
        self.joint = RNNTJoint(config.encoder.d_model, config.decoder)
        self.greedy = GreedyDecoder(self.decoder, self.joint, config.decoder.max_symbols)
        self.eval()

    def set_att_context_size(self, size: tuple[int, int] | None) -> None:
        """Stream with another trained lookahead (the default is the checkpoint's first entry)."""
        self.config = self.config.with_att_context_size(size)
        self.encoder.cfg = self.config.encoder

    @property
    def chunk_frames(self) -> int:
        """Encoder frames produced per streaming step."""
        return self.config.encoder.lookahead + 1

    @property
    def frame_ms(self) -> int:
        f = self.config.features
        return 1000 * f.hop_length * self.config.encoder.subsampling_factor // f.sample_rate

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def randomize(self, seed: int = 0, std: float = 0.05) -> None:
        """Random weights (for `--load-format dummy` and tests); the mel buffers stay exact."""
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                noise = torch.randn(p.shape, generator=g) * std
                if name.endswith("norm_out.weight") or ".norm" in name and name.endswith("weight") \
                        or name.endswith("batch_norm.weight"):
                    noise += 1.0
                p.copy_(noise.to(p.dtype))

