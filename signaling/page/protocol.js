// The rtc-worker data-channel protocol for the browser: one module mirroring PROTOCOL.md.
//
// Frames (section 2) are plain objects named like the Python classes of protocol/ and
// carrying the same fields: {kind: "FileMeta", name, size, sha256, chunk_size}. Byte
// fields (keys, nonces, signatures, chunks) are Uint8Array. encode(msg) returns the
// frame (a string, or a Uint8Array for a Chunk); parse(frame) returns the message or
// throws ProtocolError with the code of the reply (section 1.3 order: size, type,
// fields). Counts above 2^53 - 1 are refused (MALFORMED_FRAME): a browser number cannot
// hold them exactly. Also here: the bounds (1.2); and, from the files it re-exports (so
// the page imports one module): the readable errors (errors.js, section 3), the state
// tables (tables.js, 4.1, 4.3, 4.5), bytes helpers (bytes.js), the channel handshake and
// the proof of possession digest (handshake.js, 2.5, 4.7, 2.3).
import { ProtocolError } from "./errors.js";
import { b64decode, b64encode } from "./bytes.js";

export * from "./errors.js";
export * from "./tables.js";
export * from "./bytes.js";
export * from "./handshake.js";

export const SEP = "::";
/** PROTOCOL.md 1.2, `Limits` defaults. Bytes unless named _s (seconds). */
export const LIMITS = Object.freeze({
  max_text_frame_bytes: 65536,
  max_binary_frame_bytes: 262144,
  max_path_bytes: 4096,
  max_name_bytes: 255,
  max_fields: 1024,
  max_file_bytes: 10737418240,
  chunk_bytes: 65536,
  progress_interval_s: 0.5,
  proof_ranges: 8,
  proof_range_bytes: 4096,
  proof_timeout_s: 10,
  max_proof_ranges: 16,
  max_proof_range_bytes: 65536,
});

const JOB_ID = /^(?!\.+$)[A-Za-z0-9._-]{1,64}$/;
const CODE = /^[A-Z][A-Z0-9_]{0,63}$/;
const SHA256 = /^[0-9a-fA-F]{64}$/;
const TOKEN = /^[A-Za-z0-9._~+/=-]{1,1024}$/;
const NONCE = /^[0-9a-fA-F]{32}$/;
const FINGERPRINT = /^[0-9a-f]{64}$/;
const COUNT15 = /^[0-9]{1,15}$/;
const COUNT18 = /^[0-9]{1,18}$/;
const MB = /^[0-9]{1,15}(?:\.[0-9]{1,6})?$/;
const LEGACY_META = /^(.+):([0-9]{1,18}):([^:]*)$/s;
const PROOF_RANGES = /^[0-9]{1,18}\+[0-9]{1,6}(?:,[0-9]{1,18}\+[0-9]{1,6}){0,15}$/;
const MAX_MB = 1e14;
const utf8 = new TextEncoder();

const bad = (code, detail) => new ProtocolError(code, detail, false);
export const byteLength = (text) => utf8.encode(text).length;

// ------------------------------------------------------------- field checks (messages.py)
function checkJobId(v) {
  if (typeof v !== "string" || !JOB_ID.test(v))
    throw bad("INVALID_JOB_ID", "job_id must match [A-Za-z0-9._-]{1,64}, not only dots");
}
function checkText(name, v, { allowEmpty = true, oneLine = false } = {}) {
  if (typeof v !== "string") throw bad("MALFORMED_FRAME", `${name} must be text`);
  if (!allowEmpty && !v) throw bad("MALFORMED_FRAME", `${name} must not be empty`);
  if (oneLine && /[\r\n]/.test(v)) throw bad("MALFORMED_FRAME", `${name} must be a single line`);
}
function checkSha(v) {
  if (typeof v !== "string" || !SHA256.test(v))
    throw bad("MALFORMED_FRAME", "sha256 must be 64 hexadecimal digits");
  return v.toLowerCase();
}
function checkCount(name, v, min = 0) {
  if (!Number.isSafeInteger(v) || v < min)
    throw bad("MALFORMED_FRAME", `${name} must be an integer >= ${min}${Number.isInteger(v) && v > 0 ? " and below 2^53 (what a browser counts exactly)" : ""}`);
}
function checkCode(msg) {
  if (typeof msg.code !== "string" || !CODE.test(msg.code))
    throw bad("MALFORMED_FRAME", "code must match [A-Z][A-Z0-9_]{0,63}");
  checkText("detail", msg.detail);
}
function checkBytes(name, v, size) {
  if (!(v instanceof Uint8Array) || v.length !== size)
    throw bad("MALFORMED_FRAME", `${name} must be ${size} bytes (base64)`);
}
/** Python's round(x, n) for n in {2, 3}: half to even on exact ties. */
export function roundTo(x, n) {
  const scaled = x * 2 ** (n + 1); // a tie at n decimals is exactly an odd multiple of 2^-(n+1)
  if (Number.isInteger(scaled) && Math.abs(scaled) % 2 === 1) {
    const low = Math.floor(x * 10 ** n);
    return (low % 2 === 0 ? low : low + 1) / 10 ** n;
  }
  return Number(x.toFixed(n));
}
const METRICS = ["validation_ms", "file_access_ms", "run_s", "total_s"];

/** Validate a message as its Python class does when built; returns it (normalised).
 *  Throws ProtocolError (local) for a field outside its grammar. */
export function check(msg) {
  const m = { ...msg };
  switch (m.kind) {
    case "JobId": case "ResultsRequest": checkJobId(m.job_id); break;
    case "SharedInputPath": case "SharedOutputPath": checkText("path", m.path, { allowEmpty: false }); break;
    case "JobStart": m.legacy = !!m.legacy; break;
    case "JobCancel": case "ResultsViaStorage": case "EndOfFile": case "FileCancel": break;
    case "PathValidated":
      if (m.which !== "input" && m.which !== "output") throw bad("MALFORMED_FRAME", "PATH_VALIDATED takes input or output");
      break;
    case "PathError": checkText("reason", m.reason, { allowEmpty: false }); break;
    case "JobLog": checkText("line", m.line, { oneLine: true }); break;
    case "JobMetrics":
      for (const name of METRICS) {
        const v = m[name];
        if (typeof v !== "number" || !(v >= 0 && v < MAX_MB)) throw bad("MALFORMED_FRAME", `${name} must be a number in [0, 1e14)`);
        m[name] = roundTo(v, 3);
      }
      break;
    case "JobComplete":
      checkJobId(m.job_id);
      checkText("output_path", m.output_path);
      if (!Number.isInteger(m.file_count)) throw bad("MALFORMED_FRAME", "file_count must be an integer");
      if (!(m.file_count >= 0 && m.file_count < 1e15)) throw bad("MALFORMED_FRAME", "file_count out of range");
      if (typeof m.total_mb !== "number" || !(m.total_mb >= 0 && m.total_mb < MAX_MB)) throw bad("MALFORMED_FRAME", "total_mb must be a number >= 0");
      m.total_mb = roundTo(m.total_mb, 2);
      break;
    case "JobFailed": checkJobId(m.job_id); checkText("reason", m.reason, { allowEmpty: false }); break;
    case "ProtocolErrorFrame": case "TransferError": m.detail ??= ""; checkCode(m); break;
    case "ResultsStored": {
      checkJobId(m.job_id);
      checkText("download_path", m.download_path, { allowEmpty: false, oneLine: true });
      const given = [m.sha256, m.size, m.token].map((v) => v !== undefined && v !== null);
      if (given.some(Boolean) && !given.every(Boolean)) throw bad("MALFORMED_FRAME", "sha256, size and token go together");
      if (given[0]) {
        m.sha256 = checkSha(m.sha256);
        checkCount("size", m.size);
        if (typeof m.token !== "string" || !TOKEN.test(m.token)) throw bad("MALFORMED_FRAME", "token must match [A-Za-z0-9._~+/=-]{1,1024}");
      } else { m.sha256 = m.size = m.token = null; }
      break;
    }
    case "FileMeta":
      checkText("name", m.name, { allowEmpty: false });
      checkCount("size", m.size);
      m.chunk_size ??= LIMITS.chunk_bytes;
      checkCount("chunk_size", m.chunk_size, 1);
      m.sha256 = checkSha(m.sha256);
      break;
    case "FileMetaLegacy":
      checkText("name", m.name, { allowEmpty: false, oneLine: true });
      if (m.name.includes(SEP)) throw bad("MALFORMED_FRAME", "a legacy FILE_META name has no '::'");
      checkCount("size", m.size);
      m.gui ??= "";
      checkText("gui", m.gui, { oneLine: true });
      if (m.gui.includes(":")) throw bad("MALFORMED_FRAME", "gui has no ':'");
      break;
    case "FileProofRequest":
      if (typeof m.nonce !== "string" || !NONCE.test(m.nonce)) throw bad("MALFORMED_FRAME", "nonce must be 32 hexadecimal digits");
      m.nonce = m.nonce.toLowerCase();
      if (!Array.isArray(m.ranges) || m.ranges.length < 1 || m.ranges.length > LIMITS.max_proof_ranges)
        throw bad("MALFORMED_FRAME", `a proof names 1 to ${LIMITS.max_proof_ranges} byte ranges`);
      for (const pair of m.ranges) {
        if (!Array.isArray(pair) || pair.length !== 2) throw bad("MALFORMED_FRAME", "a range is (offset, length)");
        checkCount("offset", pair[0]);
        checkCount("length", pair[1], 1);
        if (pair[1] > LIMITS.max_proof_range_bytes || !Number.isSafeInteger(pair[0] + pair[1]))
          throw bad("MALFORMED_FRAME", `a range is 1 to ${LIMITS.max_proof_range_bytes} bytes, below 10^18`);
      }
      break;
    case "FileProof": case "FileExists": case "FileReceived": m.sha256 = checkSha(m.sha256); break;
    case "FileReady": checkCount("offset", m.offset); break;
    case "FileProgress": checkCount("bytes_received", m.received); checkCount("size", m.size); break;
    case "Chunk": if (!(m.data instanceof Uint8Array)) throw bad("MALFORMED_FRAME", "chunk data must be bytes"); break;
    case "AuthHello": checkBytes("public_key", m.public_key, 32); checkBytes("nonce", m.nonce, 32); break;
    case "AuthChallenge":
      checkBytes("public_key", m.public_key, 32); checkBytes("nonce", m.nonce, 32); checkBytes("signature", m.signature, 64);
      break;
    case "AuthResponse": checkBytes("signature", m.signature, 64); break;
    case "AuthOk":
      if (typeof m.fingerprint !== "string" || !FINGERPRINT.test(m.fingerprint)) throw bad("MALFORMED_FRAME", "fingerprint must be 64 lowercase hex digits");
      break;
    default: throw bad("UNKNOWN_MESSAGE", `cannot encode ${m.kind}`);
  }
  return m;
}

// ------------------------------------------------------------------------------ encode
const fmtMetric = (v) => (Number.isInteger(v) ? `${v}.0` : String(v));

/** The frame of a message: a string (text frame) or a Uint8Array (Chunk).
 *  Throws ProtocolError (local) when a field breaks its grammar. */
export function encode(msg) {
  const m = check(msg);
  const j = (...f) => f.join(SEP);
  switch (m.kind) {
    case "Chunk": return m.data;
    case "JobId": return j("JOB_ID", m.job_id);
    case "SharedInputPath": return j("SHARED_INPUT_PATH", m.path);
    case "SharedOutputPath": return j("SHARED_OUTPUT_PATH", m.path);
    case "JobStart": return m.legacy ? "SHARED_STORAGE_JOB::start" : "JOB_START";
    case "JobCancel": return "JOB_CANCEL";
    case "PathValidated": return j("PATH_VALIDATED", m.which);
    case "PathError": return j("PATH_ERROR", m.reason);
    case "JobLog": return j("JOB_LOG", m.line);
    case "JobMetrics": return j("JOB_METRICS", `{${METRICS.map((k) => `"${k}":${fmtMetric(m[k])}`).join(",")}}`);
    case "JobComplete": return j("JOB_COMPLETE", m.job_id, m.output_path, String(m.file_count), m.total_mb.toFixed(2));
    case "JobFailed": return j("JOB_FAILED", m.job_id, m.reason);
    case "ProtocolErrorFrame": return j("PROTOCOL_ERROR", m.code, m.detail);
    case "TransferError": return j("TRANSFER_ERROR", m.code, m.detail);
    case "FileMeta": return j("FILE_META", m.name, String(m.size), m.sha256, String(m.chunk_size));
    case "FileMetaLegacy": return `FILE_META::${m.name}:${m.size}:${m.gui}`;
    case "FileReady": return j("FILE_READY", String(m.offset));
    case "FileExists": return j("FILE_EXISTS", m.sha256);
    case "FileReceived": return j("FILE_RECEIVED", m.sha256);
    case "FileProof": return j("FILE_PROOF", m.sha256);
    case "FileProofRequest": return j("FILE_PROOF_REQUEST", m.nonce, m.ranges.map(([o, l]) => `${o}+${l}`).join(","));
    case "EndOfFile": return "END_OF_FILE";
    case "FileCancel": return "FILE_CANCEL";
    case "FileProgress": return j("FILE_PROGRESS", String(m.received), String(m.size));
    case "ResultsRequest": return j("RESULTS_REQUEST", m.job_id);
    case "ResultsViaStorage": return "RESULTS_VIA_STORAGE";
    case "ResultsStored":
      return m.sha256 === null ? j("RESULTS_STORED", m.job_id, m.download_path)
        : j("RESULTS_STORED", m.job_id, m.download_path, m.sha256, String(m.size), m.token);
    case "AuthHello": return j("AUTH_HELLO", b64encode(m.public_key), b64encode(m.nonce));
    case "AuthChallenge": return j("AUTH_CHALLENGE", b64encode(m.public_key), b64encode(m.nonce), b64encode(m.signature));
    case "AuthResponse": return j("AUTH_RESPONSE", b64encode(m.signature));
    case "AuthOk": return j("AUTH_OK", m.fingerprint);
  }
  throw bad("UNKNOWN_MESSAGE", `cannot encode ${m.kind}`);
}

// ------------------------------------------------------------------------------- parse
const malformed = (detail) => new ProtocolError("MALFORMED_FRAME", detail);
function need(rest, type) { if (rest === null) throw malformed(`${type} needs fields`); return rest; }
function partition(s, sep = SEP) {
  const i = s.indexOf(sep);
  return i < 0 ? [s, false, ""] : [s.slice(0, i), true, s.slice(i + sep.length)];
}
/** Python's str.rsplit(sep, max). */
function rsplit(s, max, sep = SEP) {
  const out = [];
  let rest = s;
  while (out.length < max) {
    const i = rest.lastIndexOf(sep);
    if (i < 0) break;
    out.unshift(rest.slice(i + sep.length));
    rest = rest.slice(0, i);
  }
  out.unshift(rest);
  return out;
}
// A count above 2^53 - 1 parses to an inexact Number; check() then refuses it
// (MALFORMED_FRAME), in the order the Python classes check their fields.
function count(text, name, re = COUNT18) {
  if (!re.test(text)) throw malformed(`${name} must be decimal digits`);
  return Number(text);
}
const noFields = (kind, type) => (rest) => { if (rest !== null) throw malformed(`${type} takes no fields`); return { kind }; };
function b64Fields(rest, type, sizes) {
  const fields = need(rest, type).split(SEP);
  if (fields.length !== sizes.length) throw malformed(`${type} needs ${sizes.length} fields`);
  try { return fields.map((f, i) => b64decode(f, sizes[i])); } catch (e) { throw malformed(`${type}: ${e.message}`); }
}
const pathParser = (kind, type) => (rest) => {
  const path = need(rest, type);
  if (byteLength(path) > LIMITS.max_path_bytes) throw new ProtocolError("PATH_TOO_LONG", `path longer than ${LIMITS.max_path_bytes} bytes`);
  return { kind, path };
};

const PARSERS = {
  JOB_ID: (r) => ({ kind: "JobId", job_id: need(r, "JOB_ID") }),
  SHARED_INPUT_PATH: pathParser("SharedInputPath", "SHARED_INPUT_PATH"),
  SHARED_OUTPUT_PATH: pathParser("SharedOutputPath", "SHARED_OUTPUT_PATH"),
  JOB_START: noFields("JobStart", "JOB_START"),
  SHARED_STORAGE_JOB: (r) => { if (r !== "start") throw malformed("SHARED_STORAGE_JOB takes 'start'"); return { kind: "JobStart", legacy: true }; },
  JOB_CANCEL: noFields("JobCancel", "JOB_CANCEL"),
  PATH_VALIDATED: (r) => {
    const which = need(r, "PATH_VALIDATED");
    if (which !== "input" && which !== "output") throw malformed("PATH_VALIDATED takes input or output");
    return { kind: "PathValidated", which };
  },
  PATH_ERROR: (r) => ({ kind: "PathError", reason: need(r, "PATH_ERROR") }),
  JOB_LOG: (r) => ({ kind: "JobLog", line: need(r, "JOB_LOG") }),
  JOB_METRICS: (r) => {
    let data;
    try { data = JSON.parse(need(r, "JOB_METRICS")); } catch (e) { if (e instanceof ProtocolError) throw e; throw malformed("JOB_METRICS is not JSON"); }
    if (data === null || typeof data !== "object" || Array.isArray(data) || METRICS.some((k) => !(k in data)))
      throw malformed(`JOB_METRICS needs ${METRICS.join(", ")}`);
    return Object.fromEntries([["kind", "JobMetrics"], ...METRICS.map((k) => [k, data[k]])]);
  },
  JOB_COMPLETE: (r) => {
    const [jobId, sep, tail] = partition(need(r, "JOB_COMPLETE"));
    const parts = rsplit(tail, 2);
    if (!sep || parts.length !== 3) throw malformed("JOB_COMPLETE needs 4 fields");
    const [out, n, mb] = parts;
    if (!COUNT15.test(n) || !MB.test(mb)) throw malformed("bad file_count or total_mb");
    return { kind: "JobComplete", job_id: jobId, output_path: out, file_count: Number(n), total_mb: Number(mb) };
  },
  JOB_FAILED: (r) => {
    const [jobId, sep, reason] = partition(need(r, "JOB_FAILED"));
    if (!sep) throw malformed("JOB_FAILED needs job_id and reason");
    return { kind: "JobFailed", job_id: jobId, reason };
  },
  PROTOCOL_ERROR: (r) => { const [code, , detail] = partition(need(r, "PROTOCOL_ERROR")); return { kind: "ProtocolErrorFrame", code, detail }; },
  TRANSFER_ERROR: (r) => { const [code, , detail] = partition(need(r, "TRANSFER_ERROR")); return { kind: "TransferError", code, detail }; },
  FILE_META: (r) => {
    const body = need(r, "FILE_META");
    const p = rsplit(body, 3);
    if (p.length === 4 && COUNT18.test(p[1]) && SHA256.test(p[2]) && COUNT18.test(p[3]))
      return { kind: "FileMeta", name: p[0], size: count(p[1], "size"), sha256: p[2], chunk_size: count(p[3], "chunk_size") };
    const legacy = LEGACY_META.exec(body);
    if (!legacy) throw malformed("FILE_META is {name}::{size}::{sha256}::{chunk_size} (or {name}:{size}:{gui})");
    return { kind: "FileMetaLegacy", name: legacy[1], size: count(legacy[2], "size"), gui: legacy[3] };
  },
  FILE_READY: (r) => ({ kind: "FileReady", offset: count(need(r, "FILE_READY"), "offset") }),
  FILE_EXISTS: (r) => ({ kind: "FileExists", sha256: need(r, "FILE_EXISTS") }),
  FILE_PROOF_REQUEST: (r) => {
    const [nonce, sep, ranges] = partition(need(r, "FILE_PROOF_REQUEST"));
    if (!sep || !PROOF_RANGES.test(ranges)) throw malformed("FILE_PROOF_REQUEST is {nonce}::{offset}+{length}[,{offset}+{length}...]");
    return { kind: "FileProofRequest", nonce, ranges: ranges.split(",").map((it) => it.split("+").map((n) => count(n, "range"))) };
  },
  FILE_PROOF: (r) => ({ kind: "FileProof", sha256: need(r, "FILE_PROOF") }),
  END_OF_FILE: noFields("EndOfFile", "END_OF_FILE"),
  FILE_PROGRESS: (r) => {
    const [received, sep, size] = partition(need(r, "FILE_PROGRESS"));
    if (!sep) throw malformed("FILE_PROGRESS needs 2 fields");
    return { kind: "FileProgress", received: count(received, "bytes_received"), size: count(size, "size") };
  },
  FILE_RECEIVED: (r) => ({ kind: "FileReceived", sha256: need(r, "FILE_RECEIVED") }),
  FILE_CANCEL: noFields("FileCancel", "FILE_CANCEL"),
  RESULTS_REQUEST: (r) => ({ kind: "ResultsRequest", job_id: need(r, "RESULTS_REQUEST") }),
  RESULTS_VIA_STORAGE: noFields("ResultsViaStorage", "RESULTS_VIA_STORAGE"),
  RESULTS_STORED: (r) => {
    const [jobId, sep, tail] = partition(need(r, "RESULTS_STORED"));
    if (!sep) throw malformed("RESULTS_STORED needs job_id and download_path");
    const p = rsplit(tail, 3);
    if (p.length === 4 && p[0] && SHA256.test(p[1]) && COUNT18.test(p[2]) && TOKEN.test(p[3]))
      return { kind: "ResultsStored", job_id: jobId, download_path: p[0], sha256: p[1], size: count(p[2], "size"), token: p[3] };
    return { kind: "ResultsStored", job_id: jobId, download_path: tail };
  },
  AUTH_HELLO: (r) => { const [k, n] = b64Fields(r, "AUTH_HELLO", [32, 32]); return { kind: "AuthHello", public_key: k, nonce: n }; },
  AUTH_CHALLENGE: (r) => {
    const [k, n, s] = b64Fields(r, "AUTH_CHALLENGE", [32, 32, 64]);
    return { kind: "AuthChallenge", public_key: k, nonce: n, signature: s };
  },
  AUTH_RESPONSE: (r) => { const [s] = b64Fields(r, "AUTH_RESPONSE", [64]); return { kind: "AuthResponse", signature: s }; },
  AUTH_OK: (r) => ({ kind: "AuthOk", fingerprint: need(r, "AUTH_OK") }),
};
/** Every text frame type parse() understands. */
export const FRAME_TYPES = Object.freeze(Object.keys(PARSERS));

/** Parse one frame: a string (text) or ArrayBuffer/Uint8Array (binary, a Chunk).
 *  Throws ProtocolError (remote) with FRAME_TOO_LARGE, TOO_MANY_FIELDS, UNKNOWN_MESSAGE,
 *  MALFORMED_FRAME, INVALID_JOB_ID or PATH_TOO_LONG, checked in that order (1.3). */
export function parse(frame) {
  if (frame instanceof ArrayBuffer || ArrayBuffer.isView(frame)) {
    const data = frame instanceof Uint8Array ? frame : new Uint8Array(frame.buffer ?? frame, frame.byteOffset ?? 0, frame.byteLength);
    if (data.length > LIMITS.max_binary_frame_bytes)
      throw new ProtocolError("FRAME_TOO_LARGE", `binary frame of ${data.length} bytes exceeds ${LIMITS.max_binary_frame_bytes}`);
    return { kind: "Chunk", data };
  }
  if (typeof frame !== "string") throw malformed("a frame is text or bytes");
  if (frame.length * 3 > LIMITS.max_text_frame_bytes) {
    const size = byteLength(frame);
    if (size > LIMITS.max_text_frame_bytes) throw new ProtocolError("FRAME_TOO_LARGE", `text frame of ${size} bytes exceeds ${LIMITS.max_text_frame_bytes}`);
  }
  const fields = frame.split(SEP).length;
  if (fields > LIMITS.max_fields) throw new ProtocolError("TOO_MANY_FIELDS", `${fields} fields exceed ${LIMITS.max_fields}`);
  const [type, sep, rest] = partition(frame);
  const parser = Object.hasOwn(PARSERS, type) ? PARSERS[type] : undefined;
  if (!parser) throw new ProtocolError("UNKNOWN_MESSAGE", `unknown message type '${type.slice(0, 32)}'`);
  try {
    return check(parser(sep ? rest : null));
  } catch (e) {
    if (e instanceof ProtocolError) throw new ProtocolError(e.code, e.detail, true);
    throw e;
  }
}

/** The chunk size to send with: the remote's max message size, at most the protocol's
 *  bound; 64 KiB when the remote's is unknown (PROTOCOL.md 1.2). */
export function chunkSizeFor(maxMessageSize) {
  if (!Number.isFinite(maxMessageSize) || maxMessageSize <= 0) return LIMITS.chunk_bytes;
  return Math.min(maxMessageSize, LIMITS.max_binary_frame_bytes);
}
/** Whether a name the worker announces is a plain base name (else INVALID_NAME). */
export function isPlainName(name) {
  return !!name && name !== "." && name !== ".." && byteLength(name) <= LIMITS.max_name_bytes
    && !/[\/\\\x00-\x1f\x7f]/.test(name) && !/^[A-Za-z]:/.test(name)
    && !/[\/\\]/.test(name.normalize("NFKC")) && ![".", ".."].includes(name.normalize("NFKC"));
}
