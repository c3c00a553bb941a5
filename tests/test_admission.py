"""Slots are taken by audio, not by connections (issue 11, point 7), over real sockets: idle
connections hold no slot, a connection without audio is closed after the handshake timeout, and
connections without a slot have their own server-wide cap."""
from __future__ import annotations

from server_helpers import (TRANSPORTS, engine_factory, finals, open_client, open_stream,  # noqa: F401
                            running_server, settle, tokens_of, transcribe_over, until)


async def test_connections_without_audio_hold_no_slot(engine_factory, transport, short_speech):
    engine, model = engine_factory(2)
    async with running_server(engine, model, max_pending_connections=8) as app:
        clean = await transcribe_over(app, transport, short_speech)
        await settle(app)
        idle = [await open_stream(app, t) for t in ("ws", "tcp") * 3]  # 6 greeted connections, no audio
        assert engine.num_active == 0 and engine.num_free == 2
        assert len(app.ctx.sessions) == 6 and app.ctx.pending_connections == 6
        both = [transcribe_over(app, transport, short_speech) for _ in range(2)]
        for msgs in [await b for b in both]:  # every slot is still there for clients with audio
            assert not [m for m in msgs if m["type"] == "error"]
            assert tokens_of(msgs) == tokens_of(clean) and len(finals(msgs)) == 1
        for client, _ in idle:
            await client.close()
        await settle(app)


async def test_no_audio_within_the_handshake_timeout_closes(engine_factory, transport, short_speech):
    engine, model = engine_factory(1)
    async with running_server(engine, model, handshake_timeout=0.5, idle_timeout=30) as app:
        client, _ = await open_stream(app, transport)
        await client.send({"type": "ping"})  # a message, but no audio
        msgs = await client.collect(timeout=10)
        assert msgs[0] == {"type": "pong"}
        assert [(m["type"], m["code"], m["fatal"]) for m in msgs[1:]] == [("error", "handshake_timeout", True)]
        await settle(app)
        assert engine.stats_snapshot().streams_opened == 0  # it never took a slot
        # audio in time: the timeout no longer applies once the stream has its slot
        client, _ = await open_stream(app, transport)
        await client.send_audio(short_speech[:4000])
        await until(lambda: engine.num_active == 1)
        await until(lambda: app.ctx.sessions and all(s.stream.opened for s in app.ctx.sessions))
        await client.send_audio(short_speech[4000:], final=True)
        msgs = await client.collect()
        assert not [m for m in msgs if m["type"] == "error"] and len(finals(msgs)) == 1
        await settle(app)


async def test_connections_without_a_slot_have_their_own_cap(engine_factory, short_speech):
    engine, model = engine_factory(2)
    async with running_server(engine, model, max_pending_connections=2) as app:
        waiting = [await open_stream(app, t) for t in ("ws", "tcp")]
        for transport in TRANSPORTS:
            refused = await open_client(app, transport)
            msgs = await refused.collect()
            assert [(m["type"], m["code"], m["fatal"]) for m in msgs] == [("error", "server_full", True)]
            assert "waiting" in msgs[0]["message"]
        rejected = app.ctx.metrics.registry.get_sample_value("parakeet_connections_rejected_total",
                                                             {"reason": "server_full"})
        assert rejected == 2
        (client, _), _ = waiting
        await client.send_audio(short_speech[:1600])  # takes a slot: no longer waiting
        await until(lambda: app.ctx.pending_connections == 1)
        later, hello = await open_stream(app, "ws")
        assert hello["type"] == "hello"
        for c in (client, later, waiting[1][0]):
            await c.close()
        await settle(app)


async def test_a_protocol_can_refuse_the_upgrade_with_an_http_status(engine_factory, monkeypatch):
    import pytest
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    from parakeet_streaming.server import routes

    def check(request, ctx):
        if "bad=1" in request.path:
            return routes.UpgradeRefusal(400, b'{"err_code":"Bad Request"}', "bad_request",
                                         (("Content-Type", "application/json"), ("dg-error", "bad")))
        return None

    monkeypatch.setitem(routes.UPGRADE_CHECKS, "/v1/test", check)
    engine, model = engine_factory(1)
    async with running_server(engine, model) as app:
        with pytest.raises(InvalidStatus) as info:
            await connect(f"ws://127.0.0.1:{app.ports['ws']}/v1/test?bad=1")
        response = info.value.response
        assert response.status_code == 400 and response.headers["dg-error"] == "bad"
        assert response.body == b'{"err_code":"Bad Request"}'
        assert app.ctx.metrics.registry.get_sample_value("parakeet_errors_total", {"code": "bad_request"}) == 1
        client, hello = await open_stream(app, "ws")  # other requests upgrade as before
        await client.close()
        await settle(app)
