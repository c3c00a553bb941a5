"""A server names itself to clients when `ModelInfo.instance` is set (a Ray replica's id, a pod's
name): the native `hello` carries `"instance"`, Deepgram's closing `Metadata` too; unset, neither
message changes (existing clients see exactly the fields they did). Sans-I/O, and one real server
named by PARAKEET_INSTANCE_NAME as deploy/k8s names a pod."""
from __future__ import annotations

import json

import pytest

from parakeet_streaming.config import ServerConfig
from parakeet_streaming.engine.events import Result
from parakeet_streaming.server.context import ModelInfo
from parakeet_streaming.server.deepgram import DeepgramStream
from parakeet_streaming.server.native import NativeStream
from parakeet_streaming.server.wire import Request, Send


def sent(protocol) -> list[dict]:
    return [json.loads(out.data) for out in protocol.outputs() if isinstance(out, Send) and isinstance(out.data, str)]


def test_native_hello_names_the_instance_only_when_set():
    named = NativeStream(Request("/"), ServerConfig(), ModelInfo(name="small", chunk_ms=160, instance="pod-7"))
    named.open(3, now=0.0)
    plain = NativeStream(Request("/"), ServerConfig(), ModelInfo(name="small", chunk_ms=160))
    plain.open(3, now=0.0)
    (hello,), (plain_hello,) = sent(named), sent(plain)
    assert hello["type"] == "hello" and hello["instance"] == "pod-7"
    assert "instance" not in plain_hello
    assert {k: v for k, v in hello.items() if k != "instance"} == plain_hello


def deepgram_metadata(model: ModelInfo) -> dict:
    stream = DeepgramStream(Request("/v1/listen?encoding=linear16&sample_rate=16000"), ServerConfig(), model)
    stream.open(5, now=0.0)
    stream.receive(b"\x00\x01" * 1600, now=0.1)
    stream.receive(json.dumps({"type": "CloseStream"}), now=0.2)
    stream.engine_event(Result(5, "", [], [], [], 100, 0, True))
    (metadata,) = [m for m in sent(stream) if m["type"] == "Metadata"]
    return metadata


def test_deepgram_metadata_names_the_instance_only_when_set():
    named = deepgram_metadata(ModelInfo(name="small", instance="replica-x1"))
    plain = deepgram_metadata(ModelInfo(name="small"))
    assert named["instance"] == "replica-x1" and "instance" not in plain
    assert named.keys() - {"instance"} == plain.keys()


def test_kubernetes_pods_are_named_by_their_pod_name():
    """deploy/k8s sets PARAKEET_INSTANCE_NAME from the pod's name (downward API), and the server reads
    it as --instance-name through the generic PARAKEET_<FLAG> settings."""
    from pathlib import Path

    import yaml

    from parakeet_streaming.cli import config_from_args, parse_args

    manifest = Path(__file__).parents[1] / "deploy" / "k8s" / "deployment.yaml"
    (deployment,) = [d for d in yaml.safe_load_all(manifest.read_text()) if d and d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["PARAKEET_INSTANCE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    config = config_from_args(parse_args(["serve"], {"PARAKEET_INSTANCE_NAME": "parakeet-streaming-7d9f-x2"}))
    assert config.instance_name == "parakeet-streaming-7d9f-x2"
    assert config_from_args(parse_args(["serve"], {})).instance_name is None  # unset: nothing is sent


@pytest.mark.slow
async def test_a_served_stream_names_the_server_from_the_environment(monkeypatch, tmp_path):
    """`parakeet-server serve` with PARAKEET_INSTANCE_NAME (as a pod gets it): the hello over the
    WebSocket port and the closing Metadata of Deepgram's /v1/listen carry the name."""
    from conftest import GOLDEN
    from server_helpers import start_server_process, stop_server_process
    from websockets.asyncio.client import connect

    monkeypatch.setenv("PARAKEET_INSTANCE_NAME", "pod-a1")
    proc, ports = start_server_process(["--model", str(GOLDEN / "small" / "model.nemo"), "--max-num-streams", "2"],
                                       log=tmp_path / "server.log")
    try:
        async with connect(f"ws://127.0.0.1:{ports['ws']}/") as ws:
            hello = json.loads(await ws.recv())
        async with connect(f"ws://127.0.0.1:{ports['ws']}/v1/listen?encoding=linear16&sample_rate=16000") as ws:
            await ws.send(bytes(6400))
            await ws.send(json.dumps({"type": "CloseStream"}))
            messages = [json.loads(m) async for m in ws]
    finally:
        stop_server_process(proc)
    assert hello["type"] == "hello" and hello["instance"] == "pod-a1"
    assert messages[-1]["type"] == "Metadata" and messages[-1]["instance"] == "pod-a1"
