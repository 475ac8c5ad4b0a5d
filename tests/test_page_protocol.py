"""The page's protocol module (``signaling/page/protocol.js``) and its sha256, run in
headless Chromium and checked against the Python codec on the same inputs.

Cases are generated in Python (``protocol.testing`` strategies and fixed lists), sent to
the page in one batch, evaluated there, and compared here: every frame kind encodes to
the same text and parses to the same fields; malformed frames are refused with the same
code; the bounds of PROTOCOL.md 1.2 hold at their edges; the handshake and proof test
vectors of PROTOCOL.md give the same bytes; the page's machines are the Python tables.

One deliberate difference: a count above 2^53 - 1 (a browser number cannot hold it
exactly) is refused by the page with MALFORMED_FRAME.

The relay road is left out on purpose: the page moves files on the channel only, so it
never sends RELAY_PART or RELAY_STOP, and a worker sends RELAY_ENDED only in answer to
them; the page refuses the three as unknown frames. It reads JOB_METRICS' four timings
and ignores the optional road and transfer_mb_s. Its sender mirrors the channel rows
of SENDER_TABLE, and ROAD_UNAVAILABLE (a local error) and RELAY_CHUNK_INVALID (carried by
RELAY_ENDED) never reach it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import codec
from protocol.connection import Connection
from protocol.errors import ErrorCode, RemoteProtocolError, TransferErrorCode
from protocol.events import Refused
from protocol.handshake import CLIENT_AUTH_TABLE
from protocol.job import CLIENT_TABLE, WORKER_TABLE, ClientJobState, JobState, Pending
from protocol.limits import DEFAULT_LIMITS
from protocol.messages import JobMetrics, ResultsRequest
from protocol.proof import proof_digest
from protocol.relay import RELAY_SENDER_ROWS
from protocol.relay_messages import RELAY_TYPES
from protocol.routes import REQUEST_OF_CODE, Role
from protocol.sender import SENDER_TABLE
from protocol.signaling_errors import SignalingErrorCode
from protocol.testing import malformed_frames_with_codes, messages
from protocol.transfer_messages import FileMeta
from tests.page_helpers import CHROMIUM, PAGE_CODEC_JS, as_json, need_browser, signaling_process

REPO = Path(__file__).resolve().parent.parent
SAFE = 2**53 - 1
#: The relay road's frames, which the page does not speak (see the module docstring).
RELAY_FRAMES = frozenset(cls.TYPE for cls in RELAY_TYPES)
RELAY_CODES = {ErrorCode.ROAD_UNAVAILABLE, TransferErrorCode.RELAY_CHUNK_INVALID}


def channel_only(message: Any) -> Any:
    """``message`` as the page knows it: JOB_METRICS without its optional road and
    transfer_mb_s (the page shows the four timings and ignores the rest)."""
    if isinstance(message, JobMetrics):
        return JobMetrics(*(getattr(message, name) for name in JobMetrics.FIELDS))
    return message


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The served page in headless Chromium (no WebRTC here, so no namespace)."""
    sync_playwright = need_browser()
    with signaling_process(tmp_path_factory.mktemp("sig")) as origin, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        try:
            tab = browser.new_page()
            tab.goto(origin + "/")
            tab.wait_for_selector("body[data-state=idle]", state="attached", timeout=15000)
            yield tab
        finally:
            browser.close()


def run(page: Any, body: str, arg: Any = None) -> Any:
    """Evaluate ``body`` (an async function body with ``P`` = protocol.js and ``arg``)."""
    script = f"async (argJson) => {{ const arg = JSON.parse(argJson); {PAGE_CODEC_JS} {body} }}"
    return page.evaluate(script, json.dumps(arg))


def python_parse(frame: str | bytes) -> dict[str, Any]:
    try:
        shown = as_json(codec.decode(frame))
        if shown["kind"] == "JobMetrics":  # the page ignores the optional fields
            shown = {k: v for k, v in shown.items() if k not in JobMetrics.OPTIONAL}
        return {"ok": shown}
    except RemoteProtocolError as exc:
        return {"error": str(exc.code)}


def big_count(message: dict[str, Any]) -> bool:
    """Whether a message holds a count the page cannot hold exactly."""
    values = [v for v in message.values() if isinstance(v, int) and not isinstance(v, bool)]
    values += [n for v in message.values() if isinstance(v, list) for pair in v for n in pair]
    return any(v > SAFE for v in values)


def frame_json(frame: str | bytes) -> Any:
    return {"b64": base64.b64encode(frame).decode()} if isinstance(frame, bytes) else frame


ROUND_TRIP_JS = """
return arg.map(c => {
  const enc = attempt(() => frameOut(P.encode(fromJson(c.message))));
  const dec = attempt(() => toJson(P.parse(frameIn(c.frame))));
  return {enc, dec};
});
"""


@settings(
    max_examples=4,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(batch=st.lists(messages(), min_size=120, max_size=120))
def test_every_frame_kind_encodes_and_parses_as_the_python_codec(page: Any, batch: list) -> None:
    batch = [channel_only(m) for m in batch if m.TYPE not in RELAY_FRAMES]
    cases = [{"message": as_json(m), "frame": frame_json(codec.encode(m))} for m in batch]
    results = run(page, ROUND_TRIP_JS, cases)
    for message, case, got in zip(batch, cases, results, strict=True):
        if big_count(case["message"]):
            assert got["enc"].get("error") == "MALFORMED_FRAME", case
            assert got["dec"].get("error") == "MALFORMED_FRAME", case
            continue
        assert got["enc"] == {"ok": case["frame"]}, case
        assert got["dec"] == python_parse(codec.encode(message)), case


def test_one_example_of_every_kind(page: Any) -> None:
    """A fixed list holding every message class the Python codec knows."""
    frames = [
        "JOB_ID::run-1",
        "SHARED_INPUT_PATH::data/in::put.zip",
        "SHARED_OUTPUT_PATH::out",
        "JOB_START",
        "SHARED_STORAGE_JOB::start",
        "JOB_CANCEL",
        "RESULTS_REQUEST::run-1",
        "RESULTS_VIA_STORAGE",
        "PATH_VALIDATED::input",
        "PATH_ERROR::Path outside shared storage: ../x",
        "JOB_LOG::step 1 :: done",
        'JOB_METRICS::{"validation_ms":1.0,"file_access_ms":0.25,"run_s":2,"total_s":3.1234}',
        "JOB_COMPLETE::run-1::out::sub::3::1.50",
        "JOB_FAILED::run-1::cancelled",
        "RESULTS_STORED::run-1::/download/run-1",
        "RESULTS_STORED::run-1::/download/run-1::" + "a" * 64 + "::12::tok.en",
        "PROTOCOL_ERROR::WORKER_BUSY::busy",
        "PROTOCOL_ERROR::NEW_CODE",
        "FILE_META::a::b.txt::12::" + "A" * 64 + "::65536",
        "FILE_META::old.txt:12:gui",
        "FILE_PROOF_REQUEST::" + "0" * 32 + "::0+1,5+4096",
        "FILE_PROOF::" + "b" * 64,
        "FILE_READY::0",
        "FILE_EXISTS::" + "c" * 64,
        "FILE_PROGRESS::10::20",
        "END_OF_FILE",
        "FILE_RECEIVED::" + "d" * 64,
        "TRANSFER_ERROR::HASH_MISMATCH::bad",
        "FILE_CANCEL",
        "AUTH_HELLO::"
        + base64.b64encode(b"k" * 32).decode()
        + "::"
        + base64.b64encode(b"n" * 32).decode(),
        "AUTH_CHALLENGE::"
        + "::".join(base64.b64encode(x).decode() for x in (b"k" * 32, b"n" * 32, b"s" * 64)),
        "AUTH_RESPONSE::" + base64.b64encode(b"s" * 64).decode(),
        "AUTH_OK::" + "e" * 64,
        b"\x00\x01binary",
    ]
    kinds = {type(codec.decode(f)).__name__ for f in frames}
    assert kinds == {cls.__name__ for cls in codec.MESSAGE_TYPES if cls not in RELAY_TYPES}
    cases = [
        {"message": as_json(codec.decode(f)), "frame": frame_json(codec.encode(codec.decode(f)))}
        for f in frames
    ]
    results = run(page, ROUND_TRIP_JS, cases)
    for case, got in zip(cases, results, strict=True):
        assert got["enc"] == {"ok": case["frame"]}, case
        assert got["dec"] == python_parse(
            base64.b64decode(case["frame"]["b64"])
            if isinstance(case["frame"], dict)
            else case["frame"]
        ), case
    assert sorted(run(page, "return P.FRAME_TYPES;")) == sorted(codec.FRAME_TYPES - RELAY_FRAMES)


PARSE_JS = "return arg.map(f => attempt(() => toJson(P.parse(frameIn(f)))));"


@settings(
    max_examples=4,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(batch=st.lists(malformed_frames_with_codes(), min_size=150, max_size=150))
def test_malformed_frames_are_refused_with_the_python_code(page: Any, batch: list) -> None:
    batch = [  # a malformed relay frame is an unknown one for the page
        (frame, code)
        for frame, code in batch
        if not (
            isinstance(frame, str)
            and frame.partition("::")[0] in RELAY_FRAMES
            and code == ErrorCode.MALFORMED_FRAME
        )
    ]
    frames = [frame_json(frame) for frame, _ in batch]
    results = run(page, PARSE_JS, frames)
    for (frame, code), got in zip(batch, results, strict=True):
        assert "ok" not in got, (frame, got)
        assert got["error"] == str(code), (frame, code, got)


def test_bounds_at_their_edges(page: Any) -> None:
    limits = DEFAULT_LIMITS
    text = "JOB_LOG::" + "x" * (limits.max_text_frame_bytes - len("JOB_LOG::"))
    fields = "JOB_LOG::" + "::".join(["a"] * (limits.max_fields - 1))
    path = "SHARED_INPUT_PATH::" + "é" * (limits.max_path_bytes // 2)
    frames: list[str | bytes] = [
        text,
        text + "x",
        text[:-1] + "é",  # one character, two bytes: over by one
        fields,
        fields + "::a",
        path,
        path + "x",
        b"\x00" * limits.max_binary_frame_bytes,
        b"\x00" * (limits.max_binary_frame_bytes + 1),
        "FILE_READY::" + "9" * 18,
        "FILE_READY::" + str(SAFE),
    ]
    results = run(
        page,
        "return arg.map(f => attempt(() => P.parse(frameIn(f))).error ?? 'ok');",
        [frame_json(f) for f in frames],
    )
    expected = [python_parse(f).get("error", "ok") for f in frames]
    expected[-2] = "MALFORMED_FRAME"  # 10^18 - 1: beyond what the page counts exactly
    assert results == expected
    assert expected[:9] == [
        "ok",
        "FRAME_TOO_LARGE",
        "FRAME_TOO_LARGE",
        "ok",
        "TOO_MANY_FIELDS",
        "ok",
        "PATH_TOO_LONG",
        "ok",
        "FRAME_TOO_LARGE",
    ]
    page_limits = run(page, "return P.LIMITS;")
    for name in (
        "max_text_frame_bytes",
        "max_binary_frame_bytes",
        "max_path_bytes",
        "max_name_bytes",
        "max_fields",
        "max_file_bytes",
        "chunk_bytes",
        "proof_ranges",
        "proof_range_bytes",
    ):
        assert page_limits[name] == getattr(limits, name), name
    sizes = run(
        page,
        "return [262144, 1073741823, 65536, undefined].map(P.chunkSizeFor);",
    )
    assert sizes == [262144, limits.max_binary_frame_bytes, 65536, limits.chunk_bytes]


def _vector() -> dict[str, Any]:
    text = (REPO / "PROTOCOL.md").read_text()
    block = text.split("<!-- BEGIN GENERATED: handshake-vector -->", 1)[1].split(
        "<!-- END GENERATED", 1
    )[0]
    values = dict(re.findall(r"^(\w+)\s+= (.+)$", block, re.M))
    frames = re.findall(r"^[-<]{1}[>-]? (AUTH_\w+::\S+)$", block, re.M)
    values.update(zip(("hello", "challenge", "response", "ok"), frames, strict=True))
    section = text.split("### 5.3 Registration with a key", 1)[1].split("## 6.", 1)[0]
    values["reg"] = dict(re.findall(r"^\| ([a-z0-9 (),]+) \| `([0-9a-f]+)` \|$", section, re.M))
    values["reg"]["nonce"] = re.search(r"nonce `202122…3f`,\s+i\.e\.\s+`([0-9a-f]{64})`", section)[
        1
    ]
    return values


HANDSHAKE_JS = """
const v = arg;
const reg = v.reg;
const unhex = P.unhex;
// The client's key from its seed: PKCS#8 wrapping of an Ed25519 seed (RFC 8410).
const pkcs8 = P.concat(unhex('302e020100300506032b657004220420'), unhex(v.client_seed));
const priv = await crypto.subtle.importKey('pkcs8', pkcs8, {name: 'Ed25519'}, false, ['sign']);
const ed = {name: 'Ed25519'};
const signer = {
  publicKey: unhex(v.client_key),
  sign: async (b) => new Uint8Array(await crypto.subtle.sign(ed, priv, b)),
};
const make = (pinned) => new P.ClientHandshake({
  signer, offerDtls: v.offer_dtls, answerDtls: v.answer_dtls, pinned, nonce: unhex(v.client_nonce),
});
const out = {};
let hs = make(v.worker_fp);
out.hello = hs.start();
const r1 = await hs.receive(P.parse(v.challenge));
out.transcript = P.hex(hs.transcript);
out.response = r1.send;
const r2 = await hs.receive(P.parse(v.ok));
out.done = r2.done; out.state = hs.state;
out.fingerprint = P.fingerprint(unhex(v.client_key));
// A pinned key that differs: refused loudly, nothing signed.
hs = make('0'.repeat(64)); hs.start();
const changed = await hs.receive(P.parse(v.challenge));
out.changed = {failed: changed.failed.code, send: changed.send, state: hs.state};
// A challenge whose signature was tampered with.
const bad = P.parse(v.challenge); bad.signature = bad.signature.slice(); bad.signature[0] ^= 1;
hs = make(null); hs.start();
const forged = await hs.receive(bad);
out.forged = {failed: forged.failed.code, send: forged.send};
// AUTH_OK naming another identity.
hs = make(null); hs.start(); await hs.receive(P.parse(v.challenge));
const wrong = await hs.receive(P.parse('AUTH_OK::' + 'f'.repeat(64)));
out.wrong = wrong.failed.code;
// A message out of turn.
hs = make(null);
out.outOfTurn = await hs.receive(P.parse(v.ok)).then(() => 'accepted', e => e.code);
// The registration vector of PROTOCOL.md 5.3.
const seed = unhex('000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f');
const rk = await crypto.subtle.importKey(
  'pkcs8', P.concat(unhex('302e020100300506032b657004220420'), seed), ed, true, ['sign']);
const jwk = await crypto.subtle.exportKey('jwk', rk);
const pub = unb64(jwk.x.replace(/-/g, '+').replace(/_/g, '/') + '=');
const payload = P.registrationPayload(unhex(reg.nonce), 'gpu-1', 'worker', pub);
out.registration = {key: P.hex(pub), fingerprint: P.fingerprint(pub), payload: P.hex(payload),
  signature: P.hex(new Uint8Array(await crypto.subtle.sign({name: 'Ed25519'}, rk, payload)))};
out.weak = [P.isWeakPublicKey(new Uint8Array(32)), P.isWeakPublicKey(unhex(v.worker_key))];
return out;
"""


def test_handshake_vector_of_protocol_md(page: Any) -> None:
    v = _vector()
    out = run(page, HANDSHAKE_JS, v)
    assert out["hello"] == v["hello"]
    assert out["transcript"] == v["transcript"]
    assert out["response"] == [v["response"]]
    assert out["done"] == v["worker_fp"] and out["state"] == "AUTHENTICATED"
    assert out["fingerprint"] == v["client_fp"]
    assert out["changed"]["failed"] == "WORKER_KEY_CHANGED" and out["changed"]["state"] == "FAILED"
    assert [f.split("::")[:2] for f in out["changed"]["send"]] == [
        ["PROTOCOL_ERROR", "AUTH_FAILED"]
    ]
    assert out["forged"]["failed"] == "AUTH_FAILED"
    assert [f.split("::")[:2] for f in out["forged"]["send"]] == [["PROTOCOL_ERROR", "AUTH_FAILED"]]
    assert out["wrong"] == "AUTH_FAILED"
    assert out["outOfTurn"] == "UNEXPECTED_MESSAGE"
    assert out["registration"] == {
        "key": v["reg"]["public key (hex)"],
        "fingerprint": v["reg"]["fingerprint"],
        "payload": v["reg"]["payload (115 bytes, hex)"],
        "signature": v["reg"]["signature (hex)"],
    }
    assert out["weak"] == [True, False]


def test_proof_digest_vector(page: Any) -> None:
    data = b"hello world\n" * 1000
    requests = ["0+4096,5000+4096,7904+4096", "0+4096,4096+4096,8192+3808", "11999+1", "0+12000"]
    nonce = "000102030405060708090a0b0c0d0e0f"
    got = run(
        page,
        """
      const data = new TextEncoder().encode('hello world\\n'.repeat(1000));
      const out = [];
      const nonce = '000102030405060708090a0b0c0d0e0f';
      const read = async (o, l) => data.slice(o, o + l);
      for (const r of arg) {
        const request = P.parse(`FILE_PROOF_REQUEST::${nonce}::${r}`);
        out.push(await P.proofDigest(request, data.length, read));
      }
      const beyond = P.parse(`FILE_PROOF_REQUEST::${nonce}::11999+2`);
      out.push(await P.proofDigest(beyond, data.length, read).catch(e => e.code));
      return out;""",
        requests,
    )
    expected = []
    for r in requests:
        ranges = tuple(tuple(int(n) for n in item.split("+")) for item in r.split(","))
        expected.append(proof_digest(nonce, [data[o : o + n] for o, n in ranges]))
    assert got[:4] == expected
    assert got[0] == "a88907181c30267e9e7291f0c90c709e8a0a5842c99dd779bb5671b4b0f7bde0"
    assert got[1] == "bb41270a1670051c3ee5cffd89352c9f759da29acf508a36c1764f5c977b1638"
    assert got[4] == "MALFORMED_FRAME"  # a range beyond the file: no answer


def _pattern(n: int) -> bytes:
    return bytes((i * 31 + 7) & 255 for i in range(n))


def test_sha256_js_matches_hashlib_at_chunk_boundaries(page: Any) -> None:
    lengths = [0, 1, 55, 56, 63, 64, 65, 119, 120, 127, 128, 129, 1000, 4096 * 3 + 7, (1 << 20) + 3]
    steps = [1, 7, 63, 64, 65, 4096, 1 << 20]
    got = run(
        page,
        """
      const {Sha256} = await import('/sha256.js');
      const pattern = (n) => {
        const b = new Uint8Array(n);
        for (let i = 0; i < n; i++) b[i] = (i * 31 + 7) & 255;
        return b;
      };
      const out = {};
      for (const n of arg.lengths) for (const step of arg.steps) {
        if (step === 1 && n > 5000) continue;
        const data = pattern(n), h = new Sha256();
        for (let i = 0; i < n; i += step) h.update(data.subarray(i, i + step));
        out[n + '/' + step] = P.hex(h.digest());
      }
      const {hashFile, READ_BLOCK} = await import('/session.js');
      const big = 2 * READ_BLOCK + 5;
      out.file = await hashFile(new Blob([pattern(big)]));
      out.fileSize = big;
      return out;""",
        {"lengths": lengths, "steps": steps},
    )
    for key, digest in got.items():
        if "/" in key:
            assert digest == hashlib.sha256(_pattern(int(key.split("/")[0]))).hexdigest(), key
    assert got["file"] == hashlib.sha256(_pattern(got["fileSize"])).hexdigest()


def test_every_error_code_has_a_readable_message(page: Any) -> None:
    codes = [
        c.value
        for c in (*ErrorCode, *TransferErrorCode, *SignalingErrorCode)
        if c not in RELAY_CODES
    ] + ["WORKER_KEY_CHANGED"]
    texts = run(
        page, "return arg.map(c => [c in P.ERROR_TEXT, P.describeError(c, 'detail')]);", codes
    )
    for code, (known, text) in zip(codes, texts, strict=True):
        assert known, code
        assert text.startswith(f"{code}: ") and text.endswith("(detail)"), text


def test_the_page_machines_are_the_python_tables(page: Any) -> None:
    client = {
        f"{state.value}|{getattr(key, '__name__', None) or key.value}": nxt.value
        for (state, key), nxt in CLIENT_AUTH_TABLE.items()
    }
    sender = {
        f"{state.value}|{getattr(key, '__name__', None) or key.value}": nxt.value
        for (state, key), nxt in SENDER_TABLE.items()
        if state.value != "PREPARING"
        and getattr(key, "__name__", "") != "ResultsRequest"
        and (state, key) not in RELAY_SENDER_ROWS
    }

    def name(key: Any) -> str:
        return getattr(key, "__name__", None) or key.value

    worker_job = {f"{s.value}|{name(key)}": nxt.value for (s, key), nxt in WORKER_TABLE.items()}
    client_job = {
        f"{s.worker.value}|{s.pending.value}|{name(key)}": f"{n.worker.value}|{n.pending.value}"
        for (s, key), n in CLIENT_TABLE.items()
    }
    tables = run(
        page,
        "return {client: P.CLIENT_AUTH_TABLE, sender: P.SENDER_TABLE, worker_job:"
        " P.WORKER_JOB_TABLE, client_job: P.CLIENT_JOB_TABLE, codes: P.REQUEST_OF_CODE};",
    )
    assert tables["client"] == client
    assert tables["sender"] == sender
    assert tables["worker_job"] == worker_job
    assert tables["client_job"] == client_job
    assert tables["codes"] == {str(code): request for code, request in REQUEST_OF_CODE.items()}


REFUSAL_JS = """
return arg.map(([state, code, resultsPending, fileOffered]) => {
  const job = new P.ClientJob();
  [job.worker, job.pending] = state.split('|');
  const request = job.refusal(code, {resultsPending, fileOffered});
  return [request, `${job.worker}|${job.pending}`];
});
"""


def test_a_protocol_error_goes_to_the_request_the_python_client_gives_it(page: Any) -> None:
    """Every client job state, each code of REQUEST_OF_CODE and one other, with and
    without a RESULTS_REQUEST and a FILE_META waiting: the page blames the same request
    as ``Connection(CLIENT)`` and moves its job session to the same state."""
    codes = [*REQUEST_OF_CODE, "INTERNAL_ERROR"]
    cases, expected = [], []
    for worker in JobState:
        for pending in Pending:
            for code in codes:
                for results in (False, True):
                    for offered in (False, True):
                        conn = Connection(Role.CLIENT, peer="w", principal="me")
                        conn.job = ClientJobState(worker, pending)
                        if results:
                            conn.receiver.request(ResultsRequest("job-1"))
                        if offered:
                            conn.sender.announce(FileMeta("a.txt", 5, "0" * 64, 65536))
                        conn.receive(f"PROTOCOL_ERROR::{code}::refused", 0.0)
                        refused = [o for o in conn.drain() if isinstance(o, Refused)]
                        assert len(refused) == 1
                        assert isinstance(conn.job, ClientJobState)
                        after = f"{conn.job.worker.value}|{conn.job.pending.value}"
                        cases.append(
                            [f"{worker.value}|{pending.value}", str(code), results, offered]
                        )
                        expected.append([refused[0].request, after])
    assert run(page, REFUSAL_JS, cases) == expected
    assert ["results", "RUNNING|-"] in expected  # e.g. UNKNOWN_JOB while a job runs


STAND_IN_JS = """
// The page's Session on a stand-in data channel: feed(frame) hands it a frame from the
// "worker"; ch.sent holds what it sent; seen holds what it told the UI.
const {Session} = await import('/session.js');
class FakeChannel extends EventTarget {
  constructor() { super(); this.sent = []; this.readyState = 'open'; this.bufferedAmount = 0; }
  send(d) { this.sent.push(typeof d === 'string' ? d : `<${d.length} bytes>`); }
  close() { this.readyState = 'closed'; this.dispatchEvent(new Event('close')); }
}
const enc = new TextEncoder();
const until = async (cond) => {
  for (let i = 0; i < 500 && !cond(); i++) await new Promise(r => setTimeout(r, 10));
};
const open = (timeouts = {}) => {
  const ch = new FakeChannel(), seen = [], steps = [];
  const ui = {
    job: (m) => seen.push(['job', m.kind]), closed: () => seen.push(['closed']),
    step: (name, state, text) => steps.push([name, state, text]),
    error: (code) => seen.push(['error', code]),
    transfer: (t) => seen.push(['transfer', t.phase]),
    results: (r) => seen.push(['results', r.phase, r.code ?? r.sha256 ?? '']),
  };
  const s = new Session(ch, {identity: null, maxMessageSize: 262144, timeouts}, ui);
  const feed = async (frame) => {
    ch.dispatchEvent(new MessageEvent('message', {data: frame}));
    await new Promise(r => setTimeout(r, 0)); await s.queue;
  };
  return {ch, s, seen, steps, feed};
};
const bytes = (t) => enc.encode(t).buffer;
// A promise's value, or 'pending' if it has not settled within 50 ms.
const settled = (p) => Promise.race([p, new Promise(r => setTimeout(() => r('pending'), 50))]);
"""

DISHONEST_WORKER_JS = (
    STAND_IN_JS
    + """
const out = {};
// Frames before the handshake ended are refused, not acted on.
let w = open();
await w.feed('JOB_COMPLETE::j::out::1::0.00');
out.early = w.seen;
// Results whose bytes do not hash to the announced sha256: refused, nothing offered.
w = open(); w.s.authenticated = true;
const results = w.s.requestResults('job-1');
await w.feed('FILE_META::results-job-1.zip::5::' + '0'.repeat(64) + '::65536');
await w.feed(bytes('hello'));
await w.feed('END_OF_FILE');
out.hash = {sent: w.ch.sent, seen: w.seen, done: await results};
// The honest download of the same bytes.
w = open(); w.s.authenticated = true;
const honest = w.s.requestResults('job-1');
await w.feed('FILE_META::results-job-1.zip::5::' + arg.hello + '::65536');
await w.feed(bytes('hello'));
await w.feed('END_OF_FILE');
const got = await honest;
out.honest = {sent: w.ch.sent, name: got.name, size: got.blob.size, sha256: got.sha256};
// A name that is not a plain base name, a chunk above chunk_size, more bytes than announced.
const refused = [];
for (const [meta, data] of [
  ['../evil.zip::5::' + arg.hello + '::65536', null],
  ['results-job-1.zip::5::' + arg.hello + '::4', 'hello'],
  ['results-job-1.zip::3::' + arg.hello + '::65536', 'hello'],
  ['results-job-1.zip::5::' + arg.hello + '::262145', null],
  ['evil.exe::5::' + arg.hello + '::65536', null],
  ['results-job-1.zip::' + (512 * 1024 * 1024 + 1) + '::' + arg.hello + '::65536', null],
]) {
  w = open(); w.s.authenticated = true;
  const p = w.s.requestResults('job-1');
  await w.feed('FILE_META::' + meta);
  if (data) await w.feed(bytes(data));
  refused.push([w.ch.sent.at(-1).split('::').slice(0, 2).join('::'), (await p).error]);
}
out.refused = refused;
// A file pushed while no RESULTS_REQUEST waits: refused before any byte, chunks too.
w = open(); w.s.authenticated = true;
await w.feed('FILE_META::results-job-1.zip::5::' + arg.hello + '::65536');
await w.feed(bytes('hello'));
await w.feed('END_OF_FILE');
out.pushed = {sent: w.ch.sent, seen: w.seen};
// Results larger than the page holds: a readable refusal.
out.tooLarge = P.describeError('RESULTS_TOO_LARGE', '536.9 MB');
// No FILE_META in time after RESULTS_REQUEST: TIMEOUT; a late one is refused.
w = open({resultsMeta: 100}); w.s.authenticated = true;
let late = w.s.requestResults('job-1');
out.metaDeadline = {before: await settled(late)};
await new Promise(r => setTimeout(r, 150));
out.metaDeadline.after = await settled(late);
await w.feed('FILE_META::results-job-1.zip::5::' + arg.hello + '::65536');
out.metaDeadline.sent = w.ch.sent;
// A worker that stops sending mid-download: the idle deadline ends it.
w = open({resultsIdle: 100}); w.s.authenticated = true;
late = w.s.requestResults('job-1');
await w.feed('FILE_META::results-job-1.zip::5::' + arg.hello + '::65536');
await w.feed(bytes('he'));
out.idle = {before: await settled(late)};
await new Promise(r => setTimeout(r, 150));
out.idle.after = await settled(late);
await w.feed(bytes('llo'));
out.idle.sent = w.ch.sent;
// Uploads: an offset beyond the file, a FILE_RECEIVED naming other content, a proof.
const file = new File(['hello'], 'a.txt');
w = open(); w.s.authenticated = true;
let sent = w.s.sendFile(file); await until(() => w.ch.sent.length);
await w.feed('FILE_READY::99');
out.beyond = {sent: w.ch.sent, end: await sent, state: w.s.sender.state};
w = open(); w.s.authenticated = true;
sent = w.s.sendFile(file); await until(() => w.ch.sent.length);
await w.feed('FILE_READY::0');
await until(() => w.ch.sent.includes('END_OF_FILE'));
await w.feed('FILE_RECEIVED::' + '1'.repeat(64));
out.received = {sent: w.ch.sent, end: await sent};
w = open(); w.s.authenticated = true;
sent = w.s.sendFile(file); await until(() => w.ch.sent.length);
await w.feed('FILE_PROOF_REQUEST::000102030405060708090a0b0c0d0e0f::1+3,0+5');
await w.feed('FILE_EXISTS::' + arg.hello);
out.proof = {sent: w.ch.sent, end: await sent};
// A late FILE_READY after our cancel is absorbed; the acknowledgement ends the transfer.
w = open(); w.s.authenticated = true;
sent = w.s.sendFile(file); await until(() => w.ch.sent.length);
w.s.cancelTransfer();
await w.feed('FILE_READY::0');
await w.feed('TRANSFER_ERROR::CANCELLED::no transfer open');
out.cancel = {sent: w.ch.sent, end: await sent, state: w.s.sender.state};
return out;
"""
)


def test_the_page_refuses_what_a_dishonest_worker_sends(page: Any) -> None:
    """The page's session against a worker that lies: frames before the handshake,
    results that do not match their sha256, unsafe names, oversized chunks, too many
    bytes, an offset beyond the file, a FILE_RECEIVED of other content. Each is refused
    with its code and nothing is offered to save; the honest case and the proof of
    possession give exactly the Python digests."""
    hello = hashlib.sha256(b"hello").hexdigest()
    out = run(page, DISHONEST_WORKER_JS, {"hello": hello})
    assert out["early"] == [["error", "UNEXPECTED_MESSAGE"]]
    assert out["hash"]["sent"][:2] == ["RESULTS_REQUEST::job-1", "FILE_READY::0"]
    assert out["hash"]["sent"][-1].startswith("TRANSFER_ERROR::HASH_MISMATCH::")
    assert out["hash"]["done"] == {"error": "HASH_MISMATCH"}
    assert not any(s[:2] == ["results", "verified"] for s in out["hash"]["seen"])
    assert out["honest"] == {
        "sent": [
            "RESULTS_REQUEST::job-1",
            "FILE_READY::0",
            "FILE_PROGRESS::5::5",
            f"FILE_RECEIVED::{hello}",
        ],
        "name": "results-job-1.zip",
        "size": 5,
        "sha256": hello,
    }
    assert out["refused"] == [
        ["TRANSFER_ERROR::INVALID_NAME", "INVALID_NAME"],
        ["TRANSFER_ERROR::UNEXPECTED_DATA", "UNEXPECTED_DATA"],
        ["TRANSFER_ERROR::SIZE_MISMATCH", "SIZE_MISMATCH"],
        ["TRANSFER_ERROR::UNEXPECTED_DATA", "UNEXPECTED_DATA"],
        ["TRANSFER_ERROR::INVALID_NAME", "INVALID_NAME"],  # not results-job-1.zip
        ["TRANSFER_ERROR::FILE_TOO_LARGE", "RESULTS_TOO_LARGE"],  # above 512 MiB
    ]
    # Pushed without a request: no FILE_READY, no byte kept, nothing offered to save.
    assert [f.split("::")[:2] for f in out["pushed"]["sent"]] == [
        ["PROTOCOL_ERROR", "UNEXPECTED_MESSAGE"],
        ["TRANSFER_ERROR", "UNEXPECTED_DATA"],
    ]
    assert out["pushed"]["seen"] == [["error", "UNEXPECTED_MESSAGE"]] * 2
    assert out["tooLarge"].startswith("RESULTS_TOO_LARGE: The results are larger than this page")
    assert out["metaDeadline"]["before"] == "pending"
    assert out["metaDeadline"]["after"] == {"error": "TIMEOUT"}
    assert [f.split("::")[:2] for f in out["metaDeadline"]["sent"]] == [
        ["RESULTS_REQUEST", "job-1"],
        ["PROTOCOL_ERROR", "UNEXPECTED_MESSAGE"],
    ]
    assert out["idle"]["before"] == "pending" and out["idle"]["after"] == {"error": "TIMEOUT"}
    assert [f.split("::")[:2] for f in out["idle"]["sent"]] == [
        ["RESULTS_REQUEST", "job-1"],
        ["FILE_READY", "0"],
        ["FILE_PROGRESS", "2"],
        ["TRANSFER_ERROR", "CANCELLED"],  # the protocol's code that ends a transfer early
        ["TRANSFER_ERROR", "UNEXPECTED_DATA"],
    ]
    meta = f"FILE_META::a.txt::5::{hello}::262144"
    assert out["beyond"]["sent"][0] == meta
    assert out["beyond"]["sent"][1].startswith("TRANSFER_ERROR::SIZE_MISMATCH::")
    assert out["beyond"]["end"] == {"error": "SIZE_MISMATCH"} and out["beyond"]["state"] == "IDLE"
    assert out["received"]["sent"][:3] == [meta, "<5 bytes>", "END_OF_FILE"]
    assert out["received"]["sent"][3].startswith("TRANSFER_ERROR::HASH_MISMATCH::")
    assert out["received"]["end"] == {"error": "HASH_MISMATCH"}
    digest = proof_digest("000102030405060708090a0b0c0d0e0f", [b"ell", b"hello"])
    assert out["proof"] == {"sent": [meta, f"FILE_PROOF::{digest}"], "end": {"exists": True}}
    assert out["cancel"] == {
        "sent": [meta, "FILE_CANCEL"],
        "end": {"cancelled": True},
        "state": "IDLE",
    }


TABLES_JS = (
    STAND_IN_JS
    + """
const out = {};
const file = new File(['hello'], 'a.txt');
// Offer the file; resolves (to [the upload's promise]) once FILE_META is out.
const offer = async (w) => {
  const p = w.s.sendFile(file); await until(() => w.ch.sent.length); return [p];
};
// (a) FILE_EXISTS naming another sha256: refused, the transfer stays open; the right one ends it.
let w = open(); w.s.authenticated = true;
let [sent] = await offer(w);
await w.feed('FILE_EXISTS::' + '1'.repeat(64));
out.otherSha = {seen: w.seen.slice(), state: w.s.sender.state, end: await settled(sent)};
await w.feed('FILE_EXISTS::' + arg.hello);
out.rightSha = {end: await settled(sent), state: w.s.sender.state, job: String(w.s.job)};
// (b) UNKNOWN_JOB while a job runs: the results request fails, the job goes on.
w = open(); w.s.authenticated = true;
await w.feed('FILE_EXISTS::' + arg.hello);  // unsolicited: refused
const job = (async () => { const p = w.s.sendFile(file); await until(() => w.ch.sent.length);
  await w.feed('FILE_EXISTS::' + arg.hello); await p; return w.s.startJob(); })();
await until(() => w.ch.sent.includes('JOB_START'));
await w.feed('JOB_LOG::working');
const results = w.s.requestResults('job-1');
await w.feed('PROTOCOL_ERROR::UNKNOWN_JOB::no results for job-1');
out.unknownJob = {results: await settled(results), job: await settled(job), state: String(w.s.job)};
await w.feed('JOB_COMPLETE::job-1::out::1::0.00');
out.jobEnd = {job: (await settled(job)).kind, state: String(w.s.job)};
// WORKER_BUSY refuses the start, not a pending results request.
w = open(); w.s.authenticated = true;
[sent] = await offer(w); await w.feed('FILE_EXISTS::' + arg.hello); await sent;
const busy = w.s.startJob().catch(e => e.code);
const waiting = w.s.requestResults('job-1');
await w.feed('PROTOCOL_ERROR::WORKER_BUSY::another job runs');
out.busy = {job: (await settled(busy)).code, results: await settled(waiting),
  state: String(w.s.job)};
// (c) Job replies nobody asked for: refused, never shown as real.
w = open(); w.s.authenticated = true;
await w.feed('JOB_COMPLETE::job-9::out::1::0.00');
await w.feed('PATH_VALIDATED::input');
await w.feed('JOB_LOG::not running');
out.unsolicited = {seen: w.seen, state: String(w.s.job)};
out.refusedSend = await w.s.startJob().then(() => 'sent', e => e.code);
out.refusedFrames = w.ch.sent;
// (d) A cancelled upload settles: the worker's FILE_CANCEL, or the give-up timer.
w = open(); w.s.authenticated = true;
[sent] = await offer(w); w.s.cancelTransfer();
await w.feed('FILE_CANCEL');
out.cancelByWorker = {end: await settled(sent), state: w.s.sender.state};
w = open({cancelGiveUp: 100}); w.s.authenticated = true;
[sent] = await offer(w); w.s.cancelTransfer();
out.beforeGiveUp = await settled(sent);
await new Promise(r => setTimeout(r, 150));
out.giveUp = {end: await settled(sent), state: w.s.sender.state};
// (e) Only TRANSFER_ERROR::CANCELLED ends a cancel; another code is absorbed.
w = open(); w.s.authenticated = true;
[sent] = await offer(w); w.s.cancelTransfer();
await w.feed('TRANSFER_ERROR::HASH_MISMATCH::about the old transfer');
out.otherCode = {end: await settled(sent), state: w.s.sender.state, seen: w.seen.slice()};
await w.feed('TRANSFER_ERROR::CANCELLED::no transfer open');
out.cancelled = {end: await settled(sent), state: w.s.sender.state};
// A job that never ends within its deadline: a readable TIMEOUT on its step.
w = open({job: 100}); w.s.authenticated = true;
[sent] = await offer(w); await w.feed('FILE_EXISTS::' + arg.hello); await sent;
out.jobTimeout = {code: await w.s.startJob().then(() => 'ended', e => e.code),
  step: w.steps.at(-1)};
return out;
"""
)


def test_the_page_session_follows_the_client_tables(page: Any) -> None:
    """The page's session against a worker that answers out of turn: each frame goes
    through the tables the Python client uses (protocol/job.py, protocol/sender.py,
    protocol/_client_role.py), so a wrong answer is refused with its code and the
    right request gets each refusal."""
    hello = hashlib.sha256(b"hello").hexdigest()
    out = run(page, TABLES_JS, {"hello": hello})
    # (a) protocol/sender.py: FILE_EXISTS of another sha256 is MALFORMED_FRAME, unchanged.
    assert out["otherSha"] == {
        "seen": [
            ["transfer", "hashing"],
            ["transfer", "hashing"],
            ["transfer", "offered"],
            ["error", "MALFORMED_FRAME"],
        ],
        "state": "AWAIT_READY",
        "end": "pending",
    }
    assert out["rightSha"] == {"end": {"exists": True}, "state": "IDLE", "job": "HAVE_FILE"}
    # (b) UNKNOWN_JOB answers the results request only; WORKER_BUSY only the start.
    assert out["unknownJob"] == {
        "results": {"error": "UNKNOWN_JOB"},
        "job": "pending",
        "state": "RUNNING",
    }
    assert out["jobEnd"] == {"job": "JobComplete", "state": "IDLE"}
    assert out["busy"] == {"job": "WORKER_BUSY", "results": "pending", "state": "HAVE_FILE"}
    # (c) nothing shown as a job's: no ['job', ...] entries, only refusals.
    assert out["unsolicited"] == {
        "seen": [["error", "UNEXPECTED_MESSAGE"]] * 3,
        "state": "IDLE",
    }
    assert out["refusedSend"] == "UNEXPECTED_MESSAGE" and out["refusedFrames"] == []
    # (d) the upload's promise settles after a cancel.
    assert out["cancelByWorker"] == {"end": {"cancelled": True}, "state": "IDLE"}
    assert out["beforeGiveUp"] == "pending"
    assert out["giveUp"] == {"end": {"cancelled": True}, "state": "IDLE"}
    # (e) protocol/sender.py: only CANCELLED acknowledges; HASH_MISMATCH is absorbed.
    assert out["otherCode"]["end"] == "pending" and out["otherCode"]["state"] == "CANCELLED"
    assert ["error", "HASH_MISMATCH"] not in out["otherCode"]["seen"]
    assert out["cancelled"] == {"end": {"cancelled": True}, "state": "IDLE"}
    assert out["jobTimeout"]["code"] == "TIMEOUT"
    assert out["jobTimeout"]["step"] == [
        "run",
        "failed",
        "TIMEOUT: The worker did not answer in time. (no JOB_COMPLETE or JOB_FAILED within 0.1 s)",
    ]


BOUNDED_JS = """
const B = await import('/bounded.js');
const out = {};
const pre = document.createElement('pre');
for (let i = 1; i <= 5000; i++) B.appendLine(pre, `line ${i}`);
out.lines = {count: pre.childNodes.length, first: pre.firstChild.textContent,
  last: pre.lastChild.textContent, dropped: pre.dataset.dropped};
const wide = document.createElement('pre');
for (let i = 0; i < 40; i++) B.appendLine(wide, String(i).padEnd(60000, 'x'));
out.chars = {count: wide.childNodes.length, size: wide.textContent.length,
  last: wide.lastChild.textContent.slice(0, 2)};
B.appendLine(pre, '<img src=x onerror="window.pwned=1">');
out.markup = pre.querySelectorAll('img').length;
const ul = document.createElement('ul');
for (let i = 0; i < 1000; i++) B.addError(ul, 'UNEXPECTED_MESSAGE', 'UNEXPECTED_MESSAGE: same');
out.repeated = [ul.children.length, ul.lastElementChild.textContent];
for (let i = 0; i < 500; i++) B.addError(ul, 'MALFORMED_FRAME', `MALFORMED_FRAME: ${i}`);
out.errors = {count: ul.children.length, last: ul.lastElementChild.textContent,
  dropped: ul.dataset.dropped};
out.bounds = [B.LOG_MAX_LINES, B.LOG_MAX_CHARS, B.ERRORS_MAX];
return out;
"""


def test_what_a_worker_sends_is_bounded_in_the_page(page: Any) -> None:
    """The attacker's steps: a worker (or its job) floods the page with JOB_LOG lines,
    very long lines and errors. The page keeps the last 2000 lines / 1 MB of log and
    the last 50 errors, with repeats collapsed into one entry with a count."""
    out = run(page, BOUNDED_JS)
    assert out["bounds"] == [2000, 1_000_000, 50]
    assert out["lines"] == {
        "count": 2000,
        "first": "line 3001\n",
        "last": "line 5000\n",
        "dropped": "3000",
    }
    assert out["chars"]["size"] <= 1_000_000 and out["chars"]["last"] == "39"
    assert out["chars"]["count"] == 16
    assert out["markup"] == 0
    assert out["repeated"] == [1, "UNEXPECTED_MESSAGE: same (×1000)"]
    assert out["errors"] == {"count": 50, "last": "MALFORMED_FRAME: 499", "dropped": "451"}


IDENTITY_RACE_JS = """
const {loadIdentity} = await import('/identity.js');
// No key stored yet, and four tabs' worth of loadIdentity() at once: each generates a
// key; only the first add() succeeds, and every caller must end up with that one.
await new Promise((resolve, reject) => {
  const open = indexedDB.open('rtc-worker-page', 1);
  open.onerror = () => reject(open.error);
  open.onsuccess = () => {
    const db = open.result;
    const tx = db.transaction('keys', 'readwrite');
    tx.objectStore('keys').delete('identity');
    tx.oncomplete = () => { db.close(); resolve(); };
  };
});
return Promise.all([1, 2, 3, 4].map(() =>
  loadIdentity().then(i => i.fingerprint, e => `error: ${e.name}`)));
"""


def test_tabs_racing_to_make_the_identity_end_with_one_key(page: Any) -> None:
    fingerprints = run(page, IDENTITY_RACE_JS)
    assert len(set(fingerprints)) == 1, fingerprints
    assert re.fullmatch(r"[0-9a-f]{64}", fingerprints[0])
