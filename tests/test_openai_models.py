"""OpenAI clients' other calls against the real HTTP port: `models.list()` / `models.retrieve()`,
and an upload that is not WAV named by its own file name with the formats that work."""
from __future__ import annotations

import pytest
from server_helpers import engine_factory, running_server  # noqa: F401 - fixture

openai = pytest.importorskip("openai")

KEY = "sk-models-test"


def client_for(app) -> "openai.AsyncOpenAI":
    return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{app.ports['http']}/v1", api_key=KEY, max_retries=0)


async def test_models_list_and_retrieve(engine_factory):
    engine, model = engine_factory(1)
    async with running_server(engine, model, api_keys=[KEY]) as app:
        client = client_for(app)
        models = await client.models.list()
        assert [m.id for m in models.data] == [app.ctx.model.name]
        assert models.data[0].object == "model" and models.data[0].owned_by == "parakeet-streaming"
        assert (await client.models.retrieve(app.ctx.model.name)).id == app.ctx.model.name
        with pytest.raises(openai.NotFoundError) as info:
            await client.models.retrieve("whisper-1")
        assert info.value.code == "model_not_found"
        with pytest.raises(openai.AuthenticationError):
            await openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{app.ports['http']}/v1", api_key="wrong",
                                     max_retries=0).models.list()


async def test_a_non_wav_upload_names_the_file_and_the_formats(engine_factory, tmp_path):
    engine, model = engine_factory(1)
    song = tmp_path / "song.mp3"
    song.write_bytes(b"ID3\x03\x00" + bytes(2000))
    async with running_server(engine, model, api_keys=[KEY]) as app:
        with open(song, "rb") as f, pytest.raises(openai.BadRequestError) as info:
            await client_for(app).audio.transcriptions.create(file=f, model="parakeet")
    message = info.value.body["message"]
    assert info.value.code == "unsupported_format"
    assert "'song.mp3'" in message and "WAV" in message and "ffmpeg -i song.mp3" in message, message
    assert "/tmp" not in message, message  # no server-side temporary path
