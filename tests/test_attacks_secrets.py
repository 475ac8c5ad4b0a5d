"""Attacks on the worker's secrets and files, end to end: the real ``rtc-worker``,
``rtc-client`` and ``rtc-signaling`` command lines, a real signaling server, real aiortc
peers on loopback and real job commands.

The attacker is a job (an operator's command fed with a client's data, run by the
worker), a client that makes the worker fail, or anyone reading logs, ``--help`` and
error output. None of them may learn the signaling token or the storage key."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from rtc_worker.client import RTCClient
from rtc_worker.errors import InternalWorkerError
from tests.conftest import REPO, Signaling, free_port, start_signaling

PY = sys.executable
#: The job's interpreter: the system's when there is one (an unprivileged worker may not
#: reach the test's own interpreter), the test's otherwise. Jobs only need the stdlib.
JOB_PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else PY

TOKEN = "tok-3f9a71c2-signaling-secret"
KEY = "key-8d2e44b1-storage-secret"
OTHER = "aws-5c1d-not-for-jobs"
SECRETS = (TOKEN, KEY, OTHER)

#: Prints what a job can see: its environment, the worker's command line and whether
#: the worker's environment can be read through /proc.
SNOOP = """\
import os
for name, value in sorted(os.environ.items()):
    print(f"ENV {name}={value}")
ppid = os.getppid()
with open(f"/proc/{ppid}/cmdline", "rb") as f:
    print("CMDLINE", f.read().replace(b"\\0", b" ").decode())
try:
    with open(f"/proc/{ppid}/environ", "rb") as f:
        print("ENVIRON", f.read().replace(b"\\0", b" ").decode())
except OSError as exc:
    print("ENVIRON denied", exc.errno)
"""


@pytest_asyncio.fixture
async def guarded() -> AsyncIterator[Signaling]:
    """A signaling server that requires :data:`TOKEN`."""
    server = await start_signaling(token=TOKEN)
    yield server
    await server.runner.cleanup()


def secret_file(path: Path, value: str) -> Path:
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


#: An unprivileged account for the worker when the tests run as root: a job running as
#: root can read any process's /proc files, so the worker's own protection (it is
#: non-dumpable) shows only for an ordinary user, which is how a worker should run.
WORKER_UID = 1000


@pytest.fixture
def place(tmp_path: Path) -> Iterator[Path]:
    """A folder for the worker's files that an unprivileged worker can use (the pytest
    temporary folders are root's only); removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="rtc-attack-"))
    (base / "shared" / "inputs").mkdir(parents=True)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def hand_over(base: Path) -> list[str]:
    """Give ``base`` to :data:`WORKER_UID` when running as root; the command prefix
    that runs the worker as that user (empty otherwise)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot run the worker unprivileged")
    base.chmod(0o755)
    for path in [base, *base.rglob("*")]:
        os.chown(path, WORKER_UID, WORKER_UID, follow_symlinks=False)
    return ["setpriv", f"--reuid={WORKER_UID}", f"--regid={WORKER_UID}", "--clear-groups"]


async def run_worker_job(
    signaling: Signaling,
    base: Path,
    args: list[str],
    env: dict[str, str],
    *,
    via_storage: bool = False,
) -> tuple[list[str], str]:
    """Start ``rtc-worker serve`` (unprivileged, with ``args`` and ``env``) on the shared
    root ``base/shared``, run one shared job through it; return the job's log lines and
    the worker's log."""
    (base / "shared" / "inputs" / "in.txt").write_text("input")
    prefix = hand_over(base)
    log = base / "worker.log"
    environ = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
    for name in ("RTC_SIGNALING_TOKEN", "RTC_STORAGE_API_KEY", "STORAGE_API_KEY"):
        if name not in env:
            environ.pop(name, None)
    argv = [*prefix, PY, "-m", "rtc_worker", "serve", "--signaling-url", signaling.url,
            "--peer-id", "w-secret", "--shared-root", str(base / "shared"),
            "--data-dir", str(base / "data"), *args]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=environ, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    lines: list[str] = []
    try:
        async with RTCClient(signaling.url, TOKEN, reply_timeout=20) as client:
            await client.wait_for_worker("w-secret", 20)
            await client.submit_shared(
                "w-secret",
                "inputs/in.txt",
                "outputs/o",
                on_log=lines.append,
                via_storage=via_storage,
                job_timeout=30,
            )
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 10)
        print(log.read_text())  # shown when the test fails
    return lines, log.read_text()


async def test_a_job_sees_a_minimal_environment_and_none_of_the_worker_s_secrets(
    guarded: Signaling, place: Path
) -> None:
    script = place / "snoop.py"
    script.write_text(SNOOP)
    env = {
        "RTC_STORAGE_API_KEY": KEY,
        "STORAGE_API_KEY": KEY,
        "AWS_SECRET_ACCESS_KEY": OTHER,
        "CUDA_VISIBLE_DEVICES": "3",
        "LC_ALL": "C.UTF-8",
    }
    args = [
        "--token-file",
        str(secret_file(place / "token", TOKEN)),
        "--storage-url",
        "http://127.0.0.1:9",
        "--job-env",
        "CUDA_*",
        "--job-command",
        f"{JOB_PY} {script}",
    ]
    lines, worker_log = await run_worker_job(guarded, place, args, env)
    shown = "\n".join(lines)
    assert all(secret not in shown for secret in SECRETS), shown
    names = {line[4:].split("=", 1)[0] for line in lines if line.startswith("ENV ")}
    assert {"PATH", "CUDA_VISIBLE_DEVICES", "LC_ALL"} <= names
    assert names <= {"PATH", "HOME", "LANG", "TZ", "CUDA_VISIBLE_DEVICES"} | {
        n for n in names if n.startswith("LC_")
    }
    # The worker's command line holds no secret (the token came from a file) ...
    (cmdline,) = [line for line in lines if line.startswith("CMDLINE ")]
    assert "--token-file" in cmdline and TOKEN not in cmdline
    # ... and its environment is out of the job's reach: the worker is non-dumpable.
    assert "ENVIRON denied 13" in lines
    assert all(secret not in worker_log for secret in SECRETS)


async def test_a_token_given_as_a_flag_still_works_but_warns(
    guarded: Signaling, place: Path
) -> None:
    """The process list shows a flag to every user and job: it works, with a warning."""
    _lines, worker_log = await run_worker_job(guarded, place, ["--token", TOKEN], {})
    assert "rtc-worker: warning: --token puts a secret on the command line" in worker_log
    assert "RTC_SIGNALING_TOKEN or --token-file" in worker_log
    assert TOKEN not in worker_log


@pytest_asyncio.fixture
async def broken_storage() -> AsyncIterator[str]:
    """A storage service that answers an upload with a JSON list: the worker's upload
    fails while the storage key is a local variable (the request headers) of the frames
    that handle the answer."""

    async def upload(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response([], status=201)

    app = web.Application()
    app.router.add_post("/upload", upload)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_a_traceback_with_the_secrets_in_scope_does_not_show_them(
    guarded: Signaling, place: Path, broken_storage: str
) -> None:
    args = ["--storage-url", broken_storage, "--storage-retries", "0"]
    env = {"RTC_SIGNALING_TOKEN": TOKEN, "RTC_STORAGE_API_KEY": KEY}
    with pytest.raises(InternalWorkerError, match="could not store the results"):
        await run_worker_job(guarded, place, args, env, via_storage=True)
    log = place / "worker.log"
    for _ in range(100):  # the upload runs after JOB_COMPLETE
        if "not stored" in log.read_text():
            break
        await asyncio.sleep(0.1)
    text = log.read_text()
    assert "not an upload receipt" in text  # the failure is logged, with its reason
    assert TOKEN not in text and KEY not in text


def test_loguru_as_configured_prints_no_variables_but_its_default_would(tmp_path: Path) -> None:
    """The same exception with a secret local variable, logged through the worker's
    logging set-up and through loguru's default sink (the control)."""
    script = tmp_path / "fails.py"
    script.write_text(
        """\
import sys
from loguru import logger
if sys.argv[1] == "worker":
    from rtc_worker.cli import configure_logging
    configure_logging("INFO")
def register(peer):
    token = "TOKEN_HERE"
    return len(token) / peer["attempts"]
try:
    register({"attempts": 0})
except ZeroDivisionError:
    logger.exception("registration failed")
""".replace("TOKEN_HERE", TOKEN)
    )
    runs = {
        mode: subprocess.run(
            [PY, str(script), mode], capture_output=True, text=True, cwd=REPO, check=True
        ).stderr
        for mode in ("worker", "default")
    }
    assert "ZeroDivisionError" in runs["worker"] and TOKEN not in runs["worker"]
    assert TOKEN in runs["default"]  # what the worker's log showed before


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, **(env or {})}
    for name in ("RTC_SIGNALING_TOKEN", "RTC_STORAGE_API_KEY", "STORAGE_API_KEY"):
        if env is None or name not in env:
            environ.pop(name, None)
    return subprocess.run(
        [PY, *args], capture_output=True, text=True, cwd=REPO, env=environ, timeout=60
    )


CLIENT = ["-c", "import sys; from rtc_worker.cli import client_main; sys.exit(client_main())"]


@pytest.mark.parametrize(
    "command",
    [
        ["-m", "rtc_worker", "serve", "--help"],
        [*CLIENT, "submit", "--help"],
        [*CLIENT, "download", "--help"],
        ["-m", "signaling", "--help"],
    ],
    ids=["rtc-worker", "rtc-client-submit", "rtc-client-download", "rtc-signaling"],
)
def test_help_shows_no_secret(command: list[str]) -> None:
    env = {
        "RTC_SIGNALING_TOKEN": TOKEN,
        "RTC_STORAGE_API_KEY": KEY,
        "RTC_SIGNALING_STORAGE_API_KEY": KEY,
    }
    done = cli(*command, env=env)
    assert done.returncode == 0 and "-file" in done.stdout
    assert TOKEN not in done.stdout + done.stderr and KEY not in done.stdout + done.stderr


SHORT = "s3cr3t7"  # short enough that an error would quote it whole


@pytest.mark.parametrize(
    "command",
    [
        # a model validator's error used to print the whole input, secrets included
        ["-m", "signaling", "--token", SHORT, "--storage-path", "/nonexistent/store"],
        ["-m", "rtc_worker", "serve", "--token", SHORT, "--file-umask", "999"],
        ["-m", "rtc_worker", "serve", "--storage-api-key", SHORT, "--job-env", "*KEY*"],
    ],
    ids=["signaling-no-store-key", "worker-bad-umask", "worker-job-env-names-a-secret"],
)
def test_configuration_errors_quote_no_secret(command: list[str]) -> None:
    done = cli(*command)
    assert done.returncode == 2, done.stderr
    assert "invalid" in done.stderr
    assert SHORT not in done.stderr + done.stdout


async def test_a_wrong_token_is_not_echoed_in_the_error_frame(guarded: Signaling) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.ws_connect(guarded.url) as ws:
        challenge = json.loads(await asyncio.wait_for(ws.receive_str(), 10))
        assert challenge["type"] == "challenge"
        await ws.send_json(
            {"type": "register", "peer_id": "mallory", "role": "client", "token": "guess-1234"}
        )
        reply = await asyncio.wait_for(ws.receive_str(), 10)
    assert json.loads(reply)["code"] == "UNAUTHORIZED"
    assert TOKEN not in reply and "guess-1234" not in reply


async def test_the_client_reads_its_token_from_a_file_and_warns_on_a_flag(
    guarded: Signaling, tmp_path: Path
) -> None:
    token_file = secret_file(tmp_path / "token", TOKEN)

    async def client(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            PY,
            *CLIENT,
            "workers",
            "--signaling-url",
            guarded.url,
            "--json",
            *args,
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={k: v for k, v in os.environ.items() if k != "RTC_SIGNALING_TOKEN"},
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode or 0, out.decode(), err.decode()

    code, out, err = await client("--token-file", str(token_file))
    assert (code, json.loads(out)) == (0, []) and "warning" not in err
    code, out, err = await client("--token", TOKEN)
    assert (code, json.loads(out)) == (0, [])
    assert "warning: --token puts a secret on the command line" in err and TOKEN not in err
    code, _out, err = await client("--token", "another-one", "--token-file", str(token_file))
    assert code == 2 and "given twice" in err and TOKEN not in err and "another-one" not in err


@pytest.mark.parametrize(("umask", "forbidden"), [("027", 0o027), ("077", 0o077)])
async def test_files_written_on_shared_storage_follow_the_umask(
    start_worker: Any,
    client: RTCClient,
    shared_root: Path,
    tmp_path: Path,
    umask: str,
    forbidden: int,
) -> None:
    """Received files, job folders and outputs, records and results ZIPs: none is
    readable by other users (by default the group may read)."""
    script = tmp_path / "writes.py"
    script.write_text("import sys\nopen(sys.argv[1] + '/made-by-job.txt', 'w').write('x')\n")
    await start_worker(
        shared_root=shared_root, job_command=f"{PY} {script} {{output}}", file_umask=umask
    )
    local = tmp_path / "local.bin"
    local.write_bytes(os.urandom(50_000))
    submitted = await client.submit_file("worker-1", local, tmp_path / "down")
    (shared_root / "inputs" / "in.txt").write_text("in")
    await client.submit_shared("worker-1", "inputs/in.txt", "outputs/run")
    with zipfile.ZipFile(submitted.results_zip) as archive:
        assert archive.namelist() == ["made-by-job.txt"]
    created = [
        path
        for top in (".rtc-store", ".rtc-jobs", "outputs/run")
        for path in [shared_root / top, *(shared_root / top).rglob("*")]
    ]
    kinds = {p.suffix or p.name for p in created if p.is_file()}
    assert {".zip", ".txt", "output-path"} <= kinds
    assert any("objects" in p.parts for p in created if p.is_file())  # the received file
    loose = {str(p.relative_to(shared_root)): oct(p.stat().st_mode & 0o777) for p in created}
    assert all(int(mode, 8) & forbidden == 0 for mode in loose.values()), loose
