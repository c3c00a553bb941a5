"""`parakeet-server serve | transcribe | download | models`.

`serve` settings come from, in this order of precedence: the command line, environment variables
(`PARAKEET_<FLAG>`, e.g. PARAKEET_WS_PORT=9000), a YAML file (`--config server.yaml`, keys are the
flag names, e.g. `ws-port: 9000`), and the defaults of `ServerConfig`.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from parakeet_streaming import __version__
from parakeet_streaming.config import DTYPE_NAMES, ServerConfig

EXIT_USAGE = 2
ENV_PREFIX = "PARAKEET_"
LOG_LEVELS = ["debug", "info", "warning", "error"]
log = logging.getLogger("parakeet_streaming.cli")


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (exit 2), not the whole usage text."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _context_size(text: str) -> tuple[int, int]:
    try:
        left, right = (int(v) for v in text.replace("[", "").replace("]", "").split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected LEFT,RIGHT (e.g. 70,1), got {text!r}") from exc
    return left, right


def _threads(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of cores, at least 1, got {text!r}")
    return int(text)


def _add_model_flags(p: argparse.ArgumentParser, d: ServerConfig) -> None:
    p.add_argument("--model-size", choices=["small", "large"], default=d.model_size,
                   help="which released model to use (default: %(default)s)")
    p.add_argument("--model", default=d.model, metavar="PATH_OR_NAME",
                   help="a .nemo file, an unpacked checkpoint folder, or a model name (small, large, "
                   "seed:small, seed:large); overrides --model-size (default: none)")
    p.add_argument("--load-format", choices=["auto", "dummy"], default=d.load_format,
                   help="dummy: the real architecture with random weights, no download (default: %(default)s)")
    p.add_argument("--revision", default=d.revision,
                   help="Hugging Face revision of a named model (default: the one pinned per model, "
                   "see `parakeet-server models`)")
    p.add_argument("--att-context-size", type=_context_size, default=d.att_context_size, metavar="LEFT,RIGHT",
                   help="attention context (lookahead) to stream with, one the checkpoint was trained with "
                   "(default: the checkpoint's first)")
    p.add_argument("--device", default=d.device, help="cpu, cuda, cuda:1, mps (default: %(default)s)")
    p.add_argument("--threads", type=_threads, default=d.threads, metavar="N",
                   help="cores the engine's torch ops use (intra-op threads; every other thread of "
                   "the server uses one; default: OMP_NUM_THREADS, else torch's count of cores)")
    p.add_argument("--cuda-graphs", action="store_true", default=d.cuda_graphs,
                   help="CUDA only: replay steady-state encoder steps as CUDA graphs at bucketed batch "
                   "sizes (docs/performance.md, GPU paths)")
    p.add_argument("--dtype", default=d.dtype, choices=list(DTYPE_NAMES), metavar="DTYPE",
                   help="float32 (exact) | bfloat16 | float16 (or fp32, bf16, fp16): lower precision for "
                        "the encoder, see docs/performance.md (default: %(default)s)")


def _add_endpoint_flags(p: argparse.ArgumentParser, d: ServerConfig) -> None:
    p.add_argument("--endpoint-silence-ms", type=int, default=d.endpoint_silence_ms, metavar="MS",
                   help="end an utterance after this much trailing silence (0: off; default: off for "
                   "models with an <EOU> token, 500 for the others)")
    p.add_argument("--endpoint-signal", choices=["vad", "tokens", "either"], default=d.endpoint_signal,
                   help="what counts as silence: Silero VAD, no decoded token, or either (default: %(default)s)")
    p.add_argument("--vad-threshold", type=float, default=d.vad_threshold,
                   help="VAD speech probability threshold (default: %(default)s)")


def _add_keyterms_flag(p: argparse.ArgumentParser, d: ServerConfig) -> None:
    p.add_argument("--keyterms-file", default=d.keyterms_file, metavar="PATH",
                   help="key terms every stream gets, one per line (`phrase` or `phrase:weight`, # comments); "
                   "a stream's own key terms add to them, see docs/keyterms.md (default: none)")


def build_parser() -> argparse.ArgumentParser:
    d = ServerConfig()
    parser = _Parser(prog="parakeet-server", description="Streaming speech recognition server")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    serve = sub.add_parser(
        "serve", help="run the streaming server", epilog="Every flag can also be set with an environment "
        "variable (PARAKEET_<FLAG>, shown with each flag) or in a YAML file given with --config (keys: the "
        "flag names without --). The command line wins over the environment, which wins over the file.")
    serve.add_argument("--config", default=None, metavar="FILE",
                       help="YAML file of settings, e.g. `ws-port: 9000` (default: none; env PARAKEET_CONFIG)")
    serve.add_argument("--host", default=d.host, help="address every listener binds (default: %(default)s)")
    serve.add_argument("--port", type=int, default=d.port, help="raw TCP port (default: %(default)s)")
    serve.add_argument("--ws-port", type=int, default=d.ws_port, help="WebSocket port (default: %(default)s)")
    serve.add_argument("--status-port", type=int, default=d.status_port, help="status port (default: %(default)s)")
    serve.add_argument("--http-port", type=int, default=d.http_port,
                       help="HTTP port: /healthz, /readyz, /metrics (default: %(default)s)")
    _add_model_flags(serve, d)
    serve.add_argument("--sample-rate", type=int, default=d.sample_rate,
                       help="the rate clients send unless they declare another (default: %(default)s)")
    serve.add_argument("--max-num-streams", type=int, default=d.max_num_streams, metavar="N",
                       help="stream slots, preallocated; more streams get server_full (default: %(default)s)")
    serve.add_argument("--max-stream-seconds", type=float, default=d.max_stream_seconds, metavar="S",
                       help="longest stream; then it is finalized with a stream_too_long error "
                       "(default: %(default)s)")
    serve.add_argument("--idle-timeout", type=float, default=d.idle_timeout,
                       help="seconds without a client message before the stream is closed (0: never)")
    serve.add_argument("--handshake-timeout", type=float, default=d.handshake_timeout,
                       help="seconds a connection may stay without sending audio (it holds no stream slot "
                       "until then; 0: no limit; default: %(default)s)")
    serve.add_argument("--max-pending-connections", type=int, default=d.max_pending_connections, metavar="N",
                       help="connections that have sent no audio yet, server-wide (default: 4 x --max-num-streams)")
    serve.add_argument("--max-message-bytes", type=int, default=d.max_message_bytes, metavar="N",
                       help="largest client message; larger ones get message_too_large (default: %(default)s)")
    serve.add_argument("--log-level", default=d.log_level, choices=LOG_LEVELS,
                       help="debug also prints the traceback of a startup error (default: %(default)s)")
    serve.add_argument("--log-format", default="text", choices=["text", "json"],
                       help="text lines, or one JSON object per line (default: %(default)s)")
    _add_endpoint_flags(serve, d)
    _add_keyterms_flag(serve, d)
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
    serve.add_argument("--instance-name", default=d.instance_name, metavar="NAME",
                       help="name this server to clients (native hello and Deepgram Metadata `instance`), e.g. "
                       "the pod name, so a client behind a load balancer sees which server it reached; not "
                       "sent when unset")

    _document_sources(serve)

    tr = sub.add_parser("transcribe", help="transcribe a WAV file offline and print the text")
    tr.add_argument("audio", metavar="AUDIO.wav")
    _add_model_flags(tr, d)
    _add_endpoint_flags(tr, d)
    _add_keyterms_flag(tr, d)
    tr.add_argument("--json", action="store_true", help="print the full result as JSON")

    from parakeet_streaming.model.catalog import NAMED_MODELS

    dl = sub.add_parser("download", help="fetch a released model into the Hugging Face cache, with "
                        "progress, and print where it is")
    dl.add_argument("name", choices=list(NAMED_MODELS), help="which model")
    dl.add_argument("--revision", default=None,
                    help="Hugging Face revision (default: the one pinned per model, see `parakeet-server models`)")
    sub.add_parser("models", help="the named models: their pinned revisions and what is cached (sizes, revisions)")
    return parser


def _document_sources(serve: argparse.ArgumentParser) -> None:
    """Every serve flag's help names its default and its environment variable."""
    for action in _settable(serve):
        text = action.help or ""
        if "default" not in text:
            text += " (default: none)" if action.default in (None, []) else " (default: %(default)s)"
        action.help = f"{text} [env {env_name(action)}]"


def _settable(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.dest not in ("help", "config")]


def env_name(action: argparse.Action) -> str:
    """--ws-port -> PARAKEET_WS_PORT (--api-key -> PARAKEET_API_KEY: comma-separated keys)."""
    return ENV_PREFIX + action.option_strings[-1].lstrip("-").upper().replace("-", "_")


def parse_args(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> argparse.Namespace:
    """The command line, with serve's settings layered: command line > environment > --config file."""
    argv = list(sys.argv[1:] if argv is None else argv)
    environ = os.environ if environ is None else environ
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "serve":
        return args
    serve = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["serve"]
    layered = _from_file(serve, args.config or environ.get(ENV_PREFIX + "CONFIG"))
    for action in _settable(serve):
        if (name := env_name(action)) in environ:
            layered[action.dest] = _convert(serve, action, environ[name], f"{name}={environ[name]!r}")
    repeated = {dest: layered.pop(dest) for dest in list(layered) if dest in _appended(serve)}
    serve.set_defaults(**layered)
    args = parser.parse_args(argv)
    for dest, values in repeated.items():  # a repeatable flag on the command line replaces, not extends
        if not getattr(args, dest):
            setattr(args, dest, values)
    return args


def _appended(parser: argparse.ArgumentParser) -> set[str]:
    return {a.dest for a in _settable(parser) if isinstance(a, argparse._AppendAction)}


def _from_file(serve: argparse.ArgumentParser, path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    import yaml

    try:
        raw = yaml.safe_load(Path(path).expanduser().read_text())
    except OSError as exc:
        serve.error(f"--config {path}: {exc.strerror}")
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        serve.error(f"--config {path}: not valid YAML{f' (line {where.line + 1})' if where else ''}")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        serve.error(f"--config {path}: expected settings as `flag-name: value` lines, e.g. `ws-port: 9000`")
    by_key = {}
    for action in _settable(serve):
        by_key[action.option_strings[-1].lstrip("-")] = action
        by_key[action.dest.replace("_", "-")] = action
    out: dict[str, Any] = {}
    for key, value in raw.items():
        action = by_key.get(str(key).replace("_", "-"))
        if action is None:
            serve.error(f"--config {path}: {key!r} is not a serve setting (the keys are the flag names "
                        "without --, e.g. ws-port)")
        out[action.dest] = _convert(serve, action, value, f"--config {path}: {key}: {value!r}")
    return out


_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _convert(parser: argparse.ArgumentParser, action: argparse.Action, value: Any, where: str) -> Any:
    """A setting from the environment (text) or a YAML file (any scalar or list), checked as the
    command line checks it."""
    if isinstance(action, argparse._AppendAction):
        items = value.split(",") if isinstance(value, str) else value if isinstance(value, list) else [value]
        return [_convert_one(parser, action, str(v).strip(), where) for v in items if str(v).strip()]
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        text = str(value).strip().lower()
        if text not in _TRUE | _FALSE:
            parser.error(f"{where}: expected true or false")
        return text in _TRUE
    if value is None:
        return None
    if isinstance(value, list):
        value = ",".join(str(v) for v in value)
    return _convert_one(parser, action, str(value), where)


def _convert_one(parser: argparse.ArgumentParser, action: argparse.Action, text: str, where: str) -> Any:
    try:
        value = action.type(text) if action.type else text
    except argparse.ArgumentTypeError as exc:
        parser.error(f"{where}: {exc}")
    except (TypeError, ValueError):
        parser.error(f"{where}: expected {'an integer' if action.type is int else 'a number'}")
    if action.choices is not None and value not in action.choices:
        parser.error(f"{where}: choose from {', '.join(map(str, action.choices))}")
    return value


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    names = {f.name for f in fields(ServerConfig)}
    return ServerConfig(**{k: v for k, v in vars(args).items() if k in names})


def _serve(args: argparse.Namespace) -> int:
    from parakeet_streaming import preflight

    config = config_from_args(args)
    preflight.check_serve(config)
    source = config.model or config.model_size
    log.info("parakeet-server %s: starting with model %s%s on %s (%s)", __version__, source,
             " (dummy weights)" if config.load_format == "dummy" else "", config.device, config.dtype)
    from parakeet_streaming.server.app import run

    return run(config)


def _download(args: argparse.Namespace) -> int:
    from parakeet_streaming.model.loader import download

    print(download(args.name, args.revision))
    return 0


def _models(args: argparse.Namespace) -> int:
    from parakeet_streaming.model.loader import cached_models

    print(cached_models())
    return 0


def _transcribe(args: argparse.Namespace) -> int:
    from parakeet_streaming import audio

    logging.basicConfig(level=logging.WARNING)
    try:
        samples, rate = audio.read_wav(args.audio)
    except (OSError, audio.AudioError) as exc:
        print(f"parakeet-server transcribe: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from parakeet_streaming.engine.handle import transcribe
    from parakeet_streaming.engine.threads import reserve_for_engine
    from parakeet_streaming.server import transcript_formats as fmt
    from parakeet_streaming.server.app import build_engine, load

    config = replace(config_from_args(args), max_num_streams=1)
    threads = reserve_for_engine(config.threads)  # before the load: this thread stays off the engine's cores
    model = load(config)
    samples = audio.resample(samples, rate, model.config.sample_rate)
    engine = build_engine(model, config, threads)  # with the endpointing flags: utterances end as when served
    engine.start()
    try:
        result = fmt.collect(asyncio.run(transcribe(engine, samples)), len(samples) / model.config.sample_rate)
    finally:
        engine.shutdown()
    print(json.dumps(fmt.cli_json(result), ensure_ascii=False) if args.json else result.text)
    return 0


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = parse_args(argv, environ)
    level = getattr(args, "log_level", "info")
    if args.command != "transcribe":
        setup_logging(level, getattr(args, "log_format", "text"))
    try:
        if args.command == "transcribe":
            from parakeet_streaming import preflight

            preflight.check_model_flags(config_from_args(args))
            preflight.read_keyterms_file(args.keyterms_file)
            preflight.check_device(args.device)
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if not isinstance(exc, _user_errors()):
            raise
        if level == "debug":
            log.exception("startup failed")
        one_line = "; ".join(part.strip() for part in str(exc).splitlines() if part.strip())
        print(f"parakeet-server: {one_line}", file=sys.stderr)
        return EXIT_USAGE


COMMANDS = {"serve": _serve, "transcribe": _transcribe, "download": _download, "models": _models}


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message says what to do (bad flags, models, configs): printed in one line.
    Only modules already imported can have raised theirs, so nothing is imported here."""
    from parakeet_streaming.config import ConfigError
    from parakeet_streaming.preflight import PreflightError

    found: list[type[BaseException]] = [PreflightError, ConfigError]
    for module, name in (("parakeet_streaming.model.loader", "ModelLoadError"),
                         ("parakeet_streaming.server.security", "StartupError")):
        if module in sys.modules:
            found.append(getattr(sys.modules[module], name))
    return tuple(found)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any `extra` fields (stream_id, ...)."""

    _STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": self.formatTime(record), "level": record.levelname.lower(), "logger": record.name,
               "message": record.getMessage()}
        out.update({k: v for k, v in vars(record).items() if k not in self._STANDARD})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def setup_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


if __name__ == "__main__":
    sys.exit(main())
