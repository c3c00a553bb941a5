"""The demo page names a favicon and the HTTP port serves it without an API key."""
from __future__ import annotations

import aiohttp
from server_helpers import engine_factory, running_server  # noqa: F401 - fixture


async def test_demo_page_favicon(engine_factory):
    engine, model = engine_factory(1)
    async with running_server(engine, model, api_keys=["k"]) as app:
        base = f"http://127.0.0.1:{app.ports['http']}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/") as page:
                assert '<link rel="icon" href="/favicon.svg"' in await page.text()
            async with http.get(f"{base}/favicon.svg") as icon:
                assert icon.status == 200 and icon.content_type == "image/svg+xml"
                assert (await icon.text()).startswith("<svg")
