"""`parakeet-client stream FILE|--mic --url ws://...`: stream audio and print the transcript live.

On a terminal the current utterance's partial text is rewritten in place on one line (with a
progress bar for files); finished utterances and the final transcript are printed as lines below.
Piped, only the lines are printed. `--json` prints every server message as one JSON line instead.
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

from websockets.exceptions import WebSocketException

from parakeet_streaming.client.aio import StreamingClient, StreamMessage
from parakeet_streaming.client.audio import AudioError, load_audio
from parakeet_streaming.client.messages import ClientError, Eou, Error, Hello, Result, ServerError

EXIT_ERROR, EXIT_USAGE = 1, 2


class Display:
    """One status line rewritten with a carriage return, and permanent lines printed above it."""

    def __init__(self, out: TextIO, live: bool) -> None:
        self.out, self.live = out, live
        self._status = ""

    def status(self, text: str) -> None:
        if self.live:
            width = shutil.get_terminal_size((80, 24)).columns - 1
            self._status = text if len(text) <= width else "…" + text[len(text) - width + 1:]
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
        self.display.status(self.progress + self.text[len(self.committed):].strip())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parakeet-client", description="Client for parakeet-server")
    sub = parser.add_subparsers(dest="command", required=True)
    st = sub.add_parser("stream", help="stream a WAV file or the microphone and print the transcript")
    src = st.add_mutually_exclusive_group(required=True)
    src.add_argument("file", nargs="?", help="WAV file (any rate; resampled to the server's)")
    src.add_argument("--mic", action="store_true", help="stream the microphone until Ctrl-C (needs [mic] extra)")
    st.add_argument("--url", default="ws://localhost:8000", help="server WebSocket URL (default: %(default)s)")
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
        async with StreamingClient(args.url, sample_rate=rate, api_key=_api_key(args)) as client:
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
        async with StreamingClient(args.url, sample_rate=mic.sample_rate, api_key=_api_key(args)) as client:
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
        print(f"parakeet-client: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
