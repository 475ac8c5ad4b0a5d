"""An S3 endpoint for the tests: moto's server mode on 127.0.0.1, a free port.

``s3_server`` (session scope) starts one ``ThreadedMotoServer(port=0)`` and stops it at
the end, even on failure; when moto is missing or cannot start the test is skipped with
the printed reason (failed with ``RTC_REQUIRE_E2E=1``: :func:`tests.requirements.need`).
moto's state is process-global, so ``s3_bucket`` makes a bucket of its own per test (a
unique name) and removes it after. ``s3_env`` sets fake credentials and
``AWS_EC2_METADATA_DISABLED=true`` (and clears profiles and config files), so botocore
never looks for real credentials nor asks the metadata service at 169.254.169.254.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio

from tests.requirements import need

__all__ = [
    "FAKE_CREDENTIALS",
    "S3Bucket",
    "StoredObject",
    "s3_bucket",
    "s3_env",
    "s3_server",
]

FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing-access-key",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
"""The environment every S3 test runs with (fake keys; no metadata-service lookup)."""

_CLEARED = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)


@dataclass(frozen=True)
class S3Bucket:
    """A bucket of the test on the moto server.

    Attributes:
        endpoint: the server's URL (``http://127.0.0.1:<port>``).
        name: the bucket's name.
    """

    endpoint: str
    name: str

    def client(self) -> Any:
        """An aiobotocore S3 client context for the bucket's endpoint (fake keys)."""
        from aiobotocore.session import get_session

        from signaling.blobs_s3 import client_config

        return get_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            config=client_config(self.endpoint),
        )

    def sync_client(self) -> Any:
        """A boto3 S3 client (blocking calls: for test helpers that look into the bucket
        while the server under test runs on the event loop; moto serves from a thread)."""
        import boto3

        from signaling.blobs_s3 import client_config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            config=client_config(self.endpoint),
        )

    def object_keys(self, prefix: str = "") -> list[str]:
        """Every object key under ``prefix`` (blocking)."""
        pages = self.sync_client().get_paginator("list_objects_v2")
        found = []
        for page in pages.paginate(Bucket=self.name, Prefix=prefix):
            found.extend(item["Key"] for item in page.get("Contents", []))
        return sorted(found)

    def multipart_keys(self, prefix: str = "") -> list[str]:
        """The target key of every multipart upload in progress under ``prefix``."""
        answer = self.sync_client().list_multipart_uploads(Bucket=self.name, Prefix=prefix)
        return sorted(item["Key"] for item in answer.get("Uploads", []))

    def get(self, key: str) -> bytes:
        """The bytes of ``key`` (blocking)."""
        data: bytes = self.sync_client().get_object(Bucket=self.name, Key=key)["Body"].read()
        return data

    def put(self, key: str, data: bytes) -> None:
        """Write ``key`` behind the service's back (blocking)."""
        self.sync_client().put_object(Bucket=self.name, Key=key, Body=data)

    def settings(self) -> dict[str, Any]:
        """The settings of a storage service keeping its blobs in this bucket."""
        return {"storage_backend": "s3", "s3_endpoint_url": self.endpoint, "s3_bucket": self.name}


@dataclass(frozen=True)
class StoredObject:
    """One object of a bucket, read like a blob file (``read_bytes()``)."""

    bucket: S3Bucket
    key: str

    @property
    def name(self) -> str:
        """The last part of its key (a blob's sha256)."""
        return self.key.rsplit("/", 1)[-1]

    def read_bytes(self) -> bytes:
        """Its bytes (blocking)."""
        return self.bucket.get(self.key)


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Fake credentials in the environment, profiles and the metadata service off."""
    for name in _CLEARED:
        monkeypatch.delenv(name, raising=False)
    for name, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    return FAKE_CREDENTIALS


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 (a free port) for the session: its endpoint URL."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        reason = f"moto[server] is not installed: {exc}"
        print(reason)
        need(reason)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    try:
        server.start()
        host, port = server.get_host_and_port()
    except Exception as exc:  # a moto that cannot bind or start
        reason = f"moto's S3 server could not start: {exc!r}"
        print(reason)
        need(reason)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest_asyncio.fixture
async def s3_bucket(s3_server: str, s3_env: dict[str, str]) -> AsyncIterator[S3Bucket]:
    """A new empty bucket for the test, emptied and removed after it."""
    bucket = S3Bucket(s3_server, f"rtc-test-{uuid.uuid4().hex[:16]}")
    async with bucket.client() as s3:
        await s3.create_bucket(Bucket=bucket.name)
    try:
        yield bucket
    finally:
        async with bucket.client() as s3:
            uploads = await s3.list_multipart_uploads(Bucket=bucket.name)
            for item in uploads.get("Uploads", []):
                await s3.abort_multipart_upload(
                    Bucket=bucket.name, Key=item["Key"], UploadId=item["UploadId"]
                )
            listed = await s3.list_objects_v2(Bucket=bucket.name)
            for item in listed.get("Contents", []):
                await s3.delete_object(Bucket=bucket.name, Key=item["Key"])
            await s3.delete_bucket(Bucket=bucket.name)
