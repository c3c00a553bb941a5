"""API keys and TLS over real sockets: WebSocket, TCP, HTTP and status ports."""
from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from server_helpers import (TcpClient, WsClient, engine_factory, finals, running_server,  # noqa: F401
                            settle, transcribe_over)
from websockets.asyncio.client import connect

from parakeet_streaming.config import ServerConfig
from parakeet_streaming.server.http import build_http_app
from parakeet_streaming.server.security import Authenticator, StartupError
from parakeet_streaming.server.context import ServerContext

KEY = "s3cret-key"
OTHER_KEY = "second-key"


# --- helpers ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 / localhost, made here: (certfile, keyfile)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256()))
    folder = tmp_path_factory.mktemp("tls")
    certfile, keyfile = folder / "cert.pem", folder / "key.pem"
    certfile.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return certfile, keyfile


def client_tls(cert: tuple[Path, Path]) -> ssl.SSLContext:
    """A verifying client context that trusts only the test certificate."""
    return ssl.create_default_context(cafile=str(cert[0]))


def opened(engine) -> float:
    return engine.stats_snapshot().streams_opened


def rejected(ctx: ServerContext, reason: str = "unauthorized") -> float:
    return ctx.metrics.registry.get_sample_value("parakeet_connections_rejected_total", {"reason": reason})


async def ws_rejected(app, **connect_kw) -> tuple[dict, int]:
    """Connect, expect the unauthorized error and the close; returns (error, close code)."""
    conn = await connect(f"ws://127.0.0.1:{app.ports['ws']}{connect_kw.pop('path', '/')}", **connect_kw)
    msg = json.loads(await asyncio.wait_for(conn.recv(), 10))
    await asyncio.wait_for(conn.wait_closed(), 10)
    return msg, conn.close_code


def assert_unauthorized(msg: dict) -> None:
    assert (msg["type"], msg["code"], msg["fatal"]) == ("error", "unauthorized", True)


# --- API keys -----------------------------------------------------------------------------------


async def test_websocket_without_or_with_a_wrong_key_is_turned_away_before_a_slot(engine_factory, short_speech):
    engine, model = engine_factory(1)
    async with running_server(engine, model, api_keys=[KEY, OTHER_KEY]) as app:
        before = opened(engine)
        for kw in ({}, {"additional_headers": {"Authorization": "Bearer wrong"}}, {"path": "/?token=wrong"},
                   {"additional_headers": {"Authorization": f"Basic {KEY}"}}):
            msg, code = await ws_rejected(app, **kw)
            assert_unauthorized(msg)
            assert code == 1008
        assert opened(engine) == before and engine.num_free == 1
        assert rejected(app.ctx) == 4
        # the one slot is still free for a client with a key, by header or by query parameter
        for kw in ({"additional_headers": {"Authorization": f"Bearer {OTHER_KEY}"}}, {"path": f"/?token={KEY}"}):
            path = kw.pop("path", "/")
            conn = await connect(f"ws://127.0.0.1:{app.ports['ws']}{path}", **kw)
            client = WsClient(conn)
            assert (await client.recv())["type"] == "hello"
            await client.send_audio(short_speech, final=True)
            msgs = await client.collect()
            assert len(finals(msgs)) == 1
            await settle(app)
        assert opened(engine) == before + 2


async def test_tcp_needs_the_auth_line_first(engine_factory, short_speech):
    engine, model = engine_factory(1)
    async with running_server(engine, model, api_keys=[KEY], idle_timeout=1.0) as app:
        before = opened(engine)
        for first in ({"type": "audio", "data": "", "final": True}, {"type": "auth", "token": "wrong"},
                      {"type": "auth"}, "not json", None):  # None: says nothing (idle timeout)
            client = await TcpClient.open(app)
            if first is not None:
                await client.send(first)
            msgs = await client.collect(timeout=10)
            assert len(msgs) == 1, msgs
            assert_unauthorized(msgs[0])
        assert opened(engine) == before and engine.num_free == 1
        assert rejected(app.ctx) == 5
        assert app.ctx.metrics.registry.get_sample_value("parakeet_errors_total", {"code": "unauthorized"}) == 5

        client = await TcpClient.open(app)
        await client.send({"type": "auth", "token": KEY})
        assert (await client.recv())["type"] == "hello"
        await client.send_audio(short_speech, final=True)
        assert len(finals(await client.collect())) == 1


async def test_auth_line_without_keys_is_ignored(engine_factory, short_speech):
    engine, model = engine_factory(1)
    async with running_server(engine, model) as app:
        plain = await transcribe_over(app, "tcp", short_speech)
        await settle(app)
        client = await TcpClient.open(app)
        assert (await client.recv())["type"] == "hello"
        await client.send({"type": "auth", "token": "anything"})
        await client.send_audio(short_speech, final=True)
        msgs = await client.collect()
        assert not [m for m in msgs if m["type"] == "error"]
        assert finals(msgs)[0]["text"] == finals(plain)[0]["text"]


async def test_http_routes_need_the_key_except_probes_and_metrics(engine_factory):
    engine, model = engine_factory(1)
    config = ServerConfig(api_keys=[KEY])
    ctx = ServerContext(engine, config, auth=Authenticator.from_config(config))
    app = build_http_app(ctx)

    async def secret(request: web.Request) -> web.Response:  # what a later feature would add
        return web.json_response({"ok": True})

    app.router.add_get("/v1/secret", secret)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with aiohttp.ClientSession() as http:
            for path in ("/healthz", "/metrics"):
                async with http.get(base + path) as resp:
                    assert resp.status == 200
            async with http.get(base + "/readyz") as resp:
                assert resp.status in (200, 503)
            for headers, query in (({}, ""), ({"Authorization": "Bearer nope"}, ""), ({}, "?token=nope")):
                async with http.get(base + "/v1/secret" + query, headers=headers) as resp:
                    assert resp.status == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
                    assert_unauthorized(await resp.json())
            for headers, query in (({"Authorization": f"Bearer {KEY}"}, ""), ({}, f"?token={KEY}")):
                async with http.get(base + "/v1/secret" + query, headers=headers) as resp:
                    assert resp.status == 200 and (await resp.json()) == {"ok": True}
        assert rejected(ctx) == 3
    finally:
        await runner.cleanup()


def test_keys_from_file(tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("# ops keys\nalpha\n\n  beta  \n")
    auth = Authenticator.from_config(ServerConfig(api_keys=["gamma"], api_key_file=str(keys)))
    assert [auth.check(k) for k in ("alpha", "beta", "gamma")] == [True, True, True]
    assert [auth.check(k) for k in ("# ops keys", "", None, "alph", "alphaa")] == [False] * 5
    assert Authenticator().check(None)  # no keys: open
    (tmp_path / "empty.txt").write_text("\n# none\n")
    with pytest.raises(StartupError, match="holds no key"):
        Authenticator.from_config(ServerConfig(api_key_file=str(tmp_path / "empty.txt")))


def test_bad_key_file_or_certificate_fails_fast(tmp_path):
    """Usage errors come before the model loads: exit code 2 with a message, no traceback."""
    cli = [sys.executable, "-m", "parakeet_streaming.cli", "serve", "--load-format", "dummy"]
    for extra, words in (([f"--api-key-file={tmp_path / 'missing'}"], "cannot read --api-key-file"),
                         ([f"--ssl-certfile={tmp_path / 'missing.pem'}"], "cannot load the TLS")):
        out = subprocess.run(cli + extra, capture_output=True, text=True, timeout=120)
        assert out.returncode == 2, out.stderr
        assert words in out.stderr and "Traceback" not in out.stderr


# --- TLS ----------------------------------------------------------------------------------------


async def test_tls_on_every_port(engine_factory, short_speech, cert):
    engine, model = engine_factory(2)
    tls = client_tls(cert)
    async with running_server(engine, model, ssl_certfile=str(cert[0]), ssl_keyfile=str(cert[1])) as app:
        # wss
        conn = await connect(f"wss://127.0.0.1:{app.ports['ws']}/", ssl=tls)
        ws = WsClient(conn)
        assert (await ws.recv())["type"] == "hello"
        await ws.send_audio(short_speech, final=True)
        ws_msgs = await ws.collect()
        # TCP over TLS
        reader, writer = await asyncio.open_connection("127.0.0.1", app.ports["tcp"], ssl=tls, limit=1 << 24)
        tcp = TcpClient(reader, writer)
        assert (await tcp.recv())["type"] == "hello"
        await tcp.send_audio(short_speech, final=True)
        tcp_msgs = await tcp.collect()
        assert finals(ws_msgs)[0]["text"] == finals(tcp_msgs)[0]["text"]
        # status over TLS
        reader, writer = await asyncio.open_connection("127.0.0.1", app.ports["status"], ssl=tls)
        assert json.loads(await reader.readline())["type"] == "status"
        writer.close()
        # https
        async with aiohttp.ClientSession() as http:
            async with http.get(f"https://127.0.0.1:{app.ports['http']}/healthz", ssl=tls) as resp:
                assert resp.status == 200
        # a plain-text client gets nothing it can read, and the server carries on
        plain_reader, plain_writer = await asyncio.open_connection("127.0.0.1", app.ports["tcp"])
        plain_writer.write(b'{"type":"ping"}\n')
        line = await asyncio.wait_for(plain_reader.readline(), 10)
        assert not line.startswith(b"{")
        plain_writer.close()
        await settle(app)


async def test_tls_client_that_does_not_trust_the_certificate_fails(engine_factory, cert):
    engine, model = engine_factory(1)
    async with running_server(engine, model, ssl_certfile=str(cert[0]), ssl_keyfile=str(cert[1])) as app:
        with pytest.raises(ssl.SSLCertVerificationError):
            await connect(f"wss://127.0.0.1:{app.ports['ws']}/", ssl=ssl.create_default_context())
        assert engine.num_free == 1


async def test_wss_with_api_key(engine_factory, short_speech, cert):
    engine, model = engine_factory(1)
    async with running_server(engine, model, api_keys=[KEY], ssl_certfile=str(cert[0]),
                              ssl_keyfile=str(cert[1])) as app:
        tls = client_tls(cert)
        conn = await connect(f"wss://127.0.0.1:{app.ports['ws']}/", ssl=tls)
        assert_unauthorized(json.loads(await conn.recv()))
        conn = await connect(f"wss://127.0.0.1:{app.ports['ws']}/", ssl=tls,
                             additional_headers={"Authorization": f"Bearer {KEY}"})
        client = WsClient(conn)
        assert (await client.recv())["type"] == "hello"
        await client.send({"type": "close"})
        assert finals(await client.collect())
