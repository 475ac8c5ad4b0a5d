"""The OpenAPI description of the result store (docs/openapi.yaml) against the server.

Three checks: the document is valid OpenAPI; it describes exactly the routes the app
registers when storage is enabled; and a bounded schemathesis run against a live
server on loopback finds no 5xx, no undocumented status and no response that breaks
the documented schemas.
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import yaml
from aiohttp import web
from hypothesis import HealthCheck, Phase, given, settings
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.checks import (
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from signaling.app import create_app, start_server
from signaling.config import SignalingSettings
from signaling.page_routes import page_files
from signaling.tus import TUS_PATHS

SPEC_PATH = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"
KEY = "openapi-test-key"
METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]
MAX_EXAMPLES = 10


def load_spec() -> dict[str, Any]:
    with SPEC_PATH.open(encoding="utf-8") as stream:
        spec: dict[str, Any] = yaml.safe_load(stream)
    return spec


def storage_settings(root: Path) -> SignalingSettings:
    return SignalingSettings(
        host="127.0.0.1",
        port=0,
        storage_path=root,
        storage_api_key=KEY,
        storage_max_file_size=4096,
        upload_chunk_size=16,
    )


# ----------------------------------------------------------------- the document


def test_document_is_valid_openapi() -> None:
    spec = load_spec()
    validate(spec)
    assert spec["openapi"].startswith("3.")
    schemes = spec["components"]["securitySchemes"]
    assert schemes["ApiKeyAuth"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert schemes["BearerAuth"]["type"] == "http"
    assert schemes["BearerAuth"]["scheme"] == "bearer"


def test_only_health_ready_and_metrics_are_open() -> None:
    spec = load_spec()
    assert spec["security"] == [{"ApiKeyAuth": []}, {"BearerAuth": []}]
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method not in METHODS:
                continue
            responses = operation["responses"]
            if path in ("/health", "/ready"):
                assert operation["security"] == []
                assert "401" not in responses
            elif path == "/metrics":  # open unless the server has a metrics token
                assert operation["security"] == []
                assert "401" in responses
            elif path in ("/download/{job_id}", "/delete/{job_id}"):  # a key or a token
                assert operation["security"] == [*spec["security"], {"DownloadToken": []}]
                assert "401" in responses, (method, path)
            else:
                assert "security" not in operation, (method, path)
                assert "401" in responses, (method, path)


def test_error_envelope() -> None:
    error = load_spec()["components"]["schemas"]["Error"]
    assert error["required"] == ["error"]
    assert error["properties"]["error"]["required"] == ["code", "message", "timestamp"]


def test_every_route_is_documented_and_vice_versa(tmp_path: Path) -> None:
    app = create_app(storage_settings(tmp_path))
    page = set(page_files())  # the browser page's static files are no API
    tus = set(TUS_PATHS)  # tus 1.0: described by its protocol (signaling/tus.py)
    registered: set[tuple[str, str]] = set()
    for route in app.router.routes():
        if route.method == "HEAD" or route.resource is None:
            continue  # aiohttp adds HEAD beside every GET
        path = route.resource.canonical
        if path == "/ws" or path in page or path in tus:
            continue
        registered.add((route.method.lower(), path))
    documented = {
        (method, path)
        for path, item in load_spec()["paths"].items()
        for method in item
        if method in METHODS
    }
    assert registered == documented
    assert len(documented) == 14


# ----------------------------------------------------------------- the live server


@dataclass
class LiveServer:
    base_url: str
    loop: asyncio.AbstractEventLoop
    runner: web.AppRunner


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A real server on loopback, run by its own event loop in a thread."""
    root = tmp_path_factory.mktemp("openapi-store")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="openapi-server", daemon=True)
    thread.start()
    started: Future[tuple[web.AppRunner, int]] = asyncio.run_coroutine_threadsafe(
        start_server(storage_settings(root)), loop
    )
    runner, port = started.result(timeout=10)
    base_url = f"http://127.0.0.1:{port}"
    # The job of the document's examples exists, so the explicit examples of
    # /download and /delete get their 200 (and, once deleted, 410) answers too.
    seed = urllib.request.Request(
        base_url + "/upload",
        data=b"hello",
        method="POST",
        headers={"X-API-Key": KEY, "X-Job-Id": "job-42"},
    )
    with urllib.request.urlopen(seed, timeout=10) as response:
        assert response.status == 201
    try:
        yield LiveServer(base_url, loop, runner)
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


OPERATIONS = [
    result.ok().label for result in schemathesis.openapi.from_path(SPEC_PATH).get_all_operations()
]
NO_INPUT = {"GET /health", "GET /ready", "GET /metrics", "GET /list"}  # nothing to make invalid
CASES = [
    pytest.param(label, mode, id=f"{label}-{mode.value}")
    for label in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if not (label in NO_INPUT and mode is GenerationMode.NEGATIVE)
]


@pytest.mark.live
@pytest.mark.parametrize(("label", "mode"), CASES)
def test_live_server_conforms(live_server: LiveServer, label: str, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_path(SPEC_PATH)
    schema.config.update(base_url=live_server.base_url, headers={"X-API-Key": KEY})
    operation = schema.find_operation_by_label(label)
    assert operation is not None

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:

        case.call_and_validate(headers={"X-API-Key": KEY}, checks=CHECKS, timeout=10)

    run()


# ----------------------------------------------------------------- malformed bodies

MULTIPART = "multipart/form-data; boundary=b"
FORM_TAIL = (
    b'--b\r\nContent-Disposition: form-data; name="job_id"\r\n\r\njob-1\r\n'
    b'--b\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\nhello\r\n'
    b"--b--\r\n"
)
MALFORMED = [
    pytest.param(
        "/upload",
        MULTIPART,
        b'--b\r\nContent-Disposition: form-data; name="a\x01"\r\n\r\nx\r\n' + FORM_TAIL,
        id="multipart-part-name-with-control-char",
    ),
    pytest.param("/upload", "multipart/form-data", b"abc", id="multipart-without-boundary"),
    pytest.param("/upload", MULTIPART, b"xxxx", id="multipart-without-starting-boundary"),
    pytest.param(
        "/upload",
        MULTIPART,
        b'--b\r\nContent-Disposition: form-data; name="file"\r\n\r\nhel',
        id="multipart-truncated",
    ),
    pytest.param(
        "/api/upload/init", "application/json", b"[" * 50_000, id="init-deeply-nested-json"
    ),
    pytest.param(
        "/api/upload/cancel",
        "application/json",
        b'{"upload_id": ' + b"[" * 50_000,
        id="cancel-deeply-nested-json",
    ),
]


@pytest.mark.live
@pytest.mark.parametrize(("path", "content_type", "body"), MALFORMED)
def test_malformed_bodies_get_400(
    live_server: LiveServer, path: str, content_type: str, body: bytes
) -> None:
    request = urllib.request.Request(
        live_server.base_url + path,
        data=body,
        method="POST",
        headers={"X-API-Key": KEY, "Content-Type": content_type},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, payload = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, payload = error.code, error.read()
    assert status == 400, (status, payload[:200])
    assert json.loads(payload)["error"]["code"] in {"INVALID_FIELD", "MISSING_FIELD"}
