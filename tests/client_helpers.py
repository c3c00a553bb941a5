"""Shared by the client tests: the reference transcript from `parakeet-server transcribe`."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from test_loader import write_nemo

SERVER_CLI = [sys.executable, "-m", "parakeet_streaming.cli"]


def offline_transcript(model, wav: Path, workdir: Path) -> str:
    """What `parakeet-server transcribe WAV` prints with `model` (saved as a .nemo file)."""
    nemo = write_nemo(model, workdir / "tiny.nemo")
    out = subprocess.run(SERVER_CLI + ["transcribe", str(wav), "--model", str(nemo)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    text = out.stdout.strip()
    assert text  # the tiny model is calibrated to emit tokens on this speech
    return text
