"""The Ray Serve application (parakeet_streaming/deploy/ray_serve.py) on a local Ray cluster, loopback
only, replicas loading the tiny NeMo checkpoint tests/golden/small/model.nemo. Real sockets end to end:
websockets client -> Serve's HTTP proxy -> replica's ASGI app -> the stream core -> its engine.

Covers issue 13's proofs: streams spread over 2 replicas with the tokens of a single
`parakeet-server serve`; every slot taken -> `server_full` within a second; a killed replica's clients
are closed quickly while the other replica's streams finish, and Serve brings the replica back;
autoscaling 1 -> 2 -> 1 on open streams; a stopped replica lets its open streams finish. Each replica
names itself (its Serve replica id) in the native hello and Deepgram's Metadata; OpenAI's file
transcription route answers through the proxy as a single server's does."""
from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # every Ray process on 127.0.0.1 only
ray = pytest.importorskip("ray", reason="ray[serve] is not installed (pip install 'ray[serve]')")
serve = pytest.importorskip("ray.serve", reason="ray[serve] is not installed (pip install 'ray[serve]')")

from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: E402

from conftest import GOLDEN, read_wav  # noqa: E402
from parakeet_streaming.deploy.asgi import INSTANCE_HEADER  # noqa: E402
from parakeet_streaming.deploy.ray_serve import ParakeetReplica, deployment_options, server_config  # noqa: E402
from server_helpers import (finals, pcm16, pcm16_b64, recv_until_closed, start_server_process,  # noqa: E402
                            stop_server_process, tokens_of)

pytestmark = pytest.mark.slow

MODEL = str(GOLDEN / "small" / "model.nemo")
SLOTS = 4
APP = "parakeet"
CHUNK = 2560  # 160 ms at 16 kHz
TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def proxy_port(metrics_port: int):
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,  # Ray's processes inherit os.environ
             _metrics_export_port=metrics_port)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield port
    serve.shutdown()
    ray.shutdown()


def deploy(*extra: str, overflow: int = 1, **options: Any) -> None:
    args = ["--model", MODEL, "--max-num-streams", str(SLOTS), *extra]
    opts = deployment_options(server_config(args), overflow) | {"ray_actor_options": {"num_cpus": 0}} | options
    serve.run(serve.deployment(ParakeetReplica).options(**opts).bind(args), name=APP, route_prefix="/")


def replica_states() -> dict[str, int]:
    app = serve.status().applications.get(APP)
    deployment = app.deployments.get("parakeet") if app else None
    return dict(deployment.replica_states) if deployment else {}


def running() -> int:
    return replica_states().get("RUNNING", 0)


async def wait_for(condition, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, f"timed out waiting for {what}: {replica_states()}"
        await asyncio.sleep(0.2)
    return time.monotonic() - start


class Stream:
    """One native-protocol client stream over a real WebSocket."""

    def __init__(self, ws: Any, hello: dict) -> None:
        self.ws, self.hello, self.messages = ws, hello, []
        self.replica = hello.get("instance")  # the replica names itself in hello (Serve replica id)

    @classmethod
    async def open(cls, url: str) -> "Stream":
        ws = await connect(url, open_timeout=TIMEOUT, max_size=None)
        return cls(ws, json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)))

    async def send(self, samples: np.ndarray, final: bool = False, pace: float = 0.0) -> None:
        for i in range(0, len(samples), CHUNK):
            await self.ws.send(json.dumps({"type": "audio", "data": pcm16_b64(samples[i:i + CHUNK])}))
            if pace:
                await asyncio.sleep(pace)
        if final:
            await self.ws.send(json.dumps({"type": "audio", "data": "", "final": True}))

    async def collect(self) -> list[dict]:
        """Every message until the server closes."""
        return await recv_until_closed(self.ws, TIMEOUT, into=self.messages)


def final_tokens(messages: list[dict]) -> list[int]:
    """The stream's tokens (results carry the new ones), checking it ended with one final result."""
    assert len(finals(messages)) == 1 and messages[-1] == finals(messages)[0], messages[-3:]
    return tokens_of(messages)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return read_wav(GOLDEN / "speech.wav")


async def deepgram_transcript(base: str, speech: np.ndarray) -> tuple[str, Any]:
    """Deepgram's /v1/listen over a real WebSocket: binary linear16, CloseStream; the final segments'
    text and the closing Metadata."""
    async with connect(f"{base}/v1/listen?encoding=linear16&sample_rate=16000", open_timeout=TIMEOUT) as ws:
        pcm = pcm16(speech)
        for i in range(0, len(pcm), CHUNK * 2):
            await ws.send(pcm[i:i + CHUNK * 2])
        await ws.send(json.dumps({"type": "CloseStream"}))
        messages = await recv_until_closed(ws, TIMEOUT)
        instance = messages[-1].get("instance") if messages else None
    assert messages and messages[-1]["type"] == "Metadata", messages[-2:]
    assert instance == ws.response.headers.get(INSTANCE_HEADER)
    text = " ".join(m["channel"]["alternatives"][0]["transcript"] for m in messages
                    if m["type"] == "Results" and m["is_final"]).split()
    return " ".join(text), instance


@pytest.fixture(scope="module")
def single_server(speech: np.ndarray, tmp_path_factory) -> dict[str, Any]:
    """What one plain `parakeet-server serve` with the same checkpoint answers for the same audio:
    the native stream's tokens and Deepgram's transcript."""
    log = tmp_path_factory.mktemp("single") / "server.log"
    proc, ports = start_server_process(["--model", MODEL, "--max-num-streams", str(SLOTS)], log=log)
    try:
        async def native() -> list[dict]:
            stream = await Stream.open(f"ws://127.0.0.1:{ports['ws']}/")
            await stream.send(speech, final=True)
            return await stream.collect()
        tokens = final_tokens(asyncio.run(native()))
        deepgram, _ = asyncio.run(deepgram_transcript(f"ws://127.0.0.1:{ports['ws']}", speech))
        file_text = file_transcript(f"http://127.0.0.1:{ports['http']}/v1")
    finally:
        stop_server_process(proc)
    assert len(tokens) > 10, "the tiny checkpoint should emit tokens on speech.wav"
    assert deepgram and file_text
    return {"tokens": tokens, "deepgram": deepgram, "file_text": file_text}


def file_transcript(base_url: str) -> str:
    """speech.wav through POST /v1/audio/transcriptions with the `openai` package."""
    openai = pytest.importorskip("openai")
    with open(GOLDEN / "speech.wav", "rb") as f:
        return openai.OpenAI(base_url=base_url, api_key="-", max_retries=0).audio.transcriptions.create(
            file=f, model="parakeet").text


@pytest.fixture(scope="module")
def single_server_tokens(single_server: dict[str, Any]) -> list[int]:
    return single_server["tokens"]


async def test_two_replicas_spread_streams_with_the_tokens_of_one_server(proxy_port, speech, single_server_tokens):
    deploy(num_replicas=2)
    url = f"ws://127.0.0.1:{proxy_port}/"
    streams = [await Stream.open(url) for _ in range(2 * SLOTS)]
    assert all(s.hello["type"] == "hello" for s in streams), [s.hello for s in streams]
    replicas = [s.replica for s in streams]
    assert None not in replicas and len(set(replicas)) == 2, replicas
    assert sorted(replicas.count(r) for r in set(replicas)) == [SLOTS, SLOTS]
    assert set(replicas) == set(replica_pids())  # the names are Serve's replica ids
    assert [s.ws.response.headers.get(INSTANCE_HEADER) for s in streams] == replicas  # and the upgrade's header
    with urllib.request.urlopen(f"http://127.0.0.1:{proxy_port}/readyz", timeout=10) as r:
        assert r.status == 200 and json.loads(r.read()) == {"status": "ready"}
        assert r.headers[INSTANCE_HEADER] in replicas

    async def run(stream: Stream) -> list[dict]:
        await stream.send(speech, final=True)
        return await stream.collect()
    results = await asyncio.gather(*(run(s) for s in streams))
    for messages in results:
        assert final_tokens(messages) == single_server_tokens


async def test_deepgram_and_realtime_protocols_through_the_proxy(proxy_port, speech, single_server):
    deploy(num_replicas=2)
    text, instance = await deepgram_transcript(f"ws://127.0.0.1:{proxy_port}", speech)
    assert instance and text == single_server["deepgram"]
    with pytest.raises(InvalidStatus) as refused:  # a bad parameter: Deepgram's 400 before the upgrade
        async with connect(f"ws://127.0.0.1:{proxy_port}/v1/listen?encoding=opus", open_timeout=TIMEOUT):
            pass
    assert refused.value.response.status_code == 400
    async with connect(f"ws://127.0.0.1:{proxy_port}/v1/realtime?intent=transcription", open_timeout=TIMEOUT) as ws:
        assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["type"] == "session.created"


async def test_file_transcription_through_the_proxy(proxy_port, single_server):
    """OpenAI's POST /v1/audio/transcriptions through Serve's proxy with the `openai` package: the
    text of a single server's route for the same file, as json and as streamed events, and a 4xx in
    OpenAI's shape; every response names the replica that served it."""
    openai = pytest.importorskip("openai")
    deploy(num_replicas=2)
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{proxy_port}/v1", api_key="-", max_retries=0)
    with open(GOLDEN / "speech.wav", "rb") as f:
        raw = await client.audio.transcriptions.with_raw_response.create(file=f, model="parakeet")
    assert raw.headers[INSTANCE_HEADER] in replica_pids()
    assert raw.parse().text == single_server["file_text"]
    with open(GOLDEN / "speech.wav", "rb") as f:
        events = [ev async for ev in await client.audio.transcriptions.create(file=f, model="parakeet", stream=True)]
    assert events[-1].type == "transcript.text.done" and events[-1].text == raw.parse().text
    assert "".join(ev.delta for ev in events if ev.type == "transcript.text.delta") == events[-1].text
    with open(Path(__file__), "rb") as f, pytest.raises(openai.BadRequestError) as info:
        await client.audio.transcriptions.create(file=f, model="parakeet")
    assert info.value.code == "unsupported_format"


async def test_each_replicas_metrics_reach_rays_export(proxy_port, metrics_port, speech):
    """Every replica's own counters, tagged with its replica id, on the node's metrics export port."""
    deploy(num_replicas=2)
    url = f"ws://127.0.0.1:{proxy_port}/"
    streams = [await Stream.open(url) for _ in range(2)]
    for s in streams:
        await s.send(speech[:CHUNK * 4], final=True)
        final_tokens(await s.collect())
    replicas = set(replica_pids())
    series = re.compile(r'^ray_parakeet_streams_opened_total\{[^}]*replica="([^"]+)"[^}]*\} (\S+)$', re.M)
    deadline = time.monotonic() + 60
    while True:
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(
            f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode())
        seen = {replica: float(value) for replica, value in series.findall(text)}
        names = {line.split("{")[0] for line in text.splitlines() if line.startswith("ray_parakeet_")}
        if set(seen) >= replicas and all(v >= 1 for v in seen.values()) and names >= {
                "ray_parakeet_active_streams", "ray_parakeet_decode_lag_seconds_bucket"}:
            break
        assert time.monotonic() < deadline, (replicas, seen, names)
        await asyncio.sleep(1)


async def test_every_slot_taken_next_client_gets_server_full_within_a_second(proxy_port, speech):
    deploy(num_replicas=2)  # idempotent when unchanged
    url = f"ws://127.0.0.1:{proxy_port}/"
    holders = [await Stream.open(url) for _ in range(2 * SLOTS)]
    for h in holders:  # a slot is taken by a stream's first audio
        await h.send(speech[:CHUNK * 4])
    for h in holders:
        msg = json.loads(await asyncio.wait_for(h.ws.recv(), TIMEOUT))
        assert msg["type"] in ("result", "eou"), msg
    start = time.monotonic()
    late = await Stream.open(url)
    elapsed = time.monotonic() - start
    assert late.hello["type"] == "error" and late.hello["code"] == "server_full", late.hello
    assert elapsed < 1.0, f"server_full after {elapsed:.2f} s"
    await late.collect()
    for h in holders:
        await h.send(np.zeros(0, np.float32), final=True)
        final_tokens(await h.collect())
    # slots free again: a new stream is served
    again = await Stream.open(url)
    assert again.hello["type"] == "hello", again.hello
    await again.send(speech[:CHUNK * 4], final=True)
    final_tokens(await again.collect())


async def test_three_replicas_every_slot_is_reached_before_server_full(proxy_port, speech):
    """Streams opened one after the other (each taking its slot) fill 3 replicas evenly; only the one
    after all slots gets server_full. Serve's default router (the lesser of two random replicas) could
    send one of them to a full replica while a third had room."""
    deploy(num_replicas=3)
    url = f"ws://127.0.0.1:{proxy_port}/"
    holders = []
    for _ in range(3 * SLOTS):
        stream = await Stream.open(url)
        assert stream.hello["type"] == "hello", (stream.hello, [h.replica for h in holders])
        await stream.send(speech[:CHUNK * 2])
        assert json.loads(await asyncio.wait_for(stream.ws.recv(), TIMEOUT))["type"] in ("result", "eou")
        holders.append(stream)
    counts = sorted([h.replica for h in holders].count(r) for r in {h.replica for h in holders})
    assert counts == [SLOTS] * 3, counts
    late = await Stream.open(url)
    assert late.hello["type"] == "error" and late.hello["code"] == "server_full", late.hello
    await late.collect()
    for h in holders:
        await h.send(np.zeros(0, np.float32), final=True)
    await asyncio.gather(*(h.collect() for h in holders))


def replica_pids() -> dict[str, int]:
    """Serve replica id -> worker pid of the live replicas (asked of each replica actor, as Serve's
    controller does)."""
    pids = {}
    for entry in ray.util.list_named_actors(all_namespaces=True):
        name = entry["name"]  # SERVE_REPLICA::<app>#<deployment>#<replica id>
        if name.startswith(f"SERVE_REPLICA::{APP}#"):
            try:
                actor = ray.get_actor(name, namespace=entry["namespace"])
                pids[name.rsplit("#", 1)[-1]] = ray.get(actor.is_allocated.remote(), timeout=10)[0]
            except (ValueError, ray.exceptions.RayError):
                continue  # gone meanwhile
    return pids


async def test_killed_replica_closes_its_clients_others_finish_and_serve_restores_it(
        proxy_port, speech, single_server_tokens):
    deploy(num_replicas=2)
    url = f"ws://127.0.0.1:{proxy_port}/"
    streams = [await Stream.open(url) for _ in range(4)]
    by_replica: dict[str, list[Stream]] = {}
    for s in streams:
        by_replica.setdefault(s.replica, []).append(s)
    assert len(by_replica) == 2, [s.replica for s in streams]
    victim, survivor = sorted(by_replica)
    half = len(speech) // 2
    for s in streams:
        await s.send(speech[:half])
    pids = replica_pids()
    assert victim in pids, pids
    os.kill(pids[victim], signal.SIGKILL)
    killed_at = time.monotonic()

    async def cut(stream: Stream) -> float:
        try:
            while True:
                await asyncio.wait_for(stream.ws.recv(), TIMEOUT)
        except ConnectionClosed:
            return time.monotonic() - killed_at

    async def finish(stream: Stream) -> list[dict]:
        await stream.send(speech[half:], final=True)
        return await stream.collect()
    cut_after = await asyncio.gather(*(cut(s) for s in by_replica[victim]))
    assert max(cut_after) < 5.0, cut_after
    print(f"killed replica's clients closed after {max(cut_after):.2f} s")
    for messages in await asyncio.gather(*(finish(s) for s in by_replica[survivor])):
        assert final_tokens(messages) == single_server_tokens
    await wait_for(lambda: running() == 2 and len(set(replica_pids()) - {victim, survivor}) == 1,
                   120, "a replacement replica")
    print(f"replacement replica running {time.monotonic() - killed_at:.1f} s after the kill")
    (new,) = set(replica_pids()) - {victim, survivor}
    fresh = [await Stream.open(url) for _ in range(SLOTS + 1)]  # more than the survivor's slots
    assert all(s.hello["type"] == "hello" for s in fresh), [s.hello for s in fresh]
    assert new in {s.replica for s in fresh}

    async def run(stream: Stream) -> list[dict]:
        await stream.send(speech, final=True)
        return await stream.collect()
    for messages in await asyncio.gather(*(run(s) for s in fresh)):
        assert final_tokens(messages) == single_server_tokens


async def test_autoscaling_follows_open_streams_up_and_down(proxy_port, speech):
    serve.delete(APP)
    deploy(autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1,
                               "upscale_delay_s": 1, "downscale_delay_s": 2, "look_back_period_s": 1})
    await wait_for(lambda: running() == 1, 60, "one replica")
    url = f"ws://127.0.0.1:{proxy_port}/"
    streams = [await Stream.open(url) for _ in range(3)]
    stop = asyncio.Event()

    async def keep_streaming(stream: Stream) -> None:
        while not stop.is_set():
            await stream.send(speech[:CHUNK], pace=0.1)
    feeders = [asyncio.create_task(keep_streaming(s)) for s in streams]
    up = await wait_for(lambda: running() == 2, 60, "scale-up to 2")
    print(f"scaled up to 2 replicas {up:.1f} s after 3 streams opened (target 1 per replica)")
    stop.set()
    await asyncio.gather(*feeders)
    for s in streams:
        await s.send(np.zeros(0, np.float32), final=True)
        final_tokens(await s.collect())
    down = await wait_for(lambda: running() == 1 and "STOPPING" not in replica_states(), 90, "scale-down to 1")
    print(f"scaled down to 1 replica {down:.1f} s after the streams ended")


async def test_stopping_replica_lets_open_streams_finish(proxy_port, speech, single_server_tokens):
    serve.delete(APP)
    deploy(num_replicas=1, graceful_shutdown_timeout_s=60, graceful_shutdown_wait_loop_s=0.2)
    url = f"ws://127.0.0.1:{proxy_port}/"
    stream = await Stream.open(url)
    half = len(speech) // 2
    await stream.send(speech[:half])
    deleting = asyncio.create_task(asyncio.to_thread(serve.delete, APP))
    await asyncio.sleep(1.0)
    assert not deleting.done(), "the replica stopped with a stream open"
    await stream.send(speech[half:], final=True, pace=0.02)
    assert final_tokens(await stream.collect()) == single_server_tokens
    await asyncio.wait_for(deleting, 60)


async def test_serve_run_with_the_shipped_config(proxy_port, speech, single_server_tokens, tmp_path):
    """deploy/ray/serve.yaml, with the tiny checkpoint, no CPU reservation and an --instance-name,
    deployed by Ray's own `serve run` CLI into this cluster; then a stream through the proxy."""
    import subprocess
    import sys

    import yaml

    serve.delete(APP)  # no replica of an earlier app may take the stream
    config = yaml.safe_load((Path(__file__).parents[1] / "deploy" / "ray" / "serve.yaml").read_text())
    (app,) = config["applications"]
    app["args"]["server_args"] = f"--model {MODEL} --max-num-streams {SLOTS} --drain-seconds 5 --instance-name asr"
    (deployment,) = app["deployments"]
    deployment["ray_actor_options"] = {"num_cpus": 0}
    deployment["autoscaling_config"] |= {"max_replicas": 1, "target_ongoing_requests": SLOTS}
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    serve_cli = Path(sys.executable).with_name("serve")
    address = ray.get_runtime_context().gcs_address
    done = await asyncio.to_thread(subprocess.run, [str(serve_cli), "run", "--non-blocking", "-a", address,
                                                    str(path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    await wait_for(lambda: running() == 1, 120, "the config's app")
    stream = await Stream.open(f"ws://127.0.0.1:{proxy_port}/")
    assert stream.hello["type"] == "hello"
    prefix, _, replica = stream.replica.partition("-")
    assert prefix == "asr" and replica in replica_pids(), stream.replica  # --instance-name prefixes the replica id
    await stream.send(speech, final=True)
    assert final_tokens(await stream.collect()) == single_server_tokens
    serve.delete(APP)
