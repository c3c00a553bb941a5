"""`parakeet-server download` and `parakeet-server models` against a real Hugging Face cache layout
(offline: the cache is all there is)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from parakeet_streaming.model.catalog import NAMED_MODELS

CLI = [sys.executable, "-m", "parakeet_streaming.cli"]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fake_cache(root: Path, name: str, data: bytes) -> Path:
    """What huggingface_hub leaves after downloading a named model at its default revision."""
    named = NAMED_MODELS[name]
    repo = root / f"models--{named.repo.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / "b0b").write_bytes(data)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (snapshot / named.filename).symlink_to(Path("../../blobs/b0b"))
    (repo / "refs").mkdir()
    (repo / "refs" / named.revision).write_text(COMMIT)
    return snapshot / named.filename


def run(args: list[str], cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(CLI + args, capture_output=True, text=True, timeout=120, env=env)


def test_models_lists_what_is_cached_with_size_and_revision(tmp_path) -> None:
    cache = tmp_path / "hub"
    file = fake_cache(cache, "small", b"x" * 3_000_000)
    out = run(["models"], cache)
    assert out.returncode == 0, out.stderr
    small, large = out.stdout.split("\nlarge: ")
    assert f"default revision {NAMED_MODELS['small'].revision}" in small
    assert f"commit {COMMIT} ({NAMED_MODELS['small'].revision})" in small and "3 MB" in small and str(file) in small
    assert "not cached (fetch it with: parakeet-server download large)" in large
    assert str(cache) in out.stdout


def test_models_with_no_cache_at_all(tmp_path) -> None:
    out = run(["models"], tmp_path / "nothing")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("not cached") == len(NAMED_MODELS)


def test_download_prints_where_the_file_is(tmp_path) -> None:
    cache = tmp_path / "hub"
    file = fake_cache(cache, "small", b"x" * 1000)
    out = run(["download", "small"], cache)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(file)
    assert run(["download", "small", "--revision", COMMIT], cache).stdout.strip() == str(file)


def test_download_offline_without_a_copy_is_one_line(tmp_path) -> None:
    out = run(["download", "large"], tmp_path / "hub")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("parakeet-server: cannot download")
    assert "Traceback" not in out.stderr
