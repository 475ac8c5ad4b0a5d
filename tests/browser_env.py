"""Tests in a real browser: headless Chromium, the signaling server and a worker, all
inside one network namespace (a pytest plugin, loaded by ``tests/conftest.py``).

Everything is real: Debian's ``/usr/bin/chromium`` driven by Playwright for Python
(never a downloaded browser), ``rtc-signaling`` and ``rtc-worker serve`` as
subprocesses. The namespace keeps Chromium's mDNS and WebRTC traffic off the host's
network (see :mod:`tests.netns`). The page is at ``http://127.0.0.1:PORT/`` inside the
namespace, which browsers treat as a secure context (``crypto.subtle`` exists).

Fixtures (module-scoped ones are shared by the tests of one file):

* ``browser_netns`` (module): the :class:`~tests.netns.NetNs`.
* ``browser_stack_module`` (module): the module's :class:`Stack` (signaling server +
  one registered worker). A test module that needs other settings overrides it, e.g.
  ``Stack(browser_netns, tmp_path_factory.mktemp("stack"), signaling_args=(...),
  worker_args=(...), env={...})``.
* ``browser_stack`` (function): that stack, with the worker started again if an
  earlier test stopped it; its logs are added to the report of a failed test.
* ``chromium`` (module): a :class:`Chromium` (Playwright + one browser in the namespace).
* ``browser_page`` (function): a Playwright ``Page`` in a fresh browser context; on
  failure its console, page errors and a screenshot are in the report.
* ``artifacts_dir`` (function): ``test-artifacts/<module>/<test>/`` at the repo root.

Each of them skips the test, with the reason (pytest runs with ``-ra``), when Chromium,
Playwright, root or ``ip netns`` is missing; with ``RTC_REQUIRE_E2E=1`` (``.ci/run``) the
test fails instead (:func:`tests.requirements.need`). ``RTC_TEST_CHROMIUM`` overrides the
browser's path (default: ``chromium`` on ``PATH``, else ``/usr/bin/chromium``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import sys
import weakref
from collections.abc import Callable, Generator, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.netns import NetNs, NetnsUnavailable, Process, netns, netns_unavailable_reason
from tests.requirements import need

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page, Playwright

__all__ = [
    "ARTIFACTS",
    "CHROMIUM_ENV",
    "Chromium",
    "PageWatch",
    "Stack",
    "add_failure_section",
    "chromium_executable",
    "watch",
]

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
"""Screenshots and other files tests leave for people to look at (git-ignored)."""
CHROMIUM_ENV = "RTC_TEST_CHROMIUM"
"""Variable overriding the Chromium executable the browser tests use."""
BIN = Path(sys.executable).parent
"""The virtual environment's scripts (``rtc-signaling``, ``rtc-worker``)."""

_SECTIONS = pytest.StashKey[list[tuple[str, Callable[[], str]]]]()


# ---------------------------------------------------------------- requirements


def chromium_executable() -> str:
    """The Chromium to drive: ``$RTC_TEST_CHROMIUM``, else ``chromium`` on PATH, else
    ``/usr/bin/chromium``.

    Skips the calling test with the reason (fails it under ``RTC_REQUIRE_E2E=1``, see
    :func:`tests.requirements.need`) when that file is not an executable, Playwright is
    not installed, the tests do not run as root, or ``ip netns`` does not work (the
    browser runs in a network namespace).
    """
    path = os.environ.get(CHROMIUM_ENV) or shutil.which("chromium") or "/usr/bin/chromium"
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        need(
            f"no Chromium at {path}: install the Debian package chromium (scripts/test.sh "
            f"does as root) or set {CHROMIUM_ENV}"
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        need("Playwright is not installed: pip install -e '.[test]'")
    reason = netns_unavailable_reason()
    if reason is not None:
        need(f"browser tests run Chromium in a network namespace: {reason}")
    return path


def _subprocess_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a process of the stack: ours without any ``RTC_*`` setting,
    ``HOME`` in the test's folder, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTC_")}
    env.pop("SHARED_STORAGE_ROOT", None)
    return {**env, "HOME": str(home), "PYTHONUNBUFFERED": "1", **extra}


# ---------------------------------------------------------------- the stack


class Stack:
    """``rtc-signaling`` and one ``rtc-worker serve`` inside a namespace.

    Attributes:
        ns: the namespace.
        folder: the stack's folder (logs, homes, data).
        token: the signaling token (given to both through the environment).
        port: the signaling server's TCP port (inside the namespace).
        page_url: ``http://127.0.0.1:PORT/``, the page (a secure context).
        ws_url: ``ws://127.0.0.1:PORT/ws``.
        worker_id: the worker's peer id.
        signaling_args, worker_args: extra flags of ``rtc-signaling`` / ``rtc-worker serve``
            (secrets go in ``env``, never in flags).
        extra_env: extra variables of both processes (``env``).
        fingerprint: the worker's key fingerprint (``rtc-worker id``).
        shared_root: the worker's shared root (``inputs/`` and ``outputs/`` exist).
        data_dir: the worker's data folder (its key, received files, partial files).
        signaling: the server's :class:`~tests.netns.Process`.
        worker: the running worker's :class:`~tests.netns.Process` (or the last one).
    """

    def __init__(
        self,
        ns: NetNs,
        folder: Path,
        worker_id: str = "worker-1",
        signaling_args: tuple[str, ...] = (),
        worker_args: tuple[str, ...] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.ns = ns
        self.folder = folder
        self.token = secrets.token_urlsafe(24)
        self.worker_id = worker_id
        self.signaling_args = signaling_args
        self.worker_args = worker_args
        self.extra_env = dict(env or {})
        self.shared_root = folder / "shared"
        self.data_dir = folder / "worker-data"
        self.home = folder / "home"
        for path in (self.shared_root / "inputs", self.shared_root / "outputs", self.home):
            path.mkdir(parents=True, exist_ok=True)
        self._starts = 0
        self.signaling = self._start_signaling()
        self.port = int(self.signaling.wait_for_line(r"listening on ws://[^:]+:(\d+)/ws")[1])
        self.page_url = f"http://127.0.0.1:{self.port}/"
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws"
        self.fingerprint = self._worker_fingerprint()
        self.worker = self.start_worker()

    def _env(self) -> dict[str, str]:
        return _subprocess_env(self.home, RTC_SIGNALING_TOKEN=self.token, **self.extra_env)

    def _start_signaling(self) -> Process:
        argv = [str(BIN / "rtc-signaling"), "--host", "127.0.0.1", "--port", "0"]
        argv += ["--data-dir", str(self.folder / "signaling-data"), "--log-level", "INFO"]
        return self.ns.start(
            "rtc-signaling",
            [*argv, *self.signaling_args],
            self.folder / "logs" / "signaling.log",
            env=self._env(),
        )

    def _worker_fingerprint(self) -> str:
        import subprocess

        result = subprocess.run(
            [str(BIN / "rtc-worker"), "id", "--data-dir", str(self.data_dir)],
            capture_output=True,
            text=True,
            env=self._env(),
            check=True,
            timeout=30,
        )
        return result.stdout.split()[0]

    def start_worker(self, timeout: float = 20.0) -> Process:
        """Start the worker (same id, key, shared root and data folder as before) and
        wait until it registered with signaling; returns its process.

        Raises:
            RuntimeError: when it exits or does not register within ``timeout`` seconds
                (the message holds its log).
        """
        self._starts += 1
        argv = [str(BIN / "rtc-worker"), "serve", "--signaling-url", self.ws_url]
        argv += ["--peer-id", self.worker_id, "--shared-root", str(self.shared_root)]
        argv += ["--data-dir", str(self.data_dir), "--log-level", "INFO"]
        argv += ["--reconnect-max-delay-s", "1"]
        self.worker = self.ns.start(
            "rtc-worker",
            [*argv, *self.worker_args],
            self.folder / "logs" / f"worker-{self._starts}.log",
            env=self._env(),
        )
        self.worker.wait_for_line(r"registered with signaling as ", timeout)
        return self.worker

    def stop_worker(self, timeout: float = 10.0) -> int:
        """Stop the worker with SIGTERM (SIGKILL after ``timeout`` s); its exit status."""
        return self.worker.stop(timeout)

    def kill_worker(self) -> int:
        """Kill the worker with SIGKILL, as a crash would; its exit status."""
        return self.worker.kill()

    def restart_worker(self) -> Process:
        """Stop the worker (SIGTERM) and start it again; returns the new process."""
        self.stop_worker()
        return self.start_worker()

    def health(self) -> dict[str, Any]:
        """The signaling server's ``GET /health`` body, fetched inside the namespace."""
        import json

        status, body = self.ns.http_get(f"{self.page_url}health")
        assert status == 200, body
        return dict(json.loads(body))

    def logs(self) -> str:
        """Every log of the stack (signaling, then each worker start), for a report."""
        parts = []
        for path in sorted((self.folder / "logs").glob("*.log")):
            text = path.read_bytes().decode("utf-8", "replace")
            parts.append(f"----- {path.name} -----\n{text[-20000:]}")
        return "\n".join(parts)

    def close(self) -> None:
        """Stop the worker and the server (SIGTERM, then SIGKILL)."""
        self.worker.stop(5)
        self.signaling.stop(5)


# ---------------------------------------------------------------- the browser


class PageWatch:
    """What a page printed: ``console`` (``"TYPE: text"``) and ``errors`` (uncaught)."""

    def __init__(self) -> None:
        self.console: list[str] = []
        self.errors: list[str] = []

    def report(self) -> str:
        """Both lists as text, for a test report."""
        lines = [f"console {line}" for line in self.console]
        lines += [f"page error: {line}" for line in self.errors]
        return "\n".join(lines) or "(nothing)"


_watches: weakref.WeakKeyDictionary[Any, PageWatch] = weakref.WeakKeyDictionary()


def watch(page: Page) -> PageWatch:
    """The :class:`PageWatch` collecting ``page``'s console messages and page errors
    (attached on the first call; the ``browser_page`` fixture already did)."""
    found = _watches.get(page)
    if found is None:
        found = _watches[page] = PageWatch()
        page.on("console", lambda message: found.console.append(f"{message.type}: {message.text}"))
        page.on("pageerror", lambda error: found.errors.append(str(error)))
    return found


class Chromium:
    """Playwright (sync API) and Chromium launched inside ``ns``.

    Playwright starts the browser through a wrapper script that runs ``ip netns exec NS
    chromium "$@"``; Playwright talks to it over pipes. Headless; Playwright adds
    ``--no-sandbox`` itself. Pass no ``--disable-features`` of your own: Chromium keeps
    only the last one, which would drop Playwright's list.

    Attributes:
        playwright: the Playwright instance.
        browser: the browser, for fresh contexts (``new_context()``).
        wrapper: the wrapper script (an ``executable_path`` for more launches).
    """

    def __init__(self, ns: NetNs, folder: Path, executable: str) -> None:
        from playwright.sync_api import sync_playwright

        folder.mkdir(parents=True, exist_ok=True)
        self.wrapper = folder / "chromium-in-netns"
        self.wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {ns.name} {executable} "$@"\n')
        self.wrapper.chmod(0o700)
        self._manager = sync_playwright()
        self.playwright: Playwright = self._manager.start()
        self._persistent: list[BrowserContext] = []
        try:
            self.browser: Browser = self.playwright.chromium.launch(
                executable_path=str(self.wrapper)
            )
        except BaseException:
            self._manager.__exit__(None, None, None)
            raise

    def new_page(self) -> Page:
        """A page in a fresh context (empty storage), with its :func:`watch` attached."""
        page = self.browser.new_context().new_page()
        watch(page)
        return page

    def launch_persistent(self, user_data_dir: Path, **options: Any) -> BrowserContext:
        """A second browser with a profile kept in ``user_data_dir`` (IndexedDB,
        localStorage survive): close it and launch again with the same folder to see
        what survives a browser restart. Closed at teardown if still open."""
        context = self.playwright.chromium.launch_persistent_context(
            str(user_data_dir), executable_path=str(self.wrapper), **options
        )
        self._persistent.append(context)
        return context

    def close(self) -> None:
        """Close every context and browser, then stop Playwright."""
        for context in self._persistent:
            with contextlib.suppress(Exception):
                context.close()
        try:
            self.browser.close()
        finally:
            self._manager.__exit__(None, None, None)


# ---------------------------------------------------------------- reports


def add_failure_section(item: pytest.Item, title: str, text: Callable[[], str]) -> None:
    """When ``item`` fails (setup or call), its report gets a section ``title`` holding
    ``text()`` (called then, so it shows the state at the failure)."""
    item.stash.setdefault(_SECTIONS, []).append((title, text))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Add the sections of :func:`add_failure_section` to a failed setup or call."""
    report = yield
    if report.when in ("setup", "call") and report.failed:
        for title, text in item.stash.get(_SECTIONS, []):
            try:
                body = text()
            except Exception as exc:
                body = f"(could not collect: {exc!r})"
            report.sections.append((title, body))
    return report


def _artifacts(node: pytest.Item) -> Path:
    module = node.path.stem
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in node.name)
    folder = ARTIFACTS / module / safe
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def browser_netns() -> Iterator[NetNs]:
    """The module's network namespace (skips when Chromium cannot run in one)."""
    chromium_executable()
    try:
        with netns() as ns:
            yield ns
    except NetnsUnavailable as exc:
        need(f"cannot make a network namespace: {exc}")


@pytest.fixture(scope="module")
def browser_stack_module(
    browser_netns: NetNs, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """The module's stack; a start that fails is an error holding the process's log."""
    stack = Stack(browser_netns, tmp_path_factory.mktemp("stack"))
    try:
        yield stack
    finally:
        stack.close()


@pytest.fixture
def browser_stack(browser_stack_module: Stack, request: pytest.FixtureRequest) -> Stack:
    """The module's signaling server and worker (started again if a test stopped it)."""
    if not browser_stack_module.worker.alive:
        browser_stack_module.start_worker()
    add_failure_section(request.node, "stack logs", browser_stack_module.logs)
    return browser_stack_module


@pytest.fixture(scope="module")
def chromium(browser_netns: NetNs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    """Chromium in the module's namespace, through Playwright."""
    browser = Chromium(browser_netns, tmp_path_factory.mktemp("chromium"), chromium_executable())
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture
def artifacts_dir(request: pytest.FixtureRequest) -> Path:
    """``test-artifacts/<module>/<test>/`` at the repo root (created; git-ignored)."""
    return _artifacts(request.node)


@pytest.fixture
def browser_page(chromium: Chromium, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A page in a fresh browser context (closed after the test). On failure the report
    shows its console and page errors, and a screenshot goes to the artifacts folder."""
    page = chromium.new_page()
    node = request.node

    def screenshot() -> str:
        path = _artifacts(node) / "failure.png"
        page.screenshot(path=str(path), full_page=True)
        return f"{path} (page at {page.url})"

    add_failure_section(node, "browser console", watch(page).report)
    add_failure_section(node, "screenshot", screenshot)
    try:
        yield page
    finally:
        page.context.close()
