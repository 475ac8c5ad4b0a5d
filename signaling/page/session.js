// One authenticated data channel to a worker: the handshake, shared-storage jobs, file
// uploads (with proof of possession, flow control and resume) and the results download.
// Every frame goes through protocol.js; frames are handled one at a time, in arrival
// order (PROTOCOL.md 1.1). The UI is told what happens through the `ui` callbacks.
import * as P from "./protocol.js";
import { Sha256 } from "./sha256.js";

const MiB = 1024 * 1024;
/** Milliseconds as readable seconds: 120000 -> "120", 100 -> "0.1". */
const secs = (ms) => String(Number((ms / 1000).toFixed(1)));
/** Pause sending above this many bytes waiting in the channel; resume at the low mark. */
export const HIGH_WATER = 4 * MiB;
export const LOW_WATER = 1 * MiB;
/** File bytes read per File.slice (the whole file is never in memory). */
export const READ_BLOCK = 4 * MiB;
/** The page holds a results ZIP in memory until it is saved: larger ones are refused
 *  (TRANSFER_ERROR::FILE_TOO_LARGE before any byte is sent). Bytes. */
export const RESULTS_MAX_BYTES = 512 * MiB;
/** Deadlines, milliseconds (a Session takes others in ctx.timeouts): a reply to a path
 *  or the handshake; the FILE_META after RESULTS_REQUEST (the worker packs the ZIP
 *  first); the gap between two frames of a download; the end of a job; the
 *  acknowledgement of our FILE_CANCEL (as the Python client, 10 s). */
export const TIMEOUTS = Object.freeze({ reply: 60000, handshake: 15000, resultsMeta: 120000, resultsIdle: 30000, job: 3600 * 1000, cancelGiveUp: 10000 });

/** sha256 of a File (or Blob), read in READ_BLOCK slices; onProgress(bytesHashed). */
export async function hashFile(file, onProgress = () => {}) {
  const h = new Sha256();
  for (let pos = 0; pos < file.size; pos += READ_BLOCK) {
    h.update(new Uint8Array(await file.slice(pos, Math.min(pos + READ_BLOCK, file.size)).arrayBuffer()));
    onProgress(Math.min(pos + READ_BLOCK, file.size));
  }
  return P.hex(h.digest());
}

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
   *  maxMessageSize, timeouts?} (timeouts: TIMEOUTS overrides); ui: callbacks (app.js). */
  constructor(channel, ctx, ui) {
    Object.assign(this, { channel, ctx, ui });
    this.timeouts = { ...TIMEOUTS, ...(ctx.timeouts ?? {}) };
    this.queue = Promise.resolve();
    this.waiters = new Map(); // request name -> {resolve, reject, timer}
    this.job = new P.ClientJob();
    this.sender = new P.SenderMachine();
    this.upload = null; // {file, sha256, size, offset, sent, cancelled}
    this.results = null; // the results download: {jobId, name, state: REQUESTED | RECEIVING, ...}
    this.closed = false;
    channel.binaryType = "arraybuffer";
    channel.bufferedAmountLowThreshold = LOW_WATER;
    channel.addEventListener("message", (ev) => { this.queue = this.queue.then(() => this._onFrame(ev.data)); });
    channel.addEventListener("close", () => this._onClose());
  }

  send(msg) {
    if (this.channel.readyState !== "open") throw new P.ProtocolError("CONNECTION_LOST", "the data channel is closed", false);
    this.channel.send(P.encode(msg));
  }
  /** A job message, if the client job table allows it now (else ProtocolError, local
   *  UNEXPECTED_MESSAGE, and nothing is sent). */
  _sendJob(msg) {
    if (this.channel.readyState !== "open") throw new P.ProtocolError("CONNECTION_LOST", "the data channel is closed", false);
    const frame = P.encode(msg);
    this.job.send(msg.kind);
    this.channel.send(frame);
  }

  /** Wait for the answer to `request` ("handshake", "input", "output", "job"): the
   *  reply message, or the PROTOCOL_ERROR refusing it. Rejects with TIMEOUT after
   *  timeoutMs, CONNECTION_LOST when the channel closes. */
  expect(request, timeoutMs, what) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.delete(request);
        reject(new P.ProtocolError("TIMEOUT", `no ${what} within ${secs(timeoutMs)} s`, false));
      }, timeoutMs);
      this.waiters.set(request, { resolve, reject, timer });
    });
  }
  _deliver(request, msg) {
    const w = this.waiters.get(request);
    if (!w) return false;
    this.waiters.delete(request);
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
      const msg = await this.expect("handshake", this.timeouts.handshake, "AUTH_CHALLENGE / AUTH_OK");
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
      if (data instanceof ArrayBuffer && !this._receiving()) this._trySend({ kind: "TransferError", code: "UNEXPECTED_DATA", detail: "no transfer open" });
      return;
    }
    try { await this._route(msg); } catch (e) { this.ui.error(e.code ?? "INTERNAL_ERROR", e.detail ?? String(e)); }
  }
  _trySend(msg) { try { this.send(msg); } catch { /* closed */ } }

  async _route(msg) {
    if (!this.authenticated) {
      const handshake = ["AuthChallenge", "AuthOk", "ProtocolErrorFrame"].includes(msg.kind);
      if (!handshake || !this._deliver("handshake", msg)) this.ui.error("UNEXPECTED_MESSAGE", `${msg.kind} before the handshake ended`);
      return;
    }
    switch (msg.kind) {
      case "PathValidated": case "PathError": case "JobLog": case "JobMetrics": case "JobComplete": case "JobFailed":
        return this._jobFrame(msg);
      case "ResultsStored":
        this.ui.job(msg); // unchanged state, as the Python client
        return;
      case "ProtocolErrorFrame":
        return this._refused(msg);
      case "FileReady": case "FileExists": case "FileProofRequest": case "FileProgress": case "FileReceived":
        return this._senderFrame(msg);
      case "TransferError":
        if (this.sender.state !== "IDLE") return this._senderFrame(msg);
        if (this._receiving()) this._resultsEnd(msg.code, msg.detail);
        else this.ui.error(msg.code, msg.detail);
        return;
      case "FileMeta": case "FileMetaLegacy": case "Chunk": case "EndOfFile":
        return this._receiverFrame(msg);
      case "FileCancel":
        if (this._receiving()) return this._receiverFrame(msg);
        if (this.sender.state === "IDLE") { this._trySend({ kind: "TransferError", code: "CANCELLED", detail: "no transfer open" }); return; }
        return this._senderFrame(msg);
      default:
        this.ui.error("UNEXPECTED_MESSAGE", `the worker sent ${msg.kind}, which only a client sends`);
    }
  }

  /** A job reply, through the client job table: one that answers nothing we asked
   *  (a JOB_COMPLETE with no job started...) is refused, never shown as real. */
  _jobFrame(msg) {
    let request;
    try { request = this.job.receive(msg); } catch (e) { this.ui.error(e.code, e.detail); return; }
    this.ui.job(msg);
    if (request === "input" || request === "output") this._deliver(request, msg);
    else if (msg.kind === "JobComplete" || msg.kind === "JobFailed") this._deliver("job", msg);
  }

  /** A PROTOCOL_ERROR goes to the request it refuses (protocol/_client_role.py). */
  _refused(msg) {
    const request = this.job.refusal(msg.code, { resultsPending: this._resultsPending(), fileOffered: this.sender.state === "AWAIT_READY" });
    this.ui.error(msg.code, msg.detail);
    if (request === "input" || request === "output") this._deliver(request, msg);
    else if (request === "start") this._deliver("job", msg);
    else if (request === "results") this._resultsRefused(msg);
    else if (request === "file") {
      this.sender.step("ProtocolErrorFrame");
      this.ui.transfer({ phase: "failed", ...this._figures(), code: msg.code, detail: msg.detail });
      this._endUpload({ error: msg.code });
    }
  }

  _onClose() {
    if (this.closed) return;
    this.closed = true;
    for (const w of this.waiters.values()) { clearTimeout(w.timer); w.reject(new P.ProtocolError("CONNECTION_LOST", "the data channel closed", false)); }
    this.waiters.clear();
    clearTimeout(this.giveUpTimer);
    if (this.upload && !this.upload.done) { this.upload.interrupted = true; this.ui.transfer({ phase: "interrupted", ...this._figures() }); this._endUpload({ interrupted: true }); }
    this._resultsClosed();
    if (this.authenticated) this.ui.closed(); // a failed handshake was reported already
  }
  close() { try { this.channel.close(); } catch { /* already */ } }

  // ------------------------------------------------------------------- shared jobs (2.1)
  /** Validate input and output, start the job; JOB_LOG, JOB_METRICS and the end arrive
   *  through ui.job. Returns the JOB_COMPLETE / JOB_FAILED message, or null when refused. */
  async runSharedJob(input, output, jobId = "") {
    if (jobId) this._sendJob({ kind: "JobId", job_id: jobId });
    for (const [which, path, kind] of [["input", input, "SharedInputPath"], ["output", output, "SharedOutputPath"]]) {
      this.ui.step(which, "active", path);
      const reply = this.expect(which, this.timeouts.reply, `answer to ${which} path`);
      try { this._sendJob({ kind, path }); } catch (e) { this._forget(which); throw e; }
      const r = await reply.catch((e) => { this.ui.step(which, "failed", P.describeError(e.code, e.detail)); throw e; });
      if (r.kind !== "PathValidated") { this.ui.step(which, "failed", r.reason ?? P.describeError(r.code, r.detail)); return null; }
      this.ui.step(which, "done", path);
    }
    return this.startJob();
  }
  _forget(request) { const w = this.waiters.get(request); if (w) { clearTimeout(w.timer); this.waiters.delete(request); } }
  /** JOB_START on what the session holds (validated paths, or a received file). */
  async startJob() {
    this.ui.step("run", "active", "running");
    const end = this.expect("job", this.timeouts.job, "JOB_COMPLETE or JOB_FAILED");
    try { this._sendJob({ kind: "JobStart" }); } catch (e) { this._forget("job"); this.ui.step("run", "failed", P.describeError(e.code, e.detail)); throw e; }
    const r = await end.catch((e) => { this.ui.step("run", "failed", P.describeError(e.code, e.detail)); throw e; });
    if (r.kind === "JobComplete") this.ui.step("run", "done", `${r.file_count} files, ${r.total_mb.toFixed(2)} MB in ${r.output_path}`);
    else this.ui.step("run", "failed", r.reason ?? P.describeError(r.code, r.detail));
    return r;
  }
  cancelJob() { this._sendJob({ kind: "JobCancel" }); }

  // --------------------------------------------------------------- upload (2.3, sender)
  /** Send a file: FILE_META, proof if asked, chunks from the worker's offset, END_OF_FILE.
   *  `known` = {sha256} skips hashing when the same file was hashed before. Resolves with
   *  how it ended: {received}, {exists}, {cancelled}, {interrupted} or {error: code}. */
  async sendFile(file, known = null) {
    if (this.sender.state !== "IDLE") throw new P.ProtocolError("UNEXPECTED_MESSAGE", `a transfer is open (${this.sender.state})`, false);
    if (file.size > P.LIMITS.max_file_bytes) throw new P.ProtocolError("FILE_TOO_LARGE", `${file.size} bytes`, false);
    const up = { file, size: file.size, offset: 0, sent: 0, rate: new Rate(), started: performance.now(), done: false };
    this.upload = up;
    up.finished = new Promise((resolve) => { up.finish = resolve; });
    this.ui.transfer({ phase: "hashing", done: 0, size: file.size, name: file.name });
    up.sha256 = known?.sha256 ?? await hashFile(file, (n) => this.ui.transfer({ phase: "hashing", done: n, size: file.size, name: file.name }));
    if (this.upload !== up || this.closed) return up.done ? up.finished : { interrupted: true };
    up.chunk = P.chunkSizeFor(this.ctx.maxMessageSize);
    this.sender.step("FileMeta");
    this.send({ kind: "FileMeta", name: file.name, size: file.size, sha256: up.sha256, chunk_size: up.chunk });
    this.ui.transfer({ phase: "offered", done: 0, size: file.size, name: file.name, sha256: up.sha256 });
    return up.finished;
  }
  /** FILE_CANCEL: the worker keeps its part for a resume. The upload ends (its promise
   *  resolves {cancelled}) when the worker acknowledges (TRANSFER_ERROR::CANCELLED),
   *  cancels too (FILE_CANCEL), or after timeouts.cancelGiveUp without either. */
  cancelTransfer() {
    if (!this.sender.can("cancel")) return;
    this.sender.step("cancel");
    if (this.upload) this.upload.cancelled = true;
    this._trySend({ kind: "FileCancel" });
    this.ui.transfer({ phase: "cancelled", ...this._figures() });
    this.giveUpTimer = setTimeout(() => {
      if (this.sender.state !== "CANCELLED") return;
      this.sender.step("give up");
      this._endUpload({ cancelled: true });
    }, this.timeouts.cancelGiveUp);
  }
  _endUpload(result = {}) {
    const up = this.upload;
    if (!up || up.done) return;
    up.done = true;
    up.finish?.(result);
    if (result.received || result.exists) this.job.move(P.OUTCOME.FILE_ACCEPTED); // the next job's input
  }

  /** A receiver frame about our upload, through the sender table (protocol/sender.py
   *  Sender.receive); one the table does not allow is refused and changes nothing. */
  async _senderFrame(msg) {
    const before = this.sender.state;
    const next = this.sender.next(msg.kind); // throws UNEXPECTED_MESSAGE
    if (before === "CANCELLED") {
      // Only TRANSFER_ERROR::CANCELLED (or FILE_CANCEL) acknowledges our cancel; the
      // receiver's other frames about the cancelled transfer are absorbed.
      if (msg.kind === "TransferError" && msg.code !== "CANCELLED") return;
      if (next === "IDLE") { clearTimeout(this.giveUpTimer); this.sender.state = next; this._endUpload({ cancelled: true }); }
      return;
    }
    const up = this.upload;
    switch (msg.kind) {
      case "FileProofRequest": {
        this.sender.state = next;
        this.ui.transfer({ phase: "proving", done: 0, size: up.size });
        try {
          const digest = await P.proofDigest(msg, up.size, async (o, l) => new Uint8Array(await up.file.slice(o, o + l).arrayBuffer()));
          if (!this.sender.can("FileRanges")) return; // the worker's deadline moved us on
          this.sender.step("FileRanges");
          this.send({ kind: "FileProof", sha256: digest });
        } catch (e) { this.ui.error(e.code ?? "MALFORMED_FRAME", e.detail ?? String(e)); } // no answer: the worker's deadline applies
        return;
      }
      case "FileExists":
        if (msg.sha256 !== up.sha256) throw new P.ProtocolError("MALFORMED_FRAME", `FILE_EXISTS names another sha256 (${msg.sha256}, we offered ${up.sha256})`);
        this.sender.state = next;
        up.existed = true;
        this.ui.transfer({ phase: "exists", done: up.size, size: up.size, sha256: msg.sha256, sent: 0 });
        return this._endUpload({ exists: true });
      case "FileReady":
        if (msg.offset > up.size) {
          this.sender.state = "IDLE";
          this._trySend({ kind: "TransferError", code: "SIZE_MISMATCH", detail: "offset beyond the file's end" });
          this.ui.error("SIZE_MISMATCH", `the worker asked from byte ${msg.offset} of ${up.size}`);
          return this._endUpload({ error: "SIZE_MISMATCH" });
        }
        this.sender.state = next;
        up.offset = msg.offset;
        this.ui.transfer({ phase: "sending", ...this._figures() });
        this._stream(up); // runs beside the frame queue: FILE_PROGRESS keeps arriving
        return;
      case "FileProgress":
        this.sender.state = next;
        up.acked = msg.received;
        return;
      case "FileReceived":
        this.sender.state = "IDLE";
        if (msg.sha256 !== up.sha256) {
          this._trySend({ kind: "TransferError", code: "HASH_MISMATCH", detail: "FILE_RECEIVED names another sha256" });
          this.ui.error("HASH_MISMATCH", `the worker stored ${msg.sha256}, not ${up.sha256}`);
          return this._endUpload({ error: "HASH_MISMATCH" });
        }
        this.ui.transfer({ phase: "received", ...this._figures(), sha256: msg.sha256 });
        return this._endUpload({ received: true });
      case "TransferError": case "FileCancel":
        this.sender.state = next;
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
  /** RESULTS_REQUEST for `jobId`. The worker answers with results-{jobId}.zip: the only
   *  FILE_META the page takes, and only while this request waits for it. Resolves with
   *  {name, blob, sha256} once the sha256 checks out, else {error: code}. Bounds: the
   *  FILE_META within timeouts.resultsMeta, each next frame within timeouts.resultsIdle,
   *  at most RESULTS_MAX_BYTES (held in memory until saved). Throws ProtocolError
   *  (local) when a download is open or the job id is invalid (nothing is sent). */
  requestResults(jobId) {
    if (this.results) throw new P.ProtocolError("UNEXPECTED_MESSAGE", "a results download is already open", false);
    this.send({ kind: "ResultsRequest", job_id: jobId });
    const r = { jobId, name: `results-${jobId}.zip`, state: "REQUESTED" };
    const done = new Promise((resolve) => { r.resolve = resolve; });
    this.results = r;
    this.ui.results({ phase: "requested", jobId });
    const s = secs(this.timeouts.resultsMeta);
    r.timer = setTimeout(() => this._resultsEnd("TIMEOUT", `no FILE_META within ${s} s of RESULTS_REQUEST; ask again later`), this.timeouts.resultsMeta);
    return done;
  }
  _resultsPending() { return this.results?.state === "REQUESTED"; }
  _receiving() { return this.results?.state === "RECEIVING"; }
  /** The download ends without a file: tell the UI (code, detail), send `reply` if any. */
  _resultsEnd(code, detail, reply = null) {
    const r = this.results;
    if (!r) return;
    clearTimeout(r.timer);
    this.results = null;
    if (reply) this._trySend(reply);
    this.ui.results({ phase: "failed", code, detail });
    r.resolve({ error: code });
  }
  _resultsRefused(m) { this._resultsEnd(m.code, m.detail); }
  _resultsClosed() { this._resultsEnd("CONNECTION_LOST", "the connection closed during the download"); }
  /** (Re)arm the deadline for the download's next frame. The protocol has no timeout
   *  code: the worker's transfer is ended with TRANSFER_ERROR::CANCELLED. */
  _idleDeadline(r) {
    clearTimeout(r.timer);
    const s = secs(this.timeouts.resultsIdle);
    r.timer = setTimeout(() => this._resultsEnd("TIMEOUT", `no data from the worker for ${s} s; the download was stopped`,
      { kind: "TransferError", code: "CANCELLED", detail: `the receiver gave up: nothing for ${s} s` }), this.timeouts.resultsIdle);
  }

  _receiverFrame(msg) {
    const r = this.results;
    const refuse = (code, detail, shown = code, shownDetail = detail) =>
      this._resultsEnd(shown, shownDetail, { kind: "TransferError", code, detail });
    switch (msg.kind) {
      case "FileMeta": case "FileMetaLegacy":
        if (r?.state !== "REQUESTED") {
          // A file the page did not ask for: refused before any byte (the worker's
          // sender goes back to IDLE on this PROTOCOL_ERROR).
          this._trySend({ kind: "ProtocolErrorFrame", code: "UNEXPECTED_MESSAGE", detail: r ? "a transfer is open" : "no RESULTS_REQUEST waits for a file" });
          this.ui.error("UNEXPECTED_MESSAGE", `the worker offered ${msg.name}, which the page did not ask for`);
          return;
        }
        if (msg.kind === "FileMetaLegacy") return refuse("UNEXPECTED_DATA", "the page takes only FILE_META with a sha256");
        if (msg.name !== r.name) return refuse("INVALID_NAME", `the results of ${r.jobId} are ${r.name}`, "INVALID_NAME", `the worker offered ${msg.name}, not ${r.name}`);
        if (msg.chunk_size > P.LIMITS.max_binary_frame_bytes) return refuse("UNEXPECTED_DATA", `chunk_size above ${P.LIMITS.max_binary_frame_bytes}`);
        if (msg.size > RESULTS_MAX_BYTES)
          return refuse("FILE_TOO_LARGE", `the page holds at most ${RESULTS_MAX_BYTES} bytes`, "RESULTS_TOO_LARGE", `${(msg.size / 1e6).toFixed(1)} MB`);
        Object.assign(r, { state: "RECEIVING", size: msg.size, sha256: msg.sha256, chunk: msg.chunk_size, parts: [], hash: new Sha256(), received: 0, lastProgress: -Infinity, rate: new Rate() });
        this.send({ kind: "FileReady", offset: 0 });
        this._idleDeadline(r);
        this.ui.results({ phase: "receiving", done: 0, size: msg.size, name: r.name });
        return;
      case "Chunk": {
        if (r?.state !== "RECEIVING") { this._trySend({ kind: "TransferError", code: "UNEXPECTED_DATA", detail: "no transfer open" }); return; }
        if (msg.data.length > r.chunk) return refuse("UNEXPECTED_DATA", "a chunk above chunk_size");
        if (r.received + msg.data.length > r.size) return refuse("SIZE_MISMATCH", "more bytes than announced");
        r.parts.push(msg.data.slice());
        r.hash.update(msg.data);
        r.received += msg.data.length;
        this._idleDeadline(r);
        const now = performance.now();
        if (now - r.lastProgress >= P.LIMITS.progress_interval_s * 1000) {
          r.lastProgress = now;
          this._trySend({ kind: "FileProgress", received: r.received, size: r.size });
          this.ui.results({ phase: "receiving", done: r.received, size: r.size, speed: r.rate.add(r.received), name: r.name });
        }
        return;
      }
      case "EndOfFile": {
        if (r?.state !== "RECEIVING") { this.ui.error("UNEXPECTED_MESSAGE", "END_OF_FILE with no download open"); return; }
        if (r.received !== r.size) return refuse("SIZE_MISMATCH", `${r.received} of ${r.size} bytes arrived`);
        const sha = P.hex(r.hash.digest());
        if (sha !== r.sha256) return refuse("HASH_MISMATCH", `received ${sha}, announced ${r.sha256}`);
        clearTimeout(r.timer);
        this.results = null;
        this.send({ kind: "FileReceived", sha256: sha });
        const blob = new Blob(r.parts, { type: "application/zip" });
        this.ui.results({ phase: "verified", name: r.name, size: r.size, sha256: sha, blob });
        r.resolve({ name: r.name, blob, sha256: sha });
        return;
      }
      case "FileCancel":
        return refuse("CANCELLED", `cancelled by the sender; ${r.received} bytes dropped`, "CANCELLED", "the worker cancelled the download");
    }
  }
}
