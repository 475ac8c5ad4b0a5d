"""``ResultsServiceClient`` against a real storage service: uploads for an owner, the
download token, retries after a lost answer, refusals with their codes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from rtc_worker.results_client import ResultsServiceClient, ResultsServiceError
from signaling.keys import Role
from tests.conftest import StartService
from tests.storage_service import StorageService, fingerprint_of

OWNER = fingerprint_of("owner")
ZIP = b"PK\x05\x06" + bytes(18) + b"results" * 100


async def client_of(service: StorageService, role: Role, principal: str | None = None) -> str:
    return await service.make_key(role, f"{role.value}-{principal or 'x'}"[:60], principal)


@pytest.fixture
def zip_file(tmp_path: Path) -> Path:
    path = tmp_path / "results.zip"
    path.write_bytes(ZIP)
    return path


async def test_upload_for_an_owner_then_download_with_the_token(
    start_storage_service: StartService, zip_file: Path, tmp_path: Path
) -> None:
    service = await start_storage_service()
    worker = ResultsServiceClient(service.url(""), await client_of(service, Role.WORKER))
    stored = await worker.upload(lambda: zip_file.open("rb"), "run7", owner=OWNER)
    assert (stored.job_id, stored.owner, stored.size) == ("run7", OWNER, len(ZIP))
    assert stored.sha256 == hashlib.sha256(ZIP).hexdigest()
    assert stored.download_token and "::" not in stored.download_token
    assert stored.expires_at.endswith("Z") and stored.attempts == 1
    # a retry after a lost answer: the same content again is accepted as stored
    again = await worker.upload(lambda: zip_file.open("rb"), "run7", owner=OWNER)
    assert again.sha256 == stored.sha256
    # other content under the same owner and job: refused unless replacing
    other = tmp_path / "other.zip"
    other.write_bytes(ZIP + b"x")
    with pytest.raises(ResultsServiceError) as info:
        await worker.upload(lambda: other.open("rb"), "run7", owner=OWNER)
    assert (info.value.status, info.value.code) == (409, "JOB_EXISTS")
    # the owner, with no key at all, downloads with the token
    owner = ResultsServiceClient(service.url(""), None)
    with pytest.raises(ResultsServiceError) as info:
        await owner.download("run7", tmp_path / "nokey", keep=True)
    assert (info.value.status, info.value.code) == (401, "UNAUTHORIZED")
    got = await owner.download(
        "run7", tmp_path / "dl", sha256=stored.sha256, token=stored.download_token
    )
    assert got.path.read_bytes() == ZIP
    await service.wait_status("run7", 410)  # the owner's download deleted it
    replaced = await worker.upload(lambda: other.open("rb"), "run7", owner=OWNER, replace=True)
    with pytest.raises(ResultsServiceError) as info:  # the old token: other content now
        await owner.download("run7", tmp_path / "old", token=stored.download_token)
    assert (info.value.status, info.value.code) == (410, "GONE")
    got = await owner.download("run7", tmp_path / "new", token=replaced.download_token)
    assert got.path.read_bytes() == ZIP + b"x"


async def test_client_key_download_and_bad_job_ids(
    start_storage_service: StartService, zip_file: Path, tmp_path: Path
) -> None:
    service = await start_storage_service()
    worker = ResultsServiceClient(service.url(""), await client_of(service, Role.WORKER))
    await worker.upload(lambda: zip_file.open("rb"), "run8", owner=OWNER)
    owner = ResultsServiceClient(service.url(""), await client_of(service, Role.CLIENT, OWNER))
    got = await owner.download("run8", tmp_path / "dl", keep=True)
    assert got.path.read_bytes() == ZIP
    stranger = ResultsServiceClient(
        service.url(""), await client_of(service, Role.CLIENT, fingerprint_of("stranger"))
    )
    with pytest.raises(ResultsServiceError) as info:
        await stranger.download("run8", tmp_path / "stolen")
    assert (info.value.status, info.value.code) == (404, "NOT_FOUND")
    assert not (tmp_path / "stolen" / "results-run8.zip").exists()
    for bad in (".", "..", "a/b"):
        with pytest.raises(ValueError):
            await owner.download(bad, tmp_path / "bad")
