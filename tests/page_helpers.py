"""Helpers for the browser page's tests: the real ``rtc-signaling`` as a subprocess, and
headless Chromium through Playwright (skipped, with the reason, where either is missing).

The page's protocol module is tested here without WebRTC, so Chromium runs without a
network namespace; the end-to-end tests (WebRTC) use ``tests/browser_env.py``.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.requirements import need

CHROMIUM = os.environ.get("RTC_TEST_CHROMIUM", "/usr/bin/chromium")


def need_browser() -> Any:
    """The Playwright ``sync_playwright`` factory, or skip (with the reason) when
    Playwright or Chromium is not installed."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        need("playwright is not installed (pip install playwright; never 'playwright install')")
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        need(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    return sync_playwright


@contextmanager
def signaling_process(data_dir: Path, *args: str) -> Iterator[str]:
    """``rtc-signaling`` on a free loopback port; yields its ``http://`` origin."""
    argv = [sys.executable, "-m", "signaling", "--port", "0", "--data-dir", str(data_dir), *args]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        if not line.startswith("listening on ws://"):
            raise RuntimeError(f"rtc-signaling did not start: {line!r}")
        yield "http://" + line.split("ws://", 1)[1].removesuffix("/ws\n").strip()
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def as_json(message: Any) -> dict[str, Any]:
    """A protocol message as the page's plain object: ``kind`` (the class name) and the
    dataclass fields, bytes as base64, tuples as lists."""
    out: dict[str, Any] = {"kind": type(message).__name__}
    for f in dataclasses.fields(message):
        value = getattr(message, f.name)
        if isinstance(value, bytes):
            value = {"b64": base64.b64encode(value).decode()}
        elif isinstance(value, tuple):
            value = [list(v) if isinstance(v, tuple) else v for v in value]
        out[f.name] = value
    return out


#: Page-side helpers: (de)serialise messages whose bytes travel as {"b64": ...}.
PAGE_CODEC_JS = """
const P = await import('/protocol.js');
const unb64 = (t) => Uint8Array.from(atob(t), c => c.charCodeAt(0));
const fromJson = (o) => Object.fromEntries(Object.entries(o).map(([k, v]) =>
  [k, v && typeof v === 'object' && 'b64' in v ? unb64(v.b64) : v]));
const toJson = (o) => Object.fromEntries(Object.entries(o).map(([k, v]) =>
  [k, v instanceof Uint8Array ? {b64: P.b64encode(v)} : v]));
const frameOut = (f) => typeof f === 'string' ? f : {b64: P.b64encode(f)};
const frameIn = (f) => typeof f === 'string' ? f : unb64(f.b64);
const attempt = (fn) => {
  try { return {ok: fn()}; } catch (e) { return {error: e.code ?? String(e), detail: e.detail}; }
};
"""
