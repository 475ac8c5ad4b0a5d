"""The attack catalogue of the worker fuzzer: the hostile pieces its frames are made of
(traversal paths, bad names, broken and unknown frames, look-alike characters) and the
random text that mixes them."""

from __future__ import annotations

import random
import string

from fuzz_fixtures import MARKER, OUTSIDE, OUTSIDE_ZIP, TMPDIR

ID_CHARS = string.ascii_letters + string.digits + "._-"
JUNK = [
    "\x00", "\x01", "\x07", "\x1b", "\x7f", "\n", "\r", "\t", "\u0085", "\u2028",
    "\u200b", "\u202e", "\ufeff", "\uffff", "\U0010ffff", "\uff0f", "\u2215", "\u2044",
    "\uff0e", "\u2025", "\uff3c", "\u00e9", "e\u0301", "\U0001f600", ":", "::", "/",
    "\\", "..", "%2e", "%00", "~", "$HOME", "*", "?", '"', "'", " ", "\u00a0", "{}",
]  # fmt: skip
SEGMENTS = [
    "..", ".", "", "inputs", "outputs", "link-out", "escape", "rel-out", "tmp-link",
    "loop", "package.zip", "\u2025", "\uff0e\uff0e", "..\\..", "...", "sub", "outside",
]  # fmt: skip
ESCAPES = [
    "..", "../", "../outside", f"../outside/{MARKER}-a.txt", "inputs/../..",
    f"inputs/../../outside/{MARKER}-a.txt", "./../outside", "outputs/../../outside/new-dir",
    "inputs/./../../outside", "inputs//..//..//outside", "inputs/package.zip/../../..",
    f"inputs/rel-out/{MARKER}-a.txt", "inputs/rel-out", "inputs/rel-out/new-dir",
    "link-out", f"link-out/{MARKER}-a.txt", f"link-out/{OUTSIDE_ZIP}", "link-out/new-dir",
    "link-out/sub/deeper", "tmp-link", "tmp-link/escaped-dir", "tmp-link/outside",
    "outputs/escape", "outputs/escape/new-dir", "outputs/escape/a/b/c",
    "inputs/secret-link.zip", "inputs/dangling", "inputs/dangling/x", "outputs/loop",
    "outputs/loop/x", OUTSIDE, f"{OUTSIDE}/", f"{OUTSIDE}/{MARKER}-a.txt",
    f"{OUTSIDE}/{OUTSIDE_ZIP}", f"{OUTSIDE}/new-dir", f"{OUTSIDE}/sub/new-dir",
    f"{TMPDIR}/escaped-dir", f"{TMPDIR}/outside", "/", "/etc/passwd", "/tmp",
    "//server/share", "\\\\server\\share\\x", "C:\\Windows", "C:/x", "c:x",
    "..\\..\\outside", "inputs\\..\\..\\outside", "inputs/\x00package.zip",
    "inputs/package.zip\x00", "\x00", "inputs/pack\nage.zip", "inputs/\x1b[31mred",
    "outputs/new\rline", "outputs/tab\there", "~/x", "~root", "$HOME/x",
    "%2e%2e/%2e%2e/outside", "\uff0e\uff0e/outside", "\uff0e\uff0e\uff0f\uff0e\uff0e",
    "inputs\uff0f..\uff0f..\uff0foutside", "\u2025/outside", "..\u2215..\u2215outside",
    "..\u2044outside", "\u202e..", ".\u200b./outside", "..\u00a0/outside", " ..", ".. ",
    "file:///etc/passwd", "\\..\\..", "inputs/../inputs/../../outside",
]  # fmt: skip
INPUTS = [
    "inputs/package.zip", "inputs/plain.txt", "inputs", "inputs/corrupt.zip",
    "inputs/missing.zip", "inputs/package.zip/", "./inputs/package.zip",
    "inputs//package.zip", "inputs/./package.zip", "inputs/package.zip::x", "outputs",
    "", " ", ".", "./", ".rtc-store", ".rtc-store/objects", ".rtc-jobs", ".rtc-work",
    "INPUTS/PACKAGE.ZIP", "inputs/package.zip ",
]  # fmt: skip
OUTPUTS = [
    "outputs/fz-{k}", "outputs/fz-{k}/sub/deeper", "outputs", "inputs", "inputs/package.zip",
    "inputs/plain.txt/sub", ".", "./", "", ".rtc-store", ".rtc-store/fz", ".rtc-jobs/fz-{k}",
    ".rtc-work/fz-{k}", "new-top-{k}", "outputs/fz-{k}/", "outputs/fz \u00e9 {k}",
    "outputs/" + "d/" * 200 + "fz-{k}", "outputs/fz-{k}::x",
]  # fmt: skip
BAD_NAMES = [
    "../evil.bin", "..", ".", "a/b.bin", "/abs.bin", f"{OUTSIDE}/planted.bin", "C:evil.bin",
    "c:", "\\\\server\\x.bin", "dir\\evil.bin", "x\x00y.bin", "x\ny.bin", "tab\t.bin",
    "\u2215etc\u2215passwd", "\uff0e\uff0e", "\uff0e\uff0e\uff0fx.bin", "a\uff3cb.bin",
    "\u2025", "a::b.bin", "", " ", "n" * 300, "CON", "nul", "\u202egnp.exe",
    "\U0001f600.bin", "\x7f", ".hidden", "ok.bin",
]  # fmt: skip
VALID = [
    "JOB_START", "SHARED_STORAGE_JOB::start", "JOB_CANCEL", "END_OF_FILE", "FILE_CANCEL",
    "FILE_READY::0", "FILE_READY::{n}", "FILE_EXISTS::{sha}", "FILE_RECEIVED::{sha}",
    "FILE_PROGRESS::{n}::{n}", "TRANSFER_ERROR::CANCELLED::fuzz", "TRANSFER_ERROR::HASH_MISMATCH",
    "JOB_ID::fz-{k}", "PATH_VALIDATED::input", "PATH_VALIDATED::output", "PATH_ERROR::nope",
    "JOB_LOG::hello", 'JOB_METRICS::{"validation_ms":1,"file_access_ms":1,"run_s":1,"total_s":1}',
    "JOB_COMPLETE::fz-{k}::outputs/fz-{k}::1::0.00", "JOB_FAILED::fz-{k}::reason",
    "PROTOCOL_ERROR::UNKNOWN_MESSAGE::x", "RESULTS_REQUEST::fz-{k}",
    "SHARED_INPUT_PATH::inputs/package.zip", "SHARED_OUTPUT_PATH::outputs/fz-{k}",
    "FILE_META::fz.bin::{n}::{sha}::65536", "FILE_META::fz.bin:{n}:gui",
    "FILE_PROOF::{sha}", "FILE_PROOF_REQUEST::{nonce}::0+1", "FILE_PROOF_REQUEST::{nonce}::5+4096",
]  # fmt: skip
BROKEN = [
    "JOB_ID", "JOB_ID::", "JOB_ID::" + "a" * 65, "JOB_ID::a b", "JOB_ID::\u00fc", "JOB_ID::a::b",
    "JOB_ID::../x", "JOB_ID::\x00", "JOB_START::now", "JOB_START::", "JOB_CANCEL::x",
    "SHARED_STORAGE_JOB", "SHARED_STORAGE_JOB::stop", "SHARED_STORAGE_JOB::START",
    "SHARED_STORAGE_JOB::start::x", "SHARED_INPUT_PATH", "SHARED_INPUT_PATH::",
    "SHARED_OUTPUT_PATH", "SHARED_OUTPUT_PATH::", "FILE_READY", "FILE_READY::-1",
    "FILE_READY::abc", "FILE_READY::1e9", "FILE_READY::" + "9" * 20, "FILE_READY::0::0",
    "FILE_EXISTS::xyz", "FILE_EXISTS", "FILE_RECEIVED::" + "a" * 63, "FILE_PROGRESS::1",
    "FILE_PROGRESS::a::b", "FILE_PROGRESS::-1::2", "TRANSFER_ERROR", "TRANSFER_ERROR::",
    "TRANSFER_ERROR::lower::x", "TRANSFER_ERROR::" + "A" * 70, "END_OF_FILE::x",
    "FILE_CANCEL::x", "RESULTS_REQUEST", "RESULTS_REQUEST::", "RESULTS_REQUEST::bad id!",
    "RESULTS_REQUEST::" + "r" * 65, "JOB_METRICS::{not json", 'JOB_METRICS::{"a":1}',
    "JOB_METRICS::[]", "JOB_METRICS::NaN", "JOB_COMPLETE::x::y::z::w", "JOB_COMPLETE",
    "JOB_FAILED::x", "PATH_VALIDATED::sideways", "PATH_VALIDATED", "PATH_ERROR",
    "JOB_LOG", "PROTOCOL_ERROR", "FILE_META", "FILE_META::", "FILE_META::x",
    "FILE_META::x::1::2::3", "FILE_META::::1::" + "0" * 64 + "::1", "FILE_META:x:1:g",
    "FILE_PROOF", "FILE_PROOF::xyz", "FILE_PROOF::" + "a" * 63, "FILE_PROOF_REQUEST",
    "FILE_PROOF_REQUEST::" + "0" * 32, "FILE_PROOF_REQUEST::" + "0" * 32 + "::0+0",
    "FILE_PROOF_REQUEST::" + "0" * 32 + "::0+65537", "FILE_PROOF_REQUEST::zz::0+1",
    "FILE_PROOF_REQUEST::" + "0" * 32 + "::" + ",".join(["0+1"] * 17),
    "FILE_PROOF_REQUEST::" + "0" * 32 + "::-1+1", "FILE_PROOF_REQUEST::" + "0" * 32 + "::0+1,",
]  # fmt: skip
UNKNOWN = [
    "", "::", ":::::", "PING", "ping", "job_start", "Job_Start", "JOB_START ", " JOB_START",
    "\ufeffJOB_START", "JOB_START\x00", "JOB-START", "JOBSTART", "FILE_METADATA::x",
    '{"type":"offer","sdp":"x"}', "GET / HTTP/1.1", "\x00\x00\x00", "HELLO::world",
    "X" * 40 + "::y", "SHARED_INPUT_PATH\n::x", "JOB_ID\t::a", "null", "0", "-",
]  # fmt: skip


def rand_text(rng: random.Random, length: int) -> str:
    """Text mixing letters with control characters, separators and look-alikes."""
    parts = []
    for _ in range(length):
        roll = rng.random()
        if roll < 0.6:
            parts.append(rng.choice(string.ascii_letters + string.digits))
        elif roll < 0.9:
            parts.append(rng.choice(JUNK))
        else:  # any code point but surrogates (they cannot be sent as UTF-8)
            code = rng.randrange(0x20, 0x2FFFF)
            parts.append(chr(code) if not 0xD800 <= code <= 0xDFFF else "?")
    return "".join(parts)
