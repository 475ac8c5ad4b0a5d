// One authenticated data channel to a worker: the handshake, shared-storage jobs, file
// uploads (with proof of possession, flow control and resume) and the results download.
// Every frame goes through protocol.js; frames are handled one at a time, in arrival
// order (PROTOCOL.md 1.1). The UI is told what happens through the `ui` callbacks.
import * as P from "./protocol.js";
import { Sha256 } from "./sha256.js";

const MiB = 1024 * 1024;
/** Pause sending above this many bytes waiting in the channel; resume at the low mark. */
export const HIGH_WATER = 4 * MiB;
export const LOW_WATER = 1 * MiB;
/** File bytes read per File.slice (the whole file is never in memory). */
export const READ_BLOCK = 4 * MiB;
/** sessionStorage: file bytes this tab put on the wire (handed to the channel and not
 *  still in its buffer when the page went away), over reloads: shows what a resume cost. */
export const BYTES_SENT_KEY = "rtc-worker-page/bytes-sent";

/** sha256 of a File (or Blob), read in READ_BLOCK slices; onProgress(bytesHashed). */
export async function hashFile(file, onProgress = () => {}) {
  const h = new Sha256();
  for (let pos = 0; pos < file.size; pos += READ_BLOCK) {
    h.update(new Uint8Array(await file.slice(pos, Math.min(pos + READ_BLOCK, file.size)).arrayBuffer()));
    onProgress(Math.min(pos + READ_BLOCK, file.size));
  }
  return P.hex(h.digest());
}
const sessionCount = (key) => Number(sessionStorage.getItem(key) ?? 0);

/** Rate over a sliding window of (time, bytes) samples: bytes per second. */
class Rate {
  constructor() { this.samples = []; }
  add(bytes) {
    const now = performance.now();
    this.samples.push([now, bytes]);
    while (this.samples.length > 2 && now - this.samples[0][0] > 3000) this.samples.shift();
    const [t0, b0] = this.samples[0];
    return now > t0 ? ((bytes - b0) * 1000) / (now - t0) : 0;
  }
}

export class Session {
  /** channel: an open RTCDataChannel; ctx: {identity, pinned, offerDtls, answerDtls,
   *  maxMessageSize}; ui: callbacks (see app.js). */
  constructor(channel, ctx, ui) {
    Object.assign(this, { channel, ctx, ui });
    this.queue = Promise.resolve();
    this.waiters = [];
    this.sender = new P.SenderMachine();
    this.upload = null; // {file, sha256, size, offset, sent, cancelled}
    this.download = null; // {name, size, sha256, parts, hash, received}
    this.closed = false;
    channel.binaryType = "arraybuffer";
    channel.bufferedAmountLowThreshold = LOW_WATER;
    channel.addEventListener("message", (ev) => { this.queue = this.queue.then(() => this._onFrame(ev.data)); });
    channel.addEventListener("close", () => this._onClose());
    addEventListener("pagehide", () => this._uncountBuffered());
  }

  /** Bytes still in the channel's buffer when the page goes away or the channel closes
   *  never leave the page: take them off the count of bytes sent (once). */
  _uncountBuffered() {
    const up = this.upload;
    if (!up || up.done || up.uncounted) return;
    up.uncounted = true;
    sessionStorage.setItem(BYTES_SENT_KEY, String(sessionCount(BYTES_SENT_KEY) - this.channel.bufferedAmount));
  }

  send(msg) {
    if (this.channel.readyState !== "open") throw new P.ProtocolError("CONNECTION_LOST", "the data channel is closed", false);
    this.channel.send(P.encode(msg));
  }

  /** Wait for the next frame whose kind is in `kinds`; rejects when the channel closes. */
  expect(kinds, timeoutMs = 60000) {
    return new Promise((resolve, reject) => {
      const w = { kinds, resolve, reject };
      w.timer = setTimeout(() => { this.waiters = this.waiters.filter((x) => x !== w); reject(new P.ProtocolError("TIMEOUT", `no ${kinds.join("/")} within ${timeoutMs / 1000} s`, false)); }, timeoutMs);
      this.waiters.push(w);
    });
  }
  _deliver(msg) {
    const w = this.waiters.find((x) => x.kinds.includes(msg.kind));
    if (!w) return false;
    this.waiters = this.waiters.filter((x) => x !== w);
    clearTimeout(w.timer);
    w.resolve(msg);
    return true;
  }

  // ------------------------------------------------------------------- handshake (2.5)
  /** Run the handshake; returns the worker's proven fingerprint or throws {code, detail}. */
  async handshake() {
    const hs = new P.ClientHandshake({ signer: this.ctx.identity, offerDtls: this.ctx.offerDtls, answerDtls: this.ctx.answerDtls, pinned: this.ctx.pinned });
    this.channel.send(hs.start());
    for (;;) {
      const msg = await this.expect(["AuthChallenge", "AuthOk", "ProtocolErrorFrame"], 15000);
      const out = await hs.receive(msg);
      for (const frame of out.send) this.channel.send(frame);
      if (out.failed) { setTimeout(() => this.channel.close(), 200); throw new P.ProtocolError(out.failed.code, out.failed.detail); }
      if (out.done) { this.authenticated = true; return out.done; }
    }
  }

  // ----------------------------------------------------------------------- dispatch
  async _onFrame(data) {
    let msg;
    try { msg = P.parse(data); } catch (e) {
      this.ui.error(e.code, `the worker sent a frame the page refuses: ${e.detail}`);
      if (data instanceof ArrayBuffer && !this.download) this._trySend({ kind: "TransferError", code: "UNEXPECTED_DATA", detail: "no transfer open" });
      return;
    }
    try { await this._route(msg); } catch (e) { this.ui.error(e.code ?? "INTERNAL_ERROR", e.detail ?? String(e)); }
  }
  _trySend(msg) { try { this.send(msg); } catch { /* closed */ } }

  async _route(msg) {
    if (!this.authenticated) { if (!this._deliver(msg)) this.ui.error("UNEXPECTED_MESSAGE", `${msg.kind} before the handshake ended`); return; }
    switch (msg.kind) {
      case "PathValidated": case "PathError": case "JobLog": case "JobMetrics": case "JobComplete": case "JobFailed": case "ResultsStored":
        this.ui.job(msg);
        this._deliver(msg);
        return;
      case "ProtocolErrorFrame":
        if (this.sender.can("ProtocolErrorFrame")) { this.sender.step("ProtocolErrorFrame"); this._endUpload(); }
        this.ui.error(msg.code, msg.detail);
        this._deliver(msg);
        return;
      case "FileReady": case "FileExists": case "FileProofRequest": case "FileProgress": case "FileReceived":
        return this._senderFrame(msg);
      case "TransferError":
        if (this.sender.state !== "IDLE") return this._senderFrame(msg);
        if (this.download) { this.download = null; this.ui.results({ phase: "failed", code: msg.code, detail: msg.detail }); }
        this.ui.error(msg.code, msg.detail);
        return;
      case "FileMeta": case "FileMetaLegacy": case "Chunk": case "EndOfFile":
        return this._receiverFrame(msg);
      case "FileCancel":
        if (this.download) return this._receiverFrame(msg);
        return this._senderFrame(msg);
      default:
        this.ui.error("UNEXPECTED_MESSAGE", `the worker sent ${msg.kind}, which only a client sends`);
    }
  }

  _onClose() {
    if (this.closed) return;
    this.closed = true;
    for (const w of this.waiters) { clearTimeout(w.timer); w.reject(new P.ProtocolError("CONNECTION_LOST", "the data channel closed", false)); }
    this.waiters = [];
    this._uncountBuffered();
    if (this.upload && !this.upload.done) { this.upload.interrupted = true; this.ui.transfer({ phase: "interrupted", ...this._figures() }); }
    if (this.download) { this.download = null; this.ui.results({ phase: "failed", code: "CONNECTION_LOST", detail: "the connection closed during the download" }); }
    if (this.authenticated) this.ui.closed(); // a failed handshake was reported already
  }
  close() { try { this.channel.close(); } catch { /* already */ } }

  // ------------------------------------------------------------------- shared jobs (2.1)
  /** Validate input and output, start the job; JOB_LOG, JOB_METRICS and the end arrive
   *  through ui.job. Returns the JOB_COMPLETE / JOB_FAILED message, or null when refused. */
  async runSharedJob(input, output, jobId = "") {
    const replyTo = ["PathValidated", "PathError", "ProtocolErrorFrame"];
    if (jobId) this.send({ kind: "JobId", job_id: jobId });
    this.ui.step("input", "active", input);
    this.send({ kind: "SharedInputPath", path: input });
    let r = await this.expect(replyTo);
    if (r.kind !== "PathValidated") { this.ui.step("input", "failed", r.reason ?? `${r.code}: ${r.detail}`); return null; }
    this.ui.step("input", "done", input);
    this.ui.step("output", "active", output);
    this.send({ kind: "SharedOutputPath", path: output });
    r = await this.expect(replyTo);
    if (r.kind !== "PathValidated") { this.ui.step("output", "failed", r.reason ?? `${r.code}: ${r.detail}`); return null; }
    this.ui.step("output", "done", output);
    return this.startJob();
  }
  /** JOB_START on what the session holds (validated paths, or a received file). */
  async startJob() {
    this.ui.step("run", "active", "running");
    const end = this.expect(["JobComplete", "JobFailed", "ProtocolErrorFrame"], 3600 * 1000);
    this.send({ kind: "JobStart" });
    const r = await end;
    if (r.kind === "JobComplete") this.ui.step("run", "done", `${r.file_count} files, ${r.total_mb.toFixed(2)} MB in ${r.output_path}`);
    else this.ui.step("run", "failed", r.reason ?? `${r.code}: ${r.detail}`);
    return r;
  }
  cancelJob() { this.send({ kind: "JobCancel" }); }

  // --------------------------------------------------------------- upload (2.3, sender)
  /** Send a file: FILE_META, proof if asked, chunks from the worker's offset, END_OF_FILE.
   *  `known` = {sha256} skips hashing when the same file was hashed before. */
  async sendFile(file, known = null) {
    if (this.sender.state !== "IDLE") throw new P.ProtocolError("UNEXPECTED_MESSAGE", `a transfer is open (${this.sender.state})`, false);
    if (file.size > P.LIMITS.max_file_bytes) throw new P.ProtocolError("FILE_TOO_LARGE", `${file.size} bytes`, false);
    const up = { file, size: file.size, offset: 0, sent: 0, rate: new Rate(), started: performance.now(), done: false };
    this.upload = up;
    this.ui.transfer({ phase: "hashing", done: 0, size: file.size, name: file.name });
    up.sha256 = known?.sha256 ?? await hashFile(file, (n) => this.ui.transfer({ phase: "hashing", done: n, size: file.size, name: file.name }));
    if (this.upload !== up || this.closed) return;
    up.chunk = P.chunkSizeFor(this.ctx.maxMessageSize);
    this.sender.step("FileMeta");
    this.send({ kind: "FileMeta", name: file.name, size: file.size, sha256: up.sha256, chunk_size: up.chunk });
    this.ui.transfer({ phase: "offered", done: 0, size: file.size, name: file.name, sha256: up.sha256 });
    up.finished = new Promise((resolve) => { up.finish = resolve; });
    return up.finished;
  }
  cancelTransfer() {
    if (!this.sender.can("cancel")) return;
    this.sender.step("cancel");
    if (this.upload) this.upload.cancelled = true;
    this._trySend({ kind: "FileCancel" });
    this.ui.transfer({ phase: "cancelled", ...this._figures() });
    setTimeout(() => { if (this.sender.state === "CANCELLED") this.sender.step("give up"); }, 10000);
  }
  _endUpload(result = {}) {
    const up = this.upload;
    if (!up) return;
    up.done = true;
    up.finish?.(result);
  }

  async _senderFrame(msg) {
    const before = this.sender.state;
    if (!this.sender.can(msg.kind)) { this.ui.error("UNEXPECTED_MESSAGE", `${msg.kind} while the sender is ${before}`); return; }
    this.sender.step(msg.kind);
    if (before === "CANCELLED") { if (msg.kind === "TransferError") this._endUpload({ cancelled: true }); return; }
    const up = this.upload;
    switch (msg.kind) {
      case "FileProofRequest": {
        this.ui.transfer({ phase: "proving", done: 0, size: up.size });
        try {
          const digest = await P.proofDigest(msg, up.size, async (o, l) => new Uint8Array(await up.file.slice(o, o + l).arrayBuffer()));
          this.sender.step("FileRanges");
          this.send({ kind: "FileProof", sha256: digest });
        } catch (e) { this.ui.error(e.code ?? "MALFORMED_FRAME", e.detail ?? String(e)); } // no answer: the worker's deadline applies
        return;
      }
      case "FileExists":
        up.existed = true;
        this.ui.transfer({ phase: "exists", done: up.size, size: up.size, sha256: msg.sha256, sent: 0 });
        return this._endUpload({ exists: true });
      case "FileReady":
        if (msg.offset > up.size) {
          this.sender.step("TransferError");
          this._trySend({ kind: "TransferError", code: "SIZE_MISMATCH", detail: `offset ${msg.offset} beyond ${up.size} bytes` });
          this.ui.error("SIZE_MISMATCH", `the worker asked from byte ${msg.offset} of ${up.size}`);
          return this._endUpload({ error: "SIZE_MISMATCH" });
        }
        up.offset = msg.offset;
        this.ui.transfer({ phase: "sending", ...this._figures() });
        this._stream(up); // runs beside the frame queue: FILE_PROGRESS keeps arriving
        return;
      case "FileProgress":
        up.acked = msg.received;
        return;
      case "FileReceived":
        if (msg.sha256 !== up.sha256) {
          this._trySend({ kind: "TransferError", code: "HASH_MISMATCH", detail: "FILE_RECEIVED names another sha256" });
          this.ui.error("HASH_MISMATCH", `the worker stored ${msg.sha256}, not ${up.sha256}`);
          return this._endUpload({ error: "HASH_MISMATCH" });
        }
        this.ui.transfer({ phase: "received", ...this._figures(), sha256: msg.sha256 });
        return this._endUpload({ received: true });
      case "TransferError": case "FileCancel":
        this.ui.transfer({ phase: "failed", ...this._figures(), code: msg.code ?? "CANCELLED", detail: msg.detail ?? "the worker cancelled" });
        if (msg.kind === "TransferError") this.ui.error(msg.code, msg.detail);
        return this._endUpload({ error: msg.code ?? "CANCELLED" });
    }
  }

  _figures() {
    const up = this.upload;
    if (!up) return {};
    const buffered = this.channel.readyState === "open" ? this.channel.bufferedAmount : 0;
    const done = Math.max(up.offset + up.sent - buffered, up.acked ?? 0);
    const speed = up.rate.add(done);
    return { done, size: up.size, speed, eta: speed > 0 ? (up.size - done) / speed : null, offset: up.offset, sent: up.sent, name: up.file.name };
  }

  _waitLow() {
    if (this.channel.bufferedAmount <= HIGH_WATER) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => { this.channel.removeEventListener("bufferedamountlow", done); this.channel.removeEventListener("close", done); resolve(); };
      this.channel.addEventListener("bufferedamountlow", done);
      this.channel.addEventListener("close", done);
    });
  }

  async _stream(up) {
    const live = () => this.upload === up && !up.cancelled && !this.closed && this.sender.state === "SENDING";
    let shown = 0;
    try {
      for (let pos = up.offset; pos < up.size && live();) {
        const end = Math.min(pos + READ_BLOCK, up.size);
        const block = new Uint8Array(await up.file.slice(pos, end).arrayBuffer());
        for (let i = 0; i < block.length && live(); i += up.chunk) {
          await this._waitLow();
          if (!live()) break;
          const piece = block.subarray(i, Math.min(i + up.chunk, block.length));
          this.channel.send(piece);
          up.sent += piece.length;
          sessionStorage.setItem(BYTES_SENT_KEY, String(sessionCount(BYTES_SENT_KEY) + piece.length));
          if (performance.now() - shown > 200) { shown = performance.now(); this.ui.transfer({ phase: "sending", ...this._figures() }); }
        }
        pos = end;
      }
      if (live()) {
        this.sender.step("EndOfFile");
        this.send({ kind: "EndOfFile" });
        this.ui.transfer({ phase: "verifying", ...this._figures() });
      }
    } catch (e) {
      if (!this.closed) this.ui.error(e.code ?? "CONNECTION_LOST", e.detail ?? String(e));
    }
  }

  // ----------------------------------------------------------- results (2.1, receiver)
  /** RESULTS_REQUEST: the worker sends results-{job_id}.zip; resolved with
   *  {name, blob, sha256} once its sha256 checks out, or an error result. */
  requestResults(jobId) {
    if (this.download) throw new P.ProtocolError("UNEXPECTED_MESSAGE", "a download is already running", false);
    const done = new Promise((resolve) => { this.resultsDone = resolve; });
    this.ui.results({ phase: "requested", jobId });
    this.send({ kind: "ResultsRequest", job_id: jobId });
    this.expect(["ProtocolErrorFrame", "FileMeta"], 60000).then((m) => {
      if (m.kind === "ProtocolErrorFrame") { this.ui.results({ phase: "failed", code: m.code, detail: m.detail }); this.resultsDone({ error: m.code }); }
    }, () => {});
    return done;
  }

  _receiverFrame(msg) {
    const d = this.download;
    const refuse = (code, detail) => { this._trySend({ kind: "TransferError", code, detail }); this.download = null; this.ui.results({ phase: "failed", code, detail }); this.resultsDone?.({ error: code }); };
    switch (msg.kind) {
      case "FileMetaLegacy":
        return refuse("UNEXPECTED_DATA", "the page takes only FILE_META with a sha256");
      case "FileMeta":
        if (d) { this._trySend({ kind: "ProtocolErrorFrame", code: "UNEXPECTED_MESSAGE", detail: "a transfer is open" }); return; }
        this._deliver(msg);
        if (!P.isPlainName(msg.name)) return refuse("INVALID_NAME", "not a plain base name");
        if (msg.chunk_size > P.LIMITS.max_binary_frame_bytes) return refuse("UNEXPECTED_DATA", `chunk_size above ${P.LIMITS.max_binary_frame_bytes}`);
        if (msg.size > P.LIMITS.max_file_bytes) return refuse("FILE_TOO_LARGE", `above ${P.LIMITS.max_file_bytes} bytes`);
        this.download = { name: msg.name, size: msg.size, sha256: msg.sha256, chunk: msg.chunk_size, parts: [], hash: new Sha256(), received: 0, lastProgress: -Infinity, rate: new Rate() };
        this.send({ kind: "FileReady", offset: 0 });
        this.ui.results({ phase: "receiving", done: 0, size: msg.size, name: msg.name });
        return;
      case "Chunk": {
        if (!d) { this._trySend({ kind: "TransferError", code: "UNEXPECTED_DATA", detail: "no transfer open" }); return; }
        if (msg.data.length > d.chunk) return refuse("UNEXPECTED_DATA", "a chunk above chunk_size");
        if (d.received + msg.data.length > d.size) return refuse("SIZE_MISMATCH", "more bytes than announced");
        d.parts.push(msg.data.slice());
        d.hash.update(msg.data);
        d.received += msg.data.length;
        const now = performance.now();
        if (now - d.lastProgress >= P.LIMITS.progress_interval_s * 1000) {
          d.lastProgress = now;
          this._trySend({ kind: "FileProgress", received: d.received, size: d.size });
          this.ui.results({ phase: "receiving", done: d.received, size: d.size, speed: d.rate.add(d.received), name: d.name });
        }
        return;
      }
      case "EndOfFile": {
        if (!d) { this._trySend({ kind: "ProtocolErrorFrame", code: "UNEXPECTED_MESSAGE", detail: "no transfer open" }); return; }
        if (d.received !== d.size) return refuse("SIZE_MISMATCH", `${d.received} of ${d.size} bytes arrived`);
        const sha = P.hex(d.hash.digest());
        if (sha !== d.sha256) return refuse("HASH_MISMATCH", `received ${sha}, announced ${d.sha256}`);
        this.send({ kind: "FileReceived", sha256: sha });
        const blob = new Blob(d.parts, { type: "application/zip" });
        this.download = null;
        this.ui.results({ phase: "verified", name: d.name, size: d.size, sha256: sha, blob });
        this.resultsDone?.({ name: d.name, blob, sha256: sha });
        return;
      }
      case "FileCancel":
        this._trySend({ kind: "TransferError", code: "CANCELLED", detail: `cancelled by the sender; ${d.received} bytes dropped` });
        this.download = null;
        this.ui.results({ phase: "failed", code: "CANCELLED", detail: "the worker cancelled the download" });
        this.resultsDone?.({ error: "CANCELLED" });
        return;
    }
  }
}
