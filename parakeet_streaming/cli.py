"""`parakeet-server serve | transcribe`."""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from dataclasses import fields, replace
from typing import Sequence

from parakeet_streaming.config import ServerConfig

EXIT_USAGE = 2


def _context_size(text: str) -> tuple[int, int]:
    try:
        left, right = (int(v) for v in text.replace("[", "").replace("]", "").split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected LEFT,RIGHT (e.g. 70,1), got {text!r}") from exc
    return left, right


def _add_model_flags(p: argparse.ArgumentParser, d: ServerConfig) -> None:
    p.add_argument("--model-size", choices=["small", "large"], default=d.model_size,
                   help="which released model to use (default: %(default)s)")
    p.add_argument("--model", default=d.model, help="path to a .nemo file or folder, or a model name; "
                   "overrides --model-size")
    p.add_argument("--load-format", choices=["auto", "dummy"], default=d.load_format,
                   help="dummy: the real architecture with random weights, no download")
    p.add_argument("--revision", default=d.revision, help="Hugging Face revision of a named model")
    p.add_argument("--att-context-size", type=_context_size, default=d.att_context_size, metavar="LEFT,RIGHT",
                   help="attention context (lookahead) to stream with, one the checkpoint was trained with")
    p.add_argument("--device", default=d.device, help="cpu, cuda, cuda:1, ... (default: %(default)s)")
    p.add_argument("--dtype", default=d.dtype,
                   help="float32 (exact) | bfloat16 | float16: lower precision for the encoder, "
                        "see docs/performance.md (default: %(default)s)")


def _add_endpoint_flags(p: argparse.ArgumentParser, d: ServerConfig) -> None:
    p.add_argument("--endpoint-silence-ms", type=int, default=d.endpoint_silence_ms, metavar="MS",
                   help="end an utterance after this much trailing silence (0: off; default: off for "
                   "models with an <EOU> token, 500 for the others)")
    p.add_argument("--endpoint-signal", choices=["vad", "tokens", "either"], default=d.endpoint_signal,
                   help="what counts as silence: Silero VAD, no decoded token, or either (default: %(default)s)")
    p.add_argument("--vad-threshold", type=float, default=d.vad_threshold,
                   help="VAD speech probability threshold (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    d = ServerConfig()
    parser = argparse.ArgumentParser(prog="parakeet-server", description="Streaming speech recognition server")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the streaming server")
    serve.add_argument("--host", default=d.host)
    serve.add_argument("--port", type=int, default=d.port, help="raw TCP port (default: %(default)s)")
    serve.add_argument("--ws-port", type=int, default=d.ws_port, help="WebSocket port (default: %(default)s)")
    serve.add_argument("--status-port", type=int, default=d.status_port, help="status port (default: %(default)s)")
    serve.add_argument("--http-port", type=int, default=d.http_port,
                       help="HTTP port: /healthz, /readyz, /metrics (default: %(default)s)")
    _add_model_flags(serve, d)
    serve.add_argument("--sample-rate", type=int, default=d.sample_rate,
                       help="the rate clients send unless they declare another (default: %(default)s)")
    serve.add_argument("--max-num-streams", type=int, default=d.max_num_streams)
    serve.add_argument("--max-stream-seconds", type=float, default=d.max_stream_seconds)
    serve.add_argument("--idle-timeout", type=float, default=d.idle_timeout,
                       help="seconds without a client message before the stream is closed (0: never)")
    serve.add_argument("--handshake-timeout", type=float, default=d.handshake_timeout,
                       help="seconds a connection may stay without sending audio (it holds no stream slot "
                       "until then; 0: no limit; default: %(default)s)")
    serve.add_argument("--max-pending-connections", type=int, default=d.max_pending_connections, metavar="N",
                       help="connections that have sent no audio yet, server-wide (default: 4 x --max-num-streams)")
    serve.add_argument("--max-message-bytes", type=int, default=d.max_message_bytes)
    serve.add_argument("--log-level", default=d.log_level, choices=["debug", "info", "warning", "error"])
    _add_endpoint_flags(serve, d)
    serve.add_argument("--api-key", dest="api_keys", action="append", default=[], metavar="KEY",
                       help="require this API key from clients (repeatable); see docs/operations.md")
    serve.add_argument("--api-key-file", default=d.api_key_file, metavar="PATH",
                       help="file with one API key per line (blank lines and # comments ignored)")
    serve.add_argument("--ssl-certfile", default=d.ssl_certfile, metavar="PEM",
                       help="TLS certificate (chain): every port speaks TLS (wss://, https://)")
    serve.add_argument("--ssl-keyfile", default=d.ssl_keyfile, metavar="PEM",
                       help="private key of --ssl-certfile (if not inside it)")
    serve.add_argument("--drain-seconds", type=float, default=d.drain_seconds,
                       help="after SIGTERM, how long open streams may go on before they are finalized "
                       "(default: %(default)s)")

    tr = sub.add_parser("transcribe", help="transcribe a WAV file offline and print the text")
    tr.add_argument("audio", metavar="AUDIO.wav")
    _add_model_flags(tr, d)
    _add_endpoint_flags(tr, d)
    tr.add_argument("--json", action="store_true", help="print the full result as JSON")
    return parser


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    names = {f.name for f in fields(ServerConfig)}
    return ServerConfig(**{k: v for k, v in vars(args).items() if k in names})


def _serve(args: argparse.Namespace) -> int:
    from parakeet_streaming.server.app import run

    return run(config_from_args(args))


def _transcribe(args: argparse.Namespace) -> int:
    from parakeet_streaming import audio

    logging.basicConfig(level=logging.WARNING)
    try:
        samples, rate = audio.read_wav(args.audio)
    except (OSError, audio.AudioError) as exc:
        print(f"parakeet-server transcribe: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from parakeet_streaming.engine.handle import transcribe
    from parakeet_streaming.server import transcript_formats as fmt
    from parakeet_streaming.server.app import build_engine, load

    config = replace(config_from_args(args), max_num_streams=1)
    model = load(config)
    samples = audio.resample(samples, rate, model.config.sample_rate)
    engine = build_engine(model, config)  # with the endpointing flags: utterances end as when served
    engine.start()
    try:
        result = fmt.collect(asyncio.run(transcribe(engine, samples)), len(samples) / model.config.sample_rate)
    finally:
        engine.shutdown()
    print(json.dumps(fmt.cli_json(result), ensure_ascii=False) if args.json else result.text)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    return _transcribe(args)


if __name__ == "__main__":
    sys.exit(main())
