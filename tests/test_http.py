"""The HTTP port over real sockets: health, readiness (warm-up, drain), Prometheus metrics."""
from __future__ import annotations

import asyncio

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from server_helpers import (TIMEOUT, engine_factory, finals, hold_slots, open_client, open_stream,  # noqa: F401
                            running_server, settle, transcribe_over, until)


async def get(app, path: str, **kw) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{app.ports['http']}{path}", **kw) as resp:
            return resp.status, await resp.text()


def samples_of(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a Prometheus exposition: (name, sorted labels) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def metrics(app) -> dict[tuple[str, tuple], float]:
    status, text = await get(app, "/metrics")
    assert status == 200
    return samples_of(text)


async def wait_ready(app) -> None:
    await until(lambda: app.ctx.readiness()[0], TIMEOUT, "ready")


async def test_healthz_and_readyz(engine_factory):
    engine, model = engine_factory(2)
    async with running_server(engine, model) as app:
        assert (await get(app, "/healthz"))[0] == 200
        await wait_ready(app)
        assert engine.ready.is_set()
        app.stop_accepting()
        status, body = await get(app, "/readyz")
        assert status == 503 and "draining" in body
        assert (await get(app, "/healthz"))[0] == 200  # the process still serves


async def test_readyz_is_503_until_the_engine_warmed_up(tiny_model):
    from parakeet_streaming.engine.engine import Engine

    engine = Engine(tiny_model, 2)  # not started: no warm-up yet
    async with running_server(engine, tiny_model) as app:
        status, body = await get(app, "/readyz")
        assert status == 503 and "warming up" in body
        engine.start()
        try:
            await wait_ready(app)
        finally:
            await asyncio.to_thread(engine.shutdown)


async def test_metrics_follow_streams(engine_factory, short_speech):
    engine, model = engine_factory(2)
    async with running_server(engine, model) as app:
        await wait_ready(app)
        before = await metrics(app)
        assert before[("parakeet_free_slots", ())] == 2 and before[("parakeet_active_streams", ())] == 0
        warm_steps = before[("parakeet_step_duration_seconds_count", ())]

        client, _ = await open_stream(app, "ws")
        await hold_slots(app, [client], short_speech[:1600], free=1)  # a stream's first audio takes its slot
        during = await metrics(app)
        assert during[("parakeet_active_streams", ())] == 1 and during[("parakeet_free_slots", ())] == 1
        assert during[("parakeet_connected_streams", ())] == 1
        await client.send_audio(short_speech[1600:], final=True)
        msgs = await client.collect()
        assert finals(msgs)
        await settle(app)

        after = await metrics(app)
        assert after[("parakeet_active_streams", ())] == 0
        audio_s = after[("parakeet_audio_seconds_total", ())]
        assert abs(audio_s - len(short_speech) / 16000) < 0.2
        steps = after[("parakeet_step_duration_seconds_count", ())] - warm_steps
        assert steps >= len(short_speech) / 16000 / 0.16 - 1  # one step per 160 ms chunk at least
        assert after[("parakeet_batch_size_count", ())] == after[("parakeet_step_duration_seconds_count", ())]
        assert after[("parakeet_batch_size_bucket", (("le", "1.0"),))] >= steps
        assert after[("parakeet_step_duration_seconds_bucket", (("le", "+Inf"),))] == \
            after[("parakeet_step_duration_seconds_count", ())]
        # One stream: every step but the warm-up decoded new audio of it.
        assert after[("parakeet_decode_lag_seconds_count", ())] == steps
        assert after[("parakeet_decode_lag_seconds_sum", ())] >= after[("parakeet_step_duration_seconds_sum", ())] \
            - before[("parakeet_step_duration_seconds_sum", ())]
        rtf = after[("parakeet_real_time_factor", ())]
        assert rtf > 0
        assert abs(rtf - after[("parakeet_step_duration_seconds_sum", ())] / audio_s) < 1e-6


async def test_metrics_count_errors_and_server_full(engine_factory, short_speech):
    engine, model = engine_factory(1)
    async with running_server(engine, model) as app:
        client, _ = await open_stream(app, "tcp")
        await client.send("not json")
        assert (await client.recv())["code"] == "bad_json"
        await hold_slots(app, [client], short_speech[:1600])
        other = await open_client(app, "ws")
        msg = await other.recv()
        assert msg["code"] == "server_full"
        assert await other.recv() is None
        m = await metrics(app)
        assert m[("parakeet_errors_total", (("code", "bad_json"),))] == 1
        assert m[("parakeet_errors_total", (("code", "server_full"),))] == 1
        assert m[("parakeet_connections_rejected_total", (("reason", "server_full"),))] == 1
        assert m[("parakeet_connections_rejected_total", (("reason", "unauthorized"),))] == 0
        await client.send({"type": "close"})
        await client.collect()


async def test_two_servers_have_separate_registries(engine_factory, short_speech):
    (e1, model), (e2, _) = engine_factory(1), engine_factory(1)
    async with running_server(e1, model) as a, running_server(e2, model) as b:
        await transcribe_over(a, "tcp", short_speech)
        await settle(a)
        ma, mb = await metrics(a), await metrics(b)
        assert ma[("parakeet_audio_seconds_total", ())] > 0
        assert mb[("parakeet_audio_seconds_total", ())] == 0


async def test_a_busy_port_is_a_clear_startup_error(engine_factory):
    import socket

    from parakeet_streaming.config import ServerConfig
    from parakeet_streaming.server.app import App
    from parakeet_streaming.server.security import StartupError

    engine, model = engine_factory(1)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = ServerConfig(host="127.0.0.1", port=0, ws_port=0, status_port=0, http_port=port)
        app = App(config, engine)
        with pytest.raises(StartupError, match="cannot listen"):
            await app.start()
        # the listeners opened before the failure are closed again
        for server in app._servers.values():
            assert not server.is_serving()


async def test_batch_size_histogram_sees_concurrent_streams(engine_factory, speech, short_speech):
    engine, model = engine_factory(2)
    async with running_server(engine, model) as app:
        await asyncio.gather(transcribe_over(app, "ws", speech), transcribe_over(app, "tcp", short_speech))
        await settle(app)
        m = await metrics(app)
        one, two = (m[("parakeet_batch_size_bucket", (("le", le),))] for le in ("1.0", "2.0"))
        assert two > one  # some steps decoded both streams together
        assert m[("parakeet_batch_size_sum", ())] == one + 2 * (two - one)


def test_buckets_follow_prometheus_le():
    from parakeet_streaming.engine.events import Buckets

    b = Buckets((1, 2, 4))
    for v in (0.5, 1, 1.5, 2, 4, 5, 9):
        b.observe(v)
    assert b.counts == [2, 2, 1, 2]  # <=1, (1,2], (2,4], >4
    snap = b.copy()
    b.observe(1)
    assert snap.counts == [2, 2, 1, 2] and snap.total == 23.0
