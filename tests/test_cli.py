"""cli.py: flags, defaults, transcribe's error handling."""
from __future__ import annotations

import pytest

from parakeet_streaming.cli import build_parser, config_from_args, main
from parakeet_streaming.config import ServerConfig


def test_serve_defaults_come_from_server_config():
    config = config_from_args(build_parser().parse_args(["serve"]))
    assert config == ServerConfig()


def test_serve_flags():
    args = build_parser().parse_args([
        "serve", "--host", "127.0.0.1", "--port", "1", "--ws-port", "2", "--status-port", "3", "--device", "cuda",
        "--dtype", "bfloat16", "--model-size", "large", "--model", "/x.nemo", "--load-format", "dummy",
        "--revision", "r1", "--att-context-size", "70,6", "--sample-rate", "8000", "--max-num-streams", "5",
        "--max-stream-seconds", "60", "--idle-timeout", "0", "--log-level", "debug"])
    c = config_from_args(args)
    assert (c.host, c.port, c.ws_port, c.status_port) == ("127.0.0.1", 1, 2, 3)
    assert (c.device, c.dtype, c.model_size, c.model, c.load_format, c.revision) == (
        "cuda", "bfloat16", "large", "/x.nemo", "dummy", "r1")
    assert c.att_context_size == (70, 6) and c.sample_rate == 8000 and c.max_num_streams == 5
    assert c.max_stream_seconds == 60 and c.idle_timeout == 0 and c.log_level == "debug"


def test_bad_att_context_size_is_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["serve", "--att-context-size", "seventy"])
    assert exc.value.code == 2
    assert "LEFT,RIGHT" in capsys.readouterr().err


def test_transcribe_non_wav_exits_2(tmp_path, capsys):
    bogus = tmp_path / "song.mp3"
    bogus.write_bytes(b"ID3" + bytes(100))
    assert main(["transcribe", str(bogus)]) == 2
    assert "not a WAV file" in capsys.readouterr().err


def test_transcribe_missing_file_exits_2(tmp_path, capsys):
    assert main(["transcribe", str(tmp_path / "nope.wav")]) == 2
    assert "nope.wav" in capsys.readouterr().err


def test_transcribe_refuses_cuda_graphs_off_cuda(speech_wav, capsys):
    """The model flags are checked alike for serve and transcribe: --cuda-graphs needs a CUDA device."""
    assert main(["transcribe", str(speech_wav), "--load-format", "dummy", "--cuda-graphs"]) == 2
    assert "--cuda-graphs needs --device cuda" in capsys.readouterr().err


def test_operations_flags():
    args = build_parser().parse_args([
        "serve", "--http-port", "0", "--api-key", "k1", "--api-key", "k2", "--api-key-file", "/keys",
        "--ssl-certfile", "/c.pem", "--ssl-keyfile", "/k.pem", "--drain-seconds", "2.5"])
    c = config_from_args(args)
    assert (c.http_port, c.api_keys, c.api_key_file) == (0, ["k1", "k2"], "/keys")
    assert (c.ssl_certfile, c.ssl_keyfile, c.drain_seconds) == ("/c.pem", "/k.pem", 2.5)
    assert ServerConfig().http_port == 8080 and ServerConfig().api_keys == []
