"""tus from a page in a real Chromium on another origin: the fetch calls tus-js-client
makes (POST, PATCH, HEAD, with their preflights) succeed from an origin in
``--allowed-origin`` and are kept from the page of any other origin.

The server listens on ``127.0.0.1:PORT`` inside the test's namespace; a document at
``http://localhost:PORT/health`` is another origin (another host), the allowed one, and
one at ``http://127.0.0.1:PORT/health`` calling ``http://localhost:PORT/files/`` plays a
foreign site (its origin is not listed and is not the server's own for that request).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from tests.browser_env import Stack

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.live

PORT = 18931
"""The server's port inside the test's own namespace (nothing else listens there)."""
KEY = "tus-browser-admin-key-0123456789abcdef"
ALLOWED = f"http://localhost:{PORT}"

TUS_CALLS_JS = """async ({endpoint, key}) => {
  const auth = {'Tus-Resumable': '1.0.0', 'Authorization': `Bearer ${key}`};
  const created = await fetch(endpoint, {method: 'POST', headers: {...auth,
    'Upload-Length': '11', 'Upload-Metadata': 'filename ' + btoa('hello.txt')}});
  const location = created.headers.get('Location');
  const url = new URL(location, endpoint).href;
  const patched = await fetch(url, {method: 'PATCH', headers: {...auth,
    'Upload-Offset': '0', 'Content-Type': 'application/offset+octet-stream'},
    body: 'hello'});
  const overridden = await fetch(url, {method: 'POST', headers: {...auth,
    'X-HTTP-Method-Override': 'PATCH', 'Upload-Offset': '5',
    'Content-Type': 'application/offset+octet-stream'}, body: ' world'});
  const head = await fetch(url, {method: 'HEAD', headers: auth});
  return {created: created.status, location,
          patched: patched.status, patchedOffset: patched.headers.get('Upload-Offset'),
          overridden: overridden.status,
          overriddenOffset: overridden.headers.get('Upload-Offset'),
          head: head.status, offset: head.headers.get('Upload-Offset'),
          length: head.headers.get('Upload-Length')};
}"""

FOREIGN_CALLS_JS = """async ({endpoint, key}) => {
  const outcomes = [];
  for (const [method, extra] of [['POST', {'Upload-Length': '3'}], ['OPTIONS', {}]]) {
    try {
      const got = await fetch(endpoint, {method, headers: {'Tus-Resumable': '1.0.0',
        'Authorization': `Bearer ${key}`, ...extra}});
      outcomes.push(`answered ${got.status} ${got.headers.get('Location')}`);
    } catch (error) {
      outcomes.push(`refused ${error.name}`);
    }
  }
  return outcomes;
}"""


@pytest.fixture(scope="module")
def browser_stack_module(
    browser_netns: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """Signaling with storage on a known port, allowing ``http://localhost:PORT``."""
    folder = tmp_path_factory.mktemp("tus-browser")
    stack = Stack(
        browser_netns,
        folder,
        signaling_args=(
            "--port",
            str(PORT),
            "--storage-path",
            str(folder / "store"),
            "--allowed-origin",
            ALLOWED,
        ),
        env={"RTC_SIGNALING_STORAGE_API_KEY": KEY, "RTC_SIGNALING_DISK_RESERVE_BYTES": "0"},
    )
    try:
        yield stack
    finally:
        stack.close()


def test_tus_fetch_calls_from_an_allowed_origin_and_a_foreign_one(
    browser_stack: Stack, browser_page: Page
) -> None:
    assert browser_stack.port == PORT
    page = browser_page
    # a document of each origin, served from loopback (the page at / forbids connecting
    # elsewhere by its Content-Security-Policy; /health has none)
    page.goto(f"{ALLOWED}/health")
    got = page.evaluate(TUS_CALLS_JS, {"endpoint": f"http://127.0.0.1:{PORT}/files/", "key": KEY})
    assert got["created"] == 201
    assert got["location"].startswith("/files/")
    assert (got["patched"], got["patchedOffset"]) == (204, "5")
    assert (got["overridden"], got["overriddenOffset"]) == (204, "11")
    assert (got["head"], got["offset"], got["length"]) == (200, "11", "11")

    # the foreign page: its requests may reach the server, their answers never the page
    page.goto(f"http://127.0.0.1:{PORT}/health")
    outcomes = page.evaluate(
        FOREIGN_CALLS_JS, {"endpoint": f"http://localhost:{PORT}/files/", "key": KEY}
    )
    assert outcomes == ["refused TypeError", "refused TypeError"]
