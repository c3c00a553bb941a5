"""Key terms over real sockets: the native protocol's `keyterms` (config message and query parameter)
change the streamed tokens exactly as NeMo's per-stream boosting says (tests/golden/keyterms), with
the NeMo-saved small model behind the real engine and server."""
from __future__ import annotations

import asyncio
from urllib.parse import urlencode

import numpy as np
import pytest
from keyterm_helpers import skip_without_case
from server_helpers import WsClient, chunks, finals, running_server, tokens_of

from parakeet_streaming.engine.engine import Engine

skip_without_case()


async def stream(app, samples: np.ndarray, path: str = "/", config: dict | None = None) -> list[dict]:
    client = await WsClient.open(app, path)
    hello = await client.recv()
    assert hello["type"] == "hello", hello
    if config is not None:
        await client.send({"type": "config", **config})
    for part in chunks(samples, 4000):
        await client.send_audio(part)
    await client.send({"type": "audio", "data": "", "final": True})
    return await client.collect()


def test_keyterms_over_websocket_match_nemo(keyterm_case) -> None:
    doc, ref, model = keyterm_case
    samples = ref["samples"]
    default = doc["streams"][1]  # NeMo's default parameters, which the protocol uses
    broad = doc["streams"][3]
    assert default["context_score"] == 1.0 and default["depth_scaling"] == 2.0 and default["alpha"] == 1.0
    engine = Engine(model, 4)
    engine.start()

    async def main() -> None:
        async with running_server(engine, model) as app:
            plain, boosted, by_query, bad = await asyncio.gather(
                stream(app, samples),
                stream(app, samples, config={"keyterms": default["keyterms"]}),
                stream(app, samples, path="/?" + urlencode([("keyterms", k) for k in broad["keyterms"]])),
                stream(app, samples, config={"keyterms": ["good morning", {"text": "HELLO", "weight": 2}]}),
            )
            assert tokens_of(plain) == ref["offline_tokens"].tolist()
            assert tokens_of(boosted) == default["offline_tokens"] != tokens_of(plain)
            assert tokens_of(by_query) == broad["offline_tokens"]
            # A list the model cannot spell is refused with a non-fatal error; the stream goes on unboosted.
            errors = [m for m in bad if m["type"] == "error"]
            assert [e["code"] for e in errors] == ["bad_config"] and not errors[0]["fatal"]
            assert "cannot be spelled" in errors[0]["message"]
            assert tokens_of(bad) == tokens_of(plain) and len(finals(bad)) == 1

    try:
        asyncio.run(main())
    finally:
        engine.shutdown()


def test_keyterms_shape_errors(keyterm_case) -> None:
    from parakeet_streaming.server import protocol as proto

    with pytest.raises(proto.ProtocolError, match="must be a list"):
        proto.parse_object({"type": "config", "keyterms": "hello"})
    with pytest.raises(proto.ProtocolError, match="entry 1 must be a string"):
        proto.parse_object({"type": "config", "keyterms": ["a", {"text": "b", "weight": "x"}]})
    with pytest.raises(proto.ProtocolError, match="at most 1000"):
        proto.parse_object({"type": "config", "keyterms": ["a"] * 1001})
    msg = proto.parse_object({"type": "config", "keyterms": ["a", {"text": "b", "weight": 2}, {"text": "c"}]})
    assert msg.keyterms == ("a", ("b", 2.0), "c")
    assert proto.options_from_query("/?keyterms=good+morning&keyterms=kitchen").keyterms == ("good morning", "kitchen")


def test_keyterms_survive_a_flush_and_leave_with_the_stream(keyterm_case) -> None:
    _, ref, model = keyterm_case
    engine = Engine(model, 2)
    engine.start()
    trees = engine.runner.table.keyterms.trees

    async def main() -> None:
        async with running_server(engine, model) as app:
            client = await WsClient.open(app)
            await client.recv()
            await client.send({"type": "config", "keyterms": ["good morning"]})
            await client.send_audio(ref["samples"][:16000])
            await client.send({"type": "flush"})
            while not ((msg := await client.recv())["type"] == "result" and msg.get("flushed")):
                pass
            await client.send_audio(ref["samples"][16000:48000])
            while not ((msg := await client.recv())["type"] == "result" and msg["token_ids"]):
                pass  # the new segment is decoding
            assert [t.num_phrases for t in trees if t is not None] == [1]
            await client.send({"type": "audio", "data": "", "final": True})
            await client.collect()
            assert all(t is None for t in trees)  # released with its stream

    try:
        asyncio.run(main())
    finally:
        engine.shutdown()
