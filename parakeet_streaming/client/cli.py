"""`parakeet-client stream FILE|--mic [--url ws://... | --tcp HOST:PORT]`: stream audio and print the
transcript live.

On a terminal the current utterance's partial text is rewritten in place on one line (after a
progress bar for files, which stays whole however long the text grows); finished utterances and the
final transcript are printed as lines below. Piped, only the lines are printed. `--json` prints
every server message as one JSON line instead.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
from typing import Callable, Sequence, TextIO

from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus, WebSocketException

from parakeet_streaming.client.aio import StreamingClient, StreamMessage
from parakeet_streaming.client.audio import AudioError, load_audio
from parakeet_streaming.client.messages import ClientError, Eou, Error, Hello, Result, ServerError

EXIT_ERROR, EXIT_USAGE = 1, 2


class Display:
    """One status line rewritten with a carriage return, and permanent lines printed above it."""

    def __init__(self, out: TextIO, live: bool) -> None:
        self.out, self.live = out, live
        self._status = ""

    def status(self, text: str, prefix: str = "") -> None:
        """`prefix` (the progress bar) is kept whole; a `text` too long for the line keeps its end."""
        if self.live:
            room = shutil.get_terminal_size((80, 24)).columns - 1 - len(prefix)
            if len(text) > room:
                text = "…" + text[len(text) - room + 1:] if room > 1 else ""
            self._status = prefix + text
            self.out.write("\r\x1b[K" + self._status)
            self.out.flush()

    def line(self, text: str) -> None:
        if self.live:
            self.out.write("\r\x1b[K" + text + "\n" + self._status)
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def close(self) -> None:
        if self.live and self._status:
            self.out.write("\r\x1b[K")
            self.out.flush()


# A few lines of our own rather than tqdm: the bar and the changing transcript share one terminal
# line, and the same line serves --mic, which has no progress at all.
def progress_bar(sent: float, total: float, width: int = 20) -> str:
    frac = min(1.0, sent / total) if total > 0 else 1.0
    filled = int(round(frac * width))
    return f"[{'#' * filled}{'.' * (width - filled)}] {frac * 100:3.0f}% {sent:.1f}/{total:.1f}s "


class Printer:
    """Turns stream messages into display updates."""

    def __init__(self, display: Display) -> None:
        self.display = display
        self.committed = ""  # transcript up to the last end of utterance
        self.text = ""
        self.progress = ""

    def on_progress(self, sent: float, total: float) -> None:
        self.progress = progress_bar(sent, total)
        self._redraw()

    def on_message(self, msg: StreamMessage) -> None:
        if isinstance(msg, Result) and not msg.is_final:
            self.text = msg.text
            self._redraw()
        elif isinstance(msg, Eou):
            kind = " (backchannel)" if msg.backchannel else ""
            self.display.line(f"utterance {msg.utterance}{kind}: {msg.text}")
            self.committed = self.text
            self._redraw()
        elif isinstance(msg, Error):
            self.display.line(f"error {msg.code}: {msg.message}")

    def _redraw(self) -> None:
        self.display.status(self.text[len(self.committed):].strip(), prefix=self.progress)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parakeet-client", description="Client for parakeet-server")
    sub = parser.add_subparsers(dest="command", required=True)
    st = sub.add_parser("stream", help="stream a WAV file or the microphone and print the transcript")
    src = st.add_mutually_exclusive_group(required=True)
    src.add_argument("file", nargs="?", help="WAV file (any rate; resampled to the server's)")
    src.add_argument("--mic", action="store_true", help="stream the microphone until Ctrl-C (needs [mic] extra)")
    st.add_argument("--url", default="ws://localhost:8000",
                    help="server WebSocket URL: its --ws-port (default: %(default)s)")
    st.add_argument("--tcp", nargs="?", const="localhost:8765", default=None, metavar="HOST:PORT",
                    help="stream over the raw TCP port instead (newline-delimited JSON; default address: "
                    "%(const)s)")
    st.add_argument("--json", action="store_true", help="print every server message as a JSON line")
    st.add_argument("--speed", type=float, default=1.0, help="file pace: 1 = real time, 0 = as fast as possible")
    st.add_argument("--chunk-ms", type=int, default=100, help="audio per message (default: %(default)s)")
    st.add_argument("--api-key", default=None, help="API key, for servers started with --api-key "
                    "(default: $PARAKEET_API_KEY)")
    st.add_argument("--device", default=None, help="input device for --mic (sounddevice name or index)")
    return parser


async def _stream(args: argparse.Namespace, out: TextIO, audio: tuple | None) -> int:
    live = not args.json and out.isatty()
    printer = Printer(Display(out, live))

    def on_message(msg: StreamMessage) -> None:
        if args.json:
            out.write(json.dumps(msg.raw, ensure_ascii=False) + "\n")
            out.flush()
        else:
            printer.on_message(msg)

    if audio is None:
        text = await _stream_mic(args, on_message, out)
    else:
        samples, rate = audio
        async with _client(args, rate) as client:
            _print_hello(client.hello, args.json, out)
            transcript = await client.transcribe(samples, speed=args.speed, chunk_ms=args.chunk_ms,
                                                 on_message=on_message,
                                                 on_progress=printer.on_progress if live else None)
        text = transcript.text
    printer.display.close()
    if not args.json:
        out.write(f"final: {text}\n")
    return 0


async def _stream_mic(args: argparse.Namespace, on_message: Callable[[StreamMessage], None], out: TextIO) -> str:
    from parakeet_streaming.client.mic import Microphone

    device = int(args.device) if args.device is not None and args.device.isdigit() else args.device
    mic = Microphone(device=device, block_ms=args.chunk_ms)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print("listening; Ctrl-C to finish", file=sys.stderr)
    try:
        async with _client(args, mic.sample_rate) as client:
            _print_hello(client.hello, args.json, out)
            sender = asyncio.create_task(client.stream_from(mic.blocks(stop)))
            text = ""
            try:
                async for msg in client.results():
                    on_message(msg)
                    if isinstance(msg, Result):
                        text = msg.text
            finally:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
            return text
    finally:
        loop.remove_signal_handler(signal.SIGINT)


def _client(args: argparse.Namespace, rate: int) -> StreamingClient:
    if args.tcp is not None:
        return TcpStreamingClient(args.tcp, sample_rate=rate, api_key=_api_key(args))
    return StreamingClient(args.url, sample_rate=rate, api_key=_api_key(args))


class _TcpLink:
    """The raw TCP port (one JSON message per line) behind the face StreamingClient uses of a
    WebSocket connection: send(text), recv() -> text, close(); ConnectionClosed at the end."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, data: str | bytes) -> None:
        if isinstance(data, bytes):
            raise TypeError("the TCP port takes JSON lines only")
        self.writer.write(data.encode() + b"\n")
        await self.writer.drain()

    async def recv(self) -> str:
        try:
            line = await self.reader.readline()
        except ConnectionError:
            line = b""
        if not line:
            raise ConnectionClosed(None, None)
        return line.decode()

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


class TcpStreamingClient(StreamingClient):
    """StreamingClient over the raw TCP port: the API key goes as the first line (`auth`), audio as
    base64 JSON (TCP has no binary messages)."""

    def __init__(self, address: str, *, sample_rate: int | None = None, api_key: str | None = None,
                 open_timeout: float = 10.0) -> None:
        super().__init__(f"tcp://{address}", sample_rate=sample_rate, binary=False, open_timeout=open_timeout)
        self._address, self._api_key = address, api_key

    async def _open(self) -> None:
        host, _, port = self._address.rpartition(":")
        if not host or not port.isdigit():
            raise ClientError(f"--tcp {self._address}: expected HOST:PORT, e.g. localhost:8765")
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port), limit=1 << 24),
                                                self._open_timeout)
        self._ws = _TcpLink(reader, writer)  # type: ignore[assignment]
        if self._api_key:
            await self.send_message({"type": "auth", "token": self._api_key})


def _wrong_port_hint(exc: Exception, args: argparse.Namespace) -> str:
    """What a handshake failure most likely means: the HTTP or the TCP port instead of the WebSocket one."""
    if isinstance(exc, InvalidStatus):
        return (f"{args.url} answered HTTP {exc.response.status_code}, not a WebSocket upgrade: is that the "
                "server's HTTP port (--http-port, default 8080)? Stream to its WebSocket port (--ws-port, "
                "default 8000), e.g. --url ws://localhost:8000")
    if isinstance(exc, InvalidMessage):
        return (f"{args.url} did not answer as a WebSocket server: is that the server's raw TCP port "
                "(--port, default 8765)? Use --tcp HOST:PORT for it, or --url ws://HOST:8000 for the "
                "WebSocket port")
    return str(exc)


def _api_key(args: argparse.Namespace) -> str | None:
    return args.api_key or os.environ.get("PARAKEET_API_KEY") or None


def _print_hello(hello: Hello, as_json: bool, out: TextIO) -> None:
    if as_json:
        out.write(json.dumps(hello.raw, ensure_ascii=False) + "\n")
    else:
        print(f"connected: stream {hello.stream_id}, model {hello.model}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        audio = None if args.mic else load_audio(args.file)
    except (OSError, AudioError) as exc:
        print(f"parakeet-client: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return asyncio.run(_stream(args, sys.stdout, audio))
    except KeyboardInterrupt:
        return EXIT_ERROR
    except ServerError as exc:
        print(f"\nparakeet-client: server error {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_ERROR
    except ClientError as exc:
        print(f"\nparakeet-client: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except ImportError as exc:  # --mic without sounddevice
        print(f"parakeet-client: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, WebSocketException) as exc:  # connection refused, bad URL, handshake failed
        print(f"parakeet-client: {_wrong_port_hint(exc, args)}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
