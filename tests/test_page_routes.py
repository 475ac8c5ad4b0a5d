"""The page's static files are served from their folder only: a symbolic link placed in
the folder never publishes a file from elsewhere (a real aiohttp server on loopback)."""

from __future__ import annotations

import shutil
from importlib.resources import files
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from signaling.page_routes import page_files, setup_page


async def test_a_symlink_in_the_page_folder_is_not_served(tmp_path: Path) -> None:
    """The attacker's steps: they can drop links into the installed page folder (a
    shared install, a careless build) and point them at a secret, at a folder, or at a
    page file, then ask the server for them. Each is a 404; the real files are served."""
    folder = tmp_path / "page"
    shutil.copytree(str(files("signaling") / "page"), folder)
    secret = tmp_path / "secret.txt"
    secret.write_text("the signaling token\n")
    (folder / "secret.js").symlink_to(secret)
    (folder / "again.html").symlink_to(folder / "index.html")
    (folder / "dir.css").symlink_to(tmp_path)
    (folder / "gone.js").symlink_to(tmp_path / "nothing")

    served = page_files(folder)
    assert {"/secret.js", "/again.html", "/dir.css", "/gone.js"}.isdisjoint(served)
    assert {"/", "/index.html", "/app.js", "/protocol.js"} <= set(served)

    app = web.Application()
    setup_page(app, folder)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        for path in ("/secret.js", "/again.html", "/dir.css", "/gone.js"):
            response = await client.get(path)
            assert response.status == 404, path
            assert "signaling token" not in await response.text()
        index = await client.get("/")
        assert index.status == 200 and "<title>rtc-worker</title>" in await index.text()
