"""The browser page end to end: headless Chromium, the real ``rtc-signaling`` serving the
page, and a real ``rtc-worker`` (all in one network namespace, :mod:`tests.browser_env`).

A person's steps, through the page's own controls: connect with the token, see the worker
with its fingerprint and shared storage, run a shared job (steps, JOB_LOG, JOB_METRICS,
JOB_COMPLETE), see a PATH_ERROR with its code, upload 32 MiB with the sha256 checked by
the worker, send it again (FILE_EXISTS, nothing sent), resume after a reload at about 50%
(at most 105% of the file sent), cancel a job and a transfer, download the results ZIP
with its sha256 checked in the page; and refusals: a wrong token, a worker whose key
changed. The stack is shared by the module; the tests run in file order.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import subprocess
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser_env import ARTIFACTS, BIN, Stack

pytestmark = pytest.mark.live

REPO = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024
UPLOAD_BYTES = 32 * MiB
#: The page's flow control (session.js): the bound on the channel's bufferedAmount.
HIGH_WATER = 4 * MiB

JOB_SCRIPT = """#!/bin/sh
# The test job: reports on its input, sleeps when the input says "slow", writes a file.
echo "job: reading the input"
size=$(wc -c < "$1")
echo "job: the input holds $size bytes"
if [ "$(head -c 4 "$1")" = "slow" ]; then echo "job: slow input, sleeping"; sleep 60; fi
if [ "$(head -c 4 "$1")" = "many" ]; then seq 1 2500 | sed 's/^/line /'; fi
if [ "$(head -c 4 "$1")" = "evil" ]; then
  echo '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'
fi
echo "$size" > "$2/size.txt"
echo "job: done"
"""


@pytest.fixture(scope="module")
def browser_stack_module(
    browser_netns: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """The module's stack: a worker whose job is a small shell script."""
    folder = tmp_path_factory.mktemp("page-stack")
    script = folder / "job.sh"
    script.write_text(JOB_SCRIPT)
    stack = Stack(
        browser_netns, folder, worker_args=("--job-command", f"sh {script} {{input}} {{output}}")
    )
    (stack.shared_root / "inputs" / "data.txt").write_text("some input data\n")
    (stack.shared_root / "inputs" / "slow.txt").write_text("slow input\n")
    (stack.shared_root / "inputs" / "evil.txt").write_text("evil input\n")
    (stack.shared_root / "inputs" / "many.txt").write_text("many lines\n")
    try:
        yield stack
    finally:
        stack.close()


def connect(page: Any, stack: Stack, token: str | None = None) -> None:
    """Open the page, connect with the token, choose the worker, wait for the handshake."""
    page.goto(stack.page_url)
    page.wait_for_selector("body[data-state=idle]", state="attached")
    page.fill("#token", stack.token if token is None else token)
    page.click("#connect")
    page.click(f"li.worker[data-peer-id='{stack.worker_id}'] button.pick")
    page.wait_for_selector("#peer-status[data-state=ready]", timeout=30000)


def random_file(path: Path, size: int) -> str:
    """Write ``size`` random bytes to ``path``; return their sha256."""
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def named(stack: Stack, sha256: str) -> list[Path]:
    """The worker's files whose path names ``sha256`` (its blob, or partial files)."""
    roots = [r for r in (stack.shared_root / ".rtc-store", stack.data_dir) if r.exists()]
    return [p for r in roots for p in r.rglob("*") if p.is_file() and sha256 in str(p)]


def stored(stack: Stack, sha256: str) -> Path | None:
    """The worker's stored blob of ``sha256`` (its whole content checked), or None."""
    for path in named(stack, sha256):
        if hashlib.sha256(path.read_bytes()).hexdigest() == sha256:
            return path
    return None


def partial_bytes(stack: Stack, sha256: str, settle: float = 0.5) -> int:
    """Bytes of ``sha256`` the worker holds in its partial file (the largest file naming
    it), read once two readings ``settle`` seconds apart agree (its writes are done)."""
    last = -1
    for _ in range(60):
        sizes = []
        for path in named(stack, sha256):
            with contextlib.suppress(FileNotFoundError):
                sizes.append(path.stat().st_size)
        now = max(sizes, default=0)
        if now == last:
            return now
        last = now
        time.sleep(settle)
    raise AssertionError(f"the partial of {sha256} keeps changing")


def resumed_at(stack: Stack, name: str, size: int) -> int:
    """The offset the worker resumed ``name`` at, from its log ("resuming ... at ...")."""
    text = "".join(
        p.read_text(errors="replace") for p in sorted((stack.folder / "logs").glob("worker-*.log"))
    )
    found = re.findall(rf"resuming {re.escape(name)} at (\d+) of {size} bytes", text)
    assert found, f"the worker logged no resume of {name}"
    return int(found[-1])


def progress(page: Any) -> float:
    return float(page.eval_on_selector("#transfer-progress", "el => el.value"))


def wait_for_progress(page: Any, fraction: float, timeout: float = 120.0) -> float:
    """Wait until the page sends, then poll the progress bar until it reaches
    ``fraction`` (the page's CSP forbids the string predicates of ``wait_for_function``)."""
    page.wait_for_selector("#transfer-status[data-phase=sending]", timeout=timeout * 1000)
    deadline = time.monotonic() + timeout
    while (now := progress(page)) < fraction:
        assert time.monotonic() < deadline, f"progress stuck at {now:.0%}"
        page.wait_for_timeout(20)
    return now


def test_page_is_served_with_its_headers(browser_page: Any, browser_stack: Stack) -> None:
    response = browser_page.goto(browser_stack.page_url)
    assert response.status == 200
    headers = response.headers
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'self'" in headers["content-security-policy"]
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    fetched = browser_page.evaluate(
        """async (paths) => Promise.all(paths.map(async (p) => {
             const r = await fetch(p); return [p, r.status, r.headers.get('content-type')]; }))""",
        [
            "/app.js",
            "/protocol.js",
            "/style.css",
            "/page/",
            "/page/app.js",
            "/..%2fapp.py",
            "/index.html/",
            "/nothing.js",
        ],
    )
    assert fetched == [
        ["/app.js", 200, "text/javascript; charset=utf-8"],
        ["/protocol.js", 200, "text/javascript; charset=utf-8"],
        ["/style.css", 200, "text/css; charset=utf-8"],
        *[
            [p, 404, "text/plain; charset=utf-8"]
            for p in ("/page/", "/page/app.js", "/..%2fapp.py", "/index.html/", "/nothing.js")
        ],
    ]
    browser_page.wait_for_selector("body[data-state=idle]", state="attached")
    assert watch_errors(browser_page) == []


def watch_errors(page: Any) -> list[str]:
    from tests.browser_env import watch

    return watch(page).errors


def test_identity_persists_and_the_worker_is_pinned(
    chromium: Any, browser_stack: Stack, tmp_path: Path
) -> None:
    profile = tmp_path / "profile"
    context = chromium.launch_persistent(profile)
    page = context.pages[0] if context.pages else context.new_page()
    connect(page, browser_stack)
    mine = page.text_content("#my-fingerprint")
    assert re.fullmatch(r"[0-9a-f]{64}", mine or "")
    worker = page.locator(f"li.worker[data-peer-id='{browser_stack.worker_id}']")
    assert worker.locator("code.fingerprint").text_content() == browser_stack.fingerprint
    assert worker.get_attribute("data-shared") == "true"
    pins = page.evaluate("JSON.parse(localStorage.getItem('rtc-worker-page/known-workers'))")
    assert pins == {browser_stack.worker_id: browser_stack.fingerprint}
    assert page.evaluate("window.rtcPage.extractable") is False
    # The console's view holds no identity: nothing there can sign as this browser.
    view = page.evaluate(
        "() => { const v = window.rtcPage; return [Object.keys(v), 'identity' in v,"
        " Object.values(v).some(x => typeof x === 'function'), Object.isFrozen(v)]; }"
    )
    assert view == [
        ["fingerprint", "extractable", "registered", "registrations", "session"],
        False,
        False,
        True,
    ]
    # The token is in the tab's sessionStorage, and in no storage that outlives it.
    assert page.evaluate("sessionStorage.getItem('rtc-worker-page/token')") == browser_stack.token
    assert browser_stack.token not in stored_text(page)
    page.reload()
    page.wait_for_selector("#peer-status[data-state=ready]", timeout=30000)  # back by itself
    assert page.text_content("#my-fingerprint") == mine
    context.close()
    context = chromium.launch_persistent(profile)
    page = context.pages[0] if context.pages else context.new_page()
    page.goto(browser_stack.page_url)
    page.wait_for_selector("body[data-state=idle]", state="attached")
    assert page.text_content("#my-fingerprint") == mine  # the same key after a restart
    # ...but not the token: the browser restarted with the same profile forgot it.
    assert page.evaluate("sessionStorage.getItem('rtc-worker-page/token')") is None
    assert page.input_value("#token") == ""
    assert browser_stack.token not in stored_text(page)
    assert page.locator("li.worker").count() == 0  # nothing connected by itself
    context.close()


#: Every string the page's origin keeps in localStorage and IndexedDB (values as JSON;
#: a CryptoKey shows as {}).
STORED_TEXT_JS = """async () => {
  const out = [JSON.stringify(Object.entries(localStorage))];
  for (const {name} of await indexedDB.databases()) {
    const db = await new Promise((ok, fail) => {
      const r = indexedDB.open(name); r.onsuccess = () => ok(r.result); r.onerror = fail; });
    for (const store of db.objectStoreNames) {
      const values = await new Promise((ok, fail) => {
        const r = db.transaction(store).objectStore(store).getAll();
        r.onsuccess = () => ok(r.result); r.onerror = fail; });
      out.push(name, store, JSON.stringify(values));
    }
    db.close();
  }
  return out.join('\\n');
}"""


def stored_text(page: Any) -> str:
    """What the page's origin keeps beyond the tab (see STORED_TEXT_JS)."""
    text = page.evaluate(STORED_TEXT_JS)
    assert "rtc-worker-page/known-workers" in text and "keys" in text  # it looked there
    return str(text)


def test_a_worker_without_shared_storage_has_no_badge(
    browser_page: Any, browser_stack: Stack
) -> None:
    """A second worker started without --shared-root: the page lists it as having no
    shared storage, and the first one as having it."""
    stack = browser_stack
    argv = [str(BIN / "rtc-worker"), "serve", "--signaling-url", stack.ws_url]
    argv += ["--peer-id", "worker-plain", "--data-dir", str(stack.folder / "plain-data")]
    argv += ["--log-level", "INFO"]
    log = stack.folder / "logs" / "plain-worker.log"
    plain = stack.ns.start("rtc-worker", argv, log, env=stack._env())  # no shared root
    try:
        plain.wait_for_line(r"registered with signaling as ", 20)
        page = browser_page
        page.goto(stack.page_url)
        page.wait_for_selector("body[data-state=idle]", state="attached")
        page.fill("#token", stack.token)
        page.click("#connect")
        badge = page.wait_for_selector("li.worker[data-peer-id='worker-plain'] .badge")
        assert badge.text_content() == "no shared storage"
        assert "ok" not in (badge.get_attribute("class") or "")
        assert (
            page.get_attribute("li.worker[data-peer-id='worker-plain']", "data-shared") == "false"
        )
        shared = page.locator(f"li.worker[data-peer-id='{stack.worker_id}'] .badge.ok")
        assert shared.first.text_content() == "shared storage"
    finally:
        plain.stop(10)


def test_shared_job_then_results_download(browser_page: Any, browser_stack: Stack) -> None:
    page = browser_page
    connect(page, browser_stack)
    # The token travelled in the register frame only: not in the URL, not in a log.
    assert browser_stack.token not in page.url
    assert browser_stack.token not in browser_stack.logs()
    page.fill("#input-path", "inputs/data.txt")
    page.fill("#output-path", "outputs/run-1")
    page.click("#run-job")
    page.wait_for_selector("#job-complete.ok", timeout=30000)
    complete = page.text_content("#job-complete") or ""
    assert (
        complete.startswith("JOB_COMPLETE ")
        and "1 files" in complete
        and "outputs/run-1" in complete
    )
    states = page.eval_on_selector_all(
        "#steps li", "els => els.map(e => [e.dataset.step, e.dataset.state])"
    )
    assert states == [["input", "done"], ["output", "done"], ["run", "done"]]
    log = page.text_content("#job-log") or ""
    assert "job: the input holds 16 bytes" in log and "job: done" in log
    assert re.search(
        r"validation [\d.]+ ms · file access [\d.]+ ms · run [\d.]+ s · total [\d.]+ s",
        page.text_content("#job-metrics") or "",
    )
    assert (
        browser_stack.shared_root / "outputs" / "run-1" / "size.txt"
    ).read_text().strip() == "16"

    # The results ZIP over the channel, its sha256 checked in the page, then saved.
    page.click("#get-results")
    page.wait_for_selector("#results-status[data-phase=verified]", timeout=30000)
    checked = page.get_attribute("#results-link", "data-sha256")
    with page.expect_download() as info:
        page.click("#results-link")
    data = Path(info.value.path()).read_bytes()
    assert hashlib.sha256(data).hexdigest() == checked
    assert info.value.suggested_filename.startswith(
        "results-"
    ) and info.value.suggested_filename.endswith(".zip")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.read("size.txt").strip() == b"16"

    # The finished job, for people: always a test artifact; the README's copy in the
    # source tree only when asked (RTC_UPDATE_SCREENSHOT=1).
    page.set_viewport_size({"width": 820, "height": 1400})
    shot = ARTIFACTS / "page-job.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("RTC_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, REPO / "docs" / "page.png")


def test_path_error_is_shown_with_its_code(browser_page: Any, browser_stack: Stack) -> None:
    page = browser_page
    connect(page, browser_stack)
    page.fill("#input-path", "../outside.txt")
    page.fill("#output-path", "outputs/run-2")
    page.click("#run-job")
    error = page.wait_for_selector("#errors li[data-code=PATH_ERROR]")
    assert (
        error.text_content()
        == "PATH_ERROR: The worker refused the path. (Path outside shared storage: ../outside.txt)"
    )
    assert page.get_attribute("#steps li[data-step=input]", "data-state") == "failed"
    assert not (browser_stack.shared_root / "outputs" / "run-2").exists()


def test_markup_a_job_prints_is_shown_as_text(browser_page: Any, browser_stack: Stack) -> None:
    """The attacker's steps: a job (or a worker) prints HTML and script into its log,
    hoping the page renders it. The page shows it as text and runs nothing."""
    page = browser_page
    connect(page, browser_stack)
    page.fill("#input-path", "inputs/evil.txt")
    page.fill("#output-path", "outputs/run-evil")
    page.click("#run-job")
    page.wait_for_selector("#job-complete.ok", timeout=30000)
    assert '<img src=x onerror="window.pwned=1"><script>' in (page.text_content("#job-log") or "")
    assert page.locator("#job-log img, #job-log script").count() == 0
    page.wait_for_timeout(200)
    assert page.evaluate("window.pwned === undefined")


def test_a_job_that_floods_its_log_is_bounded(browser_page: Any, browser_stack: Stack) -> None:
    """The attacker's steps: a job prints 2500 lines, hoping the page keeps them all.
    The page keeps the last 2000 and says how many it dropped."""
    page = browser_page
    connect(page, browser_stack)
    page.fill("#input-path", "inputs/many.txt")
    page.fill("#output-path", "outputs/run-many")
    page.click("#run-job")
    page.wait_for_selector("#job-complete.ok", timeout=60000)
    kept = page.eval_on_selector("#job-log", "el => [el.childNodes.length, el.dataset.dropped]")
    log = page.text_content("#job-log") or ""
    assert kept == [2000, "503"]  # 2503 lines: 2 of the script's own, 2500, "job: done"
    assert log.splitlines()[0] == "line 502" and log.endswith("line 2500\njob: done\n")


def test_upload_32_mib_then_the_same_file_is_not_sent_again(
    browser_page: Any, browser_stack: Stack, tmp_path: Path
) -> None:
    page = browser_page
    connect(page, browser_stack)
    path = tmp_path / "upload.bin"
    sha = random_file(path, UPLOAD_BYTES)
    # Every text of the progress line, and the channel's bufferedAmount sampled every
    # millisecond or so, recorded in the page while it sends.
    page.evaluate(
        """() => {
        window.seenStatus = []; window.buffered = [];
        new MutationObserver(() => window.seenStatus.push(
          document.getElementById('transfer-status').textContent))
          .observe(document.getElementById('transfer-status'), {childList: true});
        setInterval(() => { const s = window.rtcPage.session;
          if (s && s.upload) window.buffered.push(s.bufferedAmount); }, 1);
        }"""
    )
    started = time.monotonic()
    page.set_input_files("#file-input", str(path))
    page.wait_for_selector("#transfer-status[data-phase=sending]", timeout=30000)
    sending = time.monotonic()
    page.wait_for_selector("#transfer-status[data-phase=received]", timeout=120000)
    finished = time.monotonic()
    texts = page.evaluate("window.seenStatus")
    buffered = page.evaluate("window.buffered")
    progress_line = re.compile(r"Sending [\d.]+ of 33\.6 MB · [\d.]+ MB/s · \d+ s left")
    assert any(progress_line.fullmatch(t) for t in texts), texts
    chunk = page.evaluate("window.rtcPage.session.upload.chunk")
    print(f"bufferedAmount: {len(buffered)} samples, at most {max(buffered)} bytes")
    assert len(buffered) > 20 and max(buffered) > 0
    assert max(buffered) <= HIGH_WATER + chunk
    print(
        f"\npage upload: {UPLOAD_BYTES / 1e6:.1f} MB in {finished - sending:.2f} s = "
        f"{UPLOAD_BYTES / 1e6 / (finished - sending):.1f} MB/s "
        f"({finished - started:.2f} s with hashing)"
    )
    assert stored(browser_stack, sha) is not None
    # Chunks as large as the worker's SCTP max-message-size (aiortc: 256 KiB) allows.
    assert chunk == 262144
    assert page.get_attribute("#transfer-progress", "value") is not None and progress(page) == 1

    page.set_input_files("#file-input", str(path))
    page.wait_for_selector("#transfer-status[data-phase=exists]", timeout=60000)
    assert page.evaluate("window.rtcPage.session.upload.sent") == 0  # nothing was sent
    # The file is the session's input now: a job runs on it.
    page.click("#run-on-file")
    page.wait_for_selector("#job-complete.ok", timeout=30000)
    assert f"{UPLOAD_BYTES} bytes" in (page.text_content("#job-log") or "")

    # A file dropped on the page goes the same way.
    drop = page.evaluate_handle(
        "() => { const dt = new DataTransfer();"
        " dt.items.add(new File(['dropped bytes'], 'dropped.txt')); return dt; }"
    )
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": drop})
    page.wait_for_selector("#transfer-status[data-phase=received]", timeout=60000)
    assert stored(browser_stack, hashlib.sha256(b"dropped bytes").hexdigest()) is not None


def test_resume_after_a_reload_at_half(
    browser_page: Any, browser_stack: Stack, tmp_path: Path
) -> None:
    page = browser_page
    connect(page, browser_stack)
    path = tmp_path / "resume.bin"
    sha = random_file(path, UPLOAD_BYTES)
    page.set_input_files("#file-input", str(path))
    at = wait_for_progress(page, 0.5)
    page.reload()  # the connection drops with the page
    page.wait_for_selector("#peer-status[data-state=ready]", timeout=30000)
    # Measured at the worker: what it received before the drop (its partial file),
    # then what it received after (the file's size minus the offset it resumed at).
    before = partial_bytes(browser_stack, sha)
    page.set_input_files("#file-input", str(path))  # the same file chosen again
    page.wait_for_selector("#transfer-status[data-phase=received]", timeout=120000)
    status = page.text_content("#transfer-status") or ""
    offset = resumed_at(browser_stack, path.name, UPLOAD_BYTES)
    total = before + UPLOAD_BYTES - offset
    print(
        f"\nresume: dropped at {at:.0%}; the worker held {before} bytes, resumed at "
        f"{offset}, received {total} in all = {total / UPLOAD_BYTES:.1%}"
    )
    assert "Resumed at" in status
    assert stored(browser_stack, sha) is not None
    assert UPLOAD_BYTES * 0.4 <= offset <= before
    assert total <= UPLOAD_BYTES * 1.05


def test_resume_after_the_worker_restarts(
    browser_page: Any, browser_stack: Stack, tmp_path: Path
) -> None:
    page = browser_page
    connect(page, browser_stack)
    path = tmp_path / "restart.bin"
    sha = random_file(path, UPLOAD_BYTES)
    page.set_input_files("#file-input", str(path))
    at = wait_for_progress(page, 0.5)
    browser_stack.restart_worker()  # the connection drops with the worker
    page.wait_for_selector("#transfer-status[data-phase=interrupted]", timeout=30000)
    assert page.get_attribute("#peer-status", "data-state") == "closed"
    assert "CONNECTION_LOST" in (page.text_content("#peer-status") or "")
    before = partial_bytes(browser_stack, sha)  # what the worker kept, measured there
    page.click(f"li.worker[data-peer-id='{browser_stack.worker_id}'] button.pick")
    page.wait_for_selector("#peer-status[data-state=ready]", timeout=30000)
    page.click("#resume-transfer")  # the page still holds the file: no need to choose it
    page.wait_for_selector("#transfer-status[data-phase=received]", timeout=120000)
    offset = resumed_at(browser_stack, path.name, UPLOAD_BYTES)
    total = before + UPLOAD_BYTES - offset
    print(
        f"\nworker restart: dropped at {at:.0%}; the worker held {before} bytes, resumed at "
        f"{offset}, received {total} in all = {total / UPLOAD_BYTES:.1%}"
    )
    assert "Resumed at" in (page.text_content("#transfer-status") or "")
    assert stored(browser_stack, sha) is not None
    assert 0 < offset <= before
    assert total <= UPLOAD_BYTES * 1.05


def test_cancel_a_job_and_a_transfer(
    browser_page: Any, browser_stack: Stack, tmp_path: Path
) -> None:
    page = browser_page
    connect(page, browser_stack)
    page.fill("#input-path", "inputs/slow.txt")
    page.fill("#output-path", "outputs/run-3")
    page.click("#run-job")
    page.wait_for_selector("#job-log:has-text('sleeping')", timeout=30000)
    page.click("#cancel-job")
    page.wait_for_selector("#job-complete.bad", timeout=30000)
    assert re.fullmatch(r"JOB_FAILED \S+: cancelled", page.text_content("#job-complete") or "")

    path = tmp_path / "cancel.bin"
    sha = random_file(path, UPLOAD_BYTES)
    page.set_input_files("#file-input", str(path))
    wait_for_progress(page, 0.1)
    page.click("#cancel-transfer")
    page.wait_for_selector("#transfer-status[data-phase=cancelled]")
    time.sleep(1)
    assert page.get_attribute("#transfer-status", "data-phase") == "cancelled"
    assert stored(browser_stack, sha) is None
    kept = [p.stat().st_size for p in named(browser_stack, sha)]
    assert MiB < max(kept) < UPLOAD_BYTES  # the part (and its metadata) kept for a resume
    assert page.locator("#errors li").count() == 0


def test_wrong_token_is_a_readable_error(browser_page: Any, browser_stack: Stack) -> None:
    page = browser_page
    page.goto(browser_stack.page_url)
    page.wait_for_selector("body[data-state=idle]", state="attached")
    page.fill("#token", "not-the-token")
    page.click("#connect")
    error = page.wait_for_selector("#errors li[data-code=UNAUTHORIZED]")
    assert error.text_content().startswith("UNAUTHORIZED: Wrong or missing token")
    assert "UNAUTHORIZED" in (page.text_content("#signaling-status") or "")
    assert page.locator("li.worker").count() == 0


def test_relay_only_without_a_turn_server_is_a_readable_error(
    browser_page: Any, browser_stack: Stack
) -> None:
    page = browser_page
    page.goto(browser_stack.page_url)
    page.wait_for_selector("body[data-state=idle]", state="attached")
    page.fill("#token", browser_stack.token)
    page.check("#relay-only")
    page.click("#connect")
    page.click(f"li.worker[data-peer-id='{browser_stack.worker_id}'] button.pick")
    error = page.wait_for_selector("#errors li[data-code=NO_TURN_SERVER]")
    assert error.text_content().startswith(
        "NO_TURN_SERVER: Relay only was chosen, but the signaling server offers no TURN server."
    )
    assert page.get_attribute("#peer-status", "data-state") == "failed"
    assert page.is_disabled("#run-job")


def test_a_worker_whose_key_changed_is_refused(browser_page: Any, browser_stack: Stack) -> None:
    """The attacker's steps: another key takes the worker's peer id (the binding was
    released, or signaling is dishonest) and waits for the page to connect."""
    page = browser_page
    connect(page, browser_stack)  # pins the real worker's key
    stack = browser_stack
    real_data = stack.data_dir
    stack.stop_worker()
    release = [str(BIN / "rtc-signaling"), "bindings", "release", stack.worker_id]
    release += ["--data-dir", str(stack.folder / "signaling-data")]
    subprocess.run(release, check=True, capture_output=True, timeout=30)
    stack.data_dir = stack.folder / "impostor-data"  # a new key
    try:
        stack.start_worker()
        page.reload()
        refused = page.wait_for_selector("#errors li[data-code=WORKER_KEY_CHANGED]", timeout=30000)
        assert refused.text_content().startswith(
            "WORKER_KEY_CHANGED: The worker's key is not the one pinned for it: refused."
        )
        assert page.get_attribute("#peer-status", "data-state") == "failed"
        assert (
            page.locator(f"li.worker[data-peer-id='{stack.worker_id}'] .badge.bad").text_content()
            == "KEY CHANGED"
        )
        assert page.is_disabled("#run-job") and page.is_disabled("#file-input")
        pins = page.evaluate("JSON.parse(localStorage.getItem('rtc-worker-page/known-workers'))")
        assert pins == {stack.worker_id: stack.fingerprint}  # the pin is unchanged
    finally:
        stack.stop_worker()
        subprocess.run(release, check=True, capture_output=True, timeout=30)
        stack.data_dir = real_data
        stack.start_worker()
