"""Checks that need no model, run before anything is loaded: a bad flag, a busy port or a missing
device fails at once with one line that says what to do, instead of after the model has loaded."""
from __future__ import annotations

import socket
from pathlib import Path

from parakeet_streaming.config import ConfigError, ModelConfig, ServerConfig
from parakeet_streaming.model.catalog import NAMED_MODELS


class PreflightError(ValueError):
    """A flag that cannot work; the message reads `<what> (<what to do>)`."""


def check_serve(config: ServerConfig) -> None:
    check_model_flags(config)
    read_keyterms_file(config.keyterms_file)
    check_ports(config)
    check_device(config.device)


def check_model_flags(config: ServerConfig) -> None:
    source = config.model or config.model_size
    name = source.removeprefix("seed:")
    if config.load_format == "dummy" and source not in NAMED_MODELS:
        raise PreflightError(f"--load-format dummy builds a named model, not {source!r} "
                             f"(use --model-size {' or '.join(NAMED_MODELS)})")
    if name not in NAMED_MODELS and not Path(source).expanduser().exists():
        raise PreflightError(f"--model {source}: no such file or folder (pass a .nemo file, an unpacked "
                             f"checkpoint folder, or one of {', '.join(NAMED_MODELS)})")
    if config.att_context_size is not None:
        _check_att_context(config.att_context_size, NAMED_MODELS[name].config if name in NAMED_MODELS else None)
    if config.cuda_graphs and not config.device.startswith("cuda"):
        raise PreflightError(f"--cuda-graphs needs --device cuda (got {config.device}): elsewhere it "
                             "would only pad batches")


def _check_att_context(size: tuple[int, int], nemo_config: dict | None) -> None:
    left, right = size
    flag = f"--att-context-size {left},{right}"
    if left < 0 or right < 0 or left % (right + 1):
        raise PreflightError(f"{flag}: LEFT must be a non-negative multiple of RIGHT+1 (e.g. 70,1)")
    if nemo_config is not None:
        try:
            ModelConfig.from_nemo(nemo_config).with_att_context_size(size)
        except ConfigError as exc:
            raise PreflightError(f"{flag}: {exc}") from exc


def check_ports(config: ServerConfig) -> None:
    """Every listener's port is free on --host (0: the OS picks one, nothing to check)."""
    seen: dict[int, str] = {}
    for flag, port in (("--port", config.port), ("--ws-port", config.ws_port),
                       ("--status-port", config.status_port), ("--http-port", config.http_port)):
        if not port:
            continue
        if port in seen:
            raise PreflightError(f"{seen[port]} and {flag} are both {port} (give each listener its own port)")
        seen[port] = flag
        _check_free(config.host, port, flag)


def _check_free(host: str, port: int, flag: str) -> None:
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise PreflightError(f"--host {host}: cannot resolve it ({exc.strerror}; use an address such as "
                             "0.0.0.0 or 127.0.0.1)") from exc
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the listeners bind
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise PreflightError(f"cannot listen on {host}:{port} ({flag}): {exc.strerror} (stop what "
                                     f"uses the port or choose another with {flag})") from exc


def check_device(device: str) -> None:
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise PreflightError(f"--device {device}: not a device name (use cpu, cuda, cuda:N or mps)") from exc
    if dev.type == "cuda":
        if torch.version.cuda is None and torch.version.hip is None:
            raise PreflightError(f"--device {device}: this PyTorch ({torch.__version__}) is a build without "
                                 "CUDA (install a CUDA build of torch, see the README, or use --device cpu)")
        visible = torch.cuda.device_count()
        if visible == 0:
            raise PreflightError(f"--device {device}: no CUDA GPU is visible (check the driver and "
                                 "CUDA_VISIBLE_DEVICES, or use --device cpu)")
        if dev.index is not None and dev.index >= visible:
            raise PreflightError(f"--device {device}: only {visible} CUDA GPU(s) are visible "
                                 f"(use cuda:0 to cuda:{visible - 1})")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise PreflightError(f"--device {device}: MPS is not available here (use --device cpu)")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise PreflightError(f"--device {device}: unsupported device type (use cpu, cuda, cuda:N or mps)")


def read_keyterms_file(path: str | None) -> tuple[str | tuple[str, float], ...]:
    """--keyterms-file: one key term per line, `phrase` or `phrase:weight`; blank lines and `#`
    comments are skipped. Whether the model can spell them is checked once it is loaded (Engine)."""
    if not path:
        return ()
    from parakeet_streaming.model.boosting import MAX_KEYTERM_CHARS, MAX_KEYTERMS, KeytermError, parse_weighted

    flag = f"--keyterms-file {path}"
    try:
        lines = Path(path).expanduser().read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise PreflightError(f"{flag}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise PreflightError(f"{flag}: {exc.strerror} (give a text file with one key term per line)") from exc
    terms = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            term = parse_weighted(line)
        except KeytermError as exc:
            raise PreflightError(f"{flag} line {number}: {exc}") from exc
        text = term if isinstance(term, str) else term[0]
        if not text or len(text) > MAX_KEYTERM_CHARS:
            raise PreflightError(f"{flag} line {number}: a key term is 1 to {MAX_KEYTERM_CHARS} characters")
        terms.append(term)
    if len(terms) > MAX_KEYTERMS:
        raise PreflightError(f"{flag}: {len(terms)} key terms; at most {MAX_KEYTERMS} per stream, the "
                             "server's and the stream's own together")
    return tuple(terms)
