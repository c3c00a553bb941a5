"""SentencePiece tokenizer with the special pieces of the EOU model family found by name."""
from __future__ import annotations

import functools
from pathlib import Path

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as spm_pb2

EOU_PIECE = "<EOU>"
EOB_PIECE = "<EOB>"


class Tokenizer:
    """Token ids <-> text. `blank_id` (== vocab_size) is the RNNT blank, not a SentencePiece id."""

    def __init__(self, model_proto: bytes) -> None:
        self._sp = spm.SentencePieceProcessor()
        self._sp.LoadFromSerializedProto(model_proto)
        self.model_proto = model_proto
        self.vocab_size: int = self._sp.GetPieceSize()
        self.blank_id: int = self.vocab_size
        self.eou_id: int | None = self._find(EOU_PIECE)
        self.eob_id: int | None = self._find(EOB_PIECE)
        self._special = {i for i in (self.eou_id, self.eob_id) if i is not None}

    @classmethod
    def from_file(cls, path: str | Path) -> "Tokenizer":
        return cls(Path(path).read_bytes())

    @classmethod
    def synthetic(cls, vocab_size: int, special_pieces: tuple[str, ...] = ()) -> "Tokenizer":
        """A deterministic tokenizer of exactly `vocab_size` pieces, for dummy-weight models.

        Built directly as a SentencePiece model (no training), with `special_pieces` appended last
        as user-defined pieces, the way the EOU checkpoints append `<EOU>` and `<EOB>`.
        """
        proto = spm_pb2.ModelProto()
        proto.trainer_spec.model_type = spm_pb2.TrainerSpec.UNIGRAM
        proto.trainer_spec.vocab_size = vocab_size
        proto.normalizer_spec.name = "identity"
        proto.normalizer_spec.add_dummy_prefix = True
        proto.normalizer_spec.remove_extra_whitespaces = True
        unk = proto.pieces.add()
        unk.piece, unk.score, unk.type = "<unk>", 0.0, spm_pb2.ModelProto.SentencePiece.UNKNOWN
        letters = "abcdefghijklmnopqrstuvwxyz'"
        ordinary = vocab_size - 1 - len(special_pieces)
        names: list[str] = ["▁"] + [c for c in letters] + ["▁" + c for c in letters]
        i = 0
        while len(names) < ordinary:
            a, b = letters[i % 26], letters[(i // 26) % 26]
            names.append(("▁" if i % 2 else "") + a + b + str(i // 676 or ""))
            i += 1
        for n, name in enumerate(names[:ordinary]):
            p = proto.pieces.add()
            p.piece, p.score = name, -float(n) / 100.0
        for name in special_pieces:
            p = proto.pieces.add()
            p.piece, p.score, p.type = name, 0.0, spm_pb2.ModelProto.SentencePiece.USER_DEFINED
        return cls(proto.SerializeToString())

    def _find(self, piece: str) -> int | None:
        idx = self._sp.PieceToId(piece)
        return idx if self._sp.IdToPiece(idx) == piece else None

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special

    def is_text(self, token_id: int) -> bool:
        """Does `decode` keep this id (not special, not out of range)?"""
        return 0 <= token_id < self.vocab_size and token_id not in self._special

    def decode(self, ids: list[int]) -> str:
        """Text of `ids` with special pieces and out-of-range ids removed."""
        return self._sp.DecodeIds([i for i in ids if self.is_text(i)])

    def decode_continuation(self, ids: list[int]) -> str | None:
        """Text of `ids` as it reads after earlier text (a leading word-start piece is a space, not
        dropped as the start of a transcript); None if the vocabulary has no piece to anchor it."""
        if self._anchor is None:
            return None
        anchor, anchor_text = self._anchor
        return self._sp.DecodeIds([anchor, *(i for i in ids if self.is_text(i))])[len(anchor_text):]

    @functools.cached_property
    def _anchor(self) -> tuple[int, str] | None:
        """An ordinary piece that is not a word start, with its text."""
        sp = self._sp
        for i in range(self.vocab_size):
            if i in self._special or sp.IsUnknown(i) or sp.IsControl(i) or sp.IsByte(i) or sp.IsUnused(i):
                continue
            piece, text = sp.IdToPiece(i), sp.DecodeIds([i])
            if text and not piece.startswith("\u2581") and text == piece:
                return i, text
        return None

    def encode(self, text: str) -> list[int]:
        return self._sp.EncodeAsIds(text)

    def id_to_piece(self, token_id: int) -> str:
        return self._sp.IdToPiece(token_id)
