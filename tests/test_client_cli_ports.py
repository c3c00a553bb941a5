"""`parakeet-client stream` against each port of a real server: --tcp streams over the raw TCP port
(with an API key as its first line) and gives the WebSocket transcript; the HTTP or the TCP port
given as --url says which port to use; the progress bar stays whole while the partial text grows."""
from __future__ import annotations

import io

from client_helpers import run_client
from server_helpers import engine_factory, running_server  # noqa: F401 - fixture

from parakeet_streaming.client import transcribe_file
from parakeet_streaming.client.cli import Display, Printer, progress_bar


async def test_tcp_gives_the_websocket_transcript(engine_factory, speech_wav):
    engine, model = engine_factory(2)
    async with running_server(engine, model, api_keys=["k"]) as app:
        ws = await transcribe_file(f"ws://127.0.0.1:{app.ports['ws']}", speech_wav, speed=0, api_key="k")
        code, out, err = await run_client("stream", str(speech_wav), "--tcp", f"127.0.0.1:{app.ports['tcp']}",
                                          "--speed", "0", "--api-key", "k")
        assert code == 0, err
        assert out.splitlines()[-1] == f"final: {ws.text}"
        code, _, err = await run_client("stream", str(speech_wav), "--tcp", f"127.0.0.1:{app.ports['tcp']}",
                                        "--speed", "0", "--api-key", "wrong")
        assert code == 1 and "unauthorized" in err


async def test_the_wrong_port_says_which_port_to_use(engine_factory, speech_wav):
    engine, model = engine_factory(1)
    async with running_server(engine, model) as app:
        code, _, err = await run_client("stream", str(speech_wav), "--url", f"ws://127.0.0.1:{app.ports['http']}")
        assert code == 1 and "HTTP port" in err and "--ws-port" in err and "ws://localhost:8000" in err, err
        code, _, err = await run_client("stream", str(speech_wav), "--url", f"ws://127.0.0.1:{app.ports['tcp']}")
        assert code == 1 and "TCP port" in err and "--tcp" in err, err


def test_the_progress_bar_stays_whole_while_the_text_grows(monkeypatch):
    monkeypatch.setenv("COLUMNS", "50")
    out = io.StringIO()
    printer = Printer(Display(out, live=True))
    printer.on_progress(1.0, 4.0)
    bar = progress_bar(1.0, 4.0)
    for words in range(1, 30):
        printer.text = " ".join(f"word{i}" for i in range(words))
        printer._redraw()
        line = out.getvalue().rsplit("\r\x1b[K", 1)[-1]
        assert line.startswith(bar) and len(line) <= 49, line
    assert line.endswith("word28") and "…" in line
