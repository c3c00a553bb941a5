"""--keyterms-file: the file's format, its checks before anything loads (one line, exit 2), and the
flag's environment variable and config-file key. tests/test_keyterms_server.py applies such a list."""
from __future__ import annotations

import pytest

from parakeet_streaming.cli import config_from_args, main, parse_args
from parakeet_streaming.preflight import PreflightError, read_keyterms_file


def test_one_phrase_per_line_with_an_optional_weight(tmp_path) -> None:
    path = tmp_path / "terms.txt"
    path.write_text("# product names\nparakeet\n\n  good morning  \nkitchen window: 2.5\n   # indented comment\n")
    assert read_keyterms_file(str(path)) == ("parakeet", "good morning", ("kitchen window", 2.5))
    assert read_keyterms_file(None) == ()


@pytest.mark.parametrize("text, words", [
    ("fine\nbad:lots\n", "line 2: 'bad:lots': the weight after ':' must be a number"),
    ("zero:0\n", "line 1: 'zero:0': the weight after ':' must be a number in (0, 100]"),
    (":3\n", "line 1: a key term is 1 to 200 characters"),
    ("x" * 201 + "\n", "line 1: a key term is 1 to 200 characters"),
    ("".join(f"term{i}\n" for i in range(1001)), "1001 key terms; at most 1000 per stream, the server's and the stream's own together"),
])
def test_a_bad_file_says_which_line(tmp_path, text: str, words: str) -> None:
    path = tmp_path / "terms.txt"
    path.write_text(text)
    with pytest.raises(PreflightError) as info:
        read_keyterms_file(str(path))
    assert str(info.value) == f"--keyterms-file {path}{' ' if words.startswith('line') else ': '}{words}"


def test_unreadable_files(tmp_path) -> None:
    with pytest.raises(PreflightError, match="No such file"):
        read_keyterms_file(str(tmp_path / "missing.txt"))
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(PreflightError, match="not UTF-8"):
        read_keyterms_file(str(tmp_path / "latin1.txt"))


@pytest.mark.parametrize("command", [["serve"], ["transcribe", "clip.wav"]])
def test_serve_and_transcribe_refuse_a_bad_file_in_one_line(tmp_path, capsys, command) -> None:
    path = tmp_path / "terms.txt"
    path.write_text("hello:-1\n")
    assert main([*command, "--keyterms-file", str(path)], environ={}) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"parakeet-server: --keyterms-file {path} line 1: 'hello:-1': the weight after ':' must be " \
                  "a number in (0, 100]"


def test_the_flag_the_environment_and_the_config_file(tmp_path) -> None:
    config = tmp_path / "server.yaml"
    config.write_text("keyterms-file: /from/yaml.txt\n")
    assert config_from_args(parse_args(["serve", "--config", str(config)], environ={})).keyterms_file == "/from/yaml.txt"
    env = {"PARAKEET_KEYTERMS_FILE": "/from/env.txt"}
    assert config_from_args(parse_args(["serve", "--config", str(config)], environ=env)).keyterms_file == "/from/env.txt"
    args = parse_args(["serve", "--keyterms-file", "/flag.txt"], environ=env)
    assert config_from_args(args).keyterms_file == "/flag.txt"


def test_transcribe_with_a_keyterms_file_gives_nemos_boosted_tokens(tmp_path) -> None:
    """The flag reaches the engine: `parakeet-server transcribe --keyterms-file` decodes the NeMo-saved
    small model's fixture with NeMo's tokens for that list; a term the model cannot spell is one
    line, exit 2."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    import numpy as np
    from integration_helpers import write_wav

    golden = Path(__file__).parent / "golden"
    case = golden / "keyterms" / "small_R1.json"
    if not case.exists():
        pytest.skip("no key-term references (run scripts/make_golden.py --keyterms)")
    stream = json.loads(case.read_text())["streams"][1]  # NeMo's default scores, plain phrases
    samples = dict(np.load(golden / "small" / "ref_speech_R1.npz"))["samples"]
    wav = write_wav(tmp_path / "speech.wav", samples, 16000)  # the samples are pcm16 values: exact
    terms = tmp_path / "terms.txt"
    cmd = [sys.executable, "-m", "parakeet_streaming.cli", "transcribe", str(wav), "--model",
           str(golden / "small" / "model.nemo"), "--att-context-size", "70,1", "--keyterms-file", str(terms)]

    terms.write_text("".join(f"{t}\n" for t in stream["keyterms"]))
    out = subprocess.run(cmd + ["--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["token_ids"] == stream["offline_tokens"]

    terms.write_text("good\nNVIDIA\n")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("parakeet-server: --keyterms-file") and \
        "cannot be spelled" in lines[0], out.stderr
