// The page: signaling (PROTOCOL.md 5), the WebRTC offer, and the UI around a Session.
import * as P from "./protocol.js";
import { loadIdentity, pin, pinnedFor } from "./identity.js";
import { Session } from "./session.js";
import { addError, appendLine, clearLog } from "./bounded.js";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "rtc-worker-page/token";
const WORKER_KEY = "rtc-worker-page/worker";
const RELAY_KEY = "rtc-worker-page/relay";
const state = { identity: null, ws: null, registered: null, registrations: 0, iceServers: [], workers: [], session: null, worker: null, lastFile: null, lastJob: null };
/** A read-only view of the page's state, for people debugging in the console and for
 *  the browser tests: registration, the connection and the upload's figures. Never the
 *  identity (its sign() would let any script in the console sign as this browser) or
 *  anything that acts: copies and getters only. */
window.rtcPage = Object.freeze({
  get fingerprint() { return state.identity?.fingerprint ?? null; },
  get extractable() { return state.identity?.extractable ?? null; },
  get registered() { return state.registered ? structuredClone(state.registered) : null; },
  get registrations() { return state.registrations; },
  get session() {
    const s = state.session;
    if (!s) return null;
    const up = s.upload;
    return Object.freeze({
      pc: s.pc, // RTCPeerConnection: getStats() and the SDP show the path taken
      bufferedAmount: s.channel.bufferedAmount,
      upload: up && Object.freeze({ size: up.size, chunk: up.chunk, offset: up.offset, sent: up.sent, done: up.done }),
    });
  },
});

// ---------------------------------------------------------------------------- errors
function showError(code, detail = "", where = null) {
  addError($("errors"), code, P.describeError(code, detail));
  if (where) setStatus(where, P.describeError(code, detail), "bad");
}
function setStatus(id, text, kind = "") {
  const el = $(id);
  el.textContent = text;
  el.className = `status ${kind}`;
}
const mb = (bytes) => (bytes / 1e6).toFixed(1);
const short = (fp) => (fp ? `${fp.slice(0, 16)}…` : "anonymous");

// ------------------------------------------------------------------------- signaling
function wsUrl() {
  return `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/ws`;
}
/** Open the WebSocket and register with the browser identity (PROTOCOL.md 5.3). */
function connectSignaling(token) {
  state.ws?.close();
  const ws = new WebSocket(wsUrl());
  state.ws = ws;
  state.registered = null;
  const peerId = `web-${state.identity.fingerprint.slice(0, 16)}`;
  let tries = 0;
  setStatus("signaling-status", "Connecting…");
  document.body.dataset.state = "connecting";
  ws.onmessage = async (ev) => {
    let frame;
    try { frame = JSON.parse(ev.data); } catch { return showError("INVALID_JSON", "the signaling server sent something else than JSON"); }
    if (frame.type === "challenge") {
      state.nonce = P.b64decode(frame.nonce, 32);
      await register(ws, peerId, token);
    } else if (frame.type === "registered") {
      state.registered = frame;
      state.registrations += 1;
      state.iceServers = frame.ice_servers ?? [];
      state.onRegistered?.();
      setStatus("signaling-status", `Connected as ${frame.peer_id}.`, "ok");
      document.body.dataset.state = "registered";
      $("refresh-workers").disabled = false;
      ws.send(JSON.stringify({ type: "list_peers" }));
    } else if (frame.type === "peers") {
      state.workers = frame.peers.filter((p) => p.role === "worker");
      renderWorkers();
      const again = sessionStorage.getItem(WORKER_KEY);
      if (again && !state.session && !state.choosing && state.workers.some((w) => w.peer_id === again)) chooseWorker(again);
    } else if (frame.type === "answer") {
      state.onAnswer?.(frame);
    } else if (frame.type === "error") {
      if (frame.code === "PEER_ID_TAKEN" && tries++ < 5) { setTimeout(() => register(ws, peerId, token), 1000); return; }
      const where = frame.ref_type === "offer" ? "peer-status" : "signaling-status";
      showError(frame.code, frame.message, where);
      if (frame.ref_type === "offer") state.onAnswer?.(frame);
      if (frame.ref_type === "register") document.body.dataset.state = "refused";
    }
  };
  ws.onclose = (ev) => {
    if (state.ws !== ws) return;
    if (!state.registered && document.body.dataset.state !== "refused") showError("CONNECTION_FAILED", `signaling closed (${ev.code} ${ev.reason})`, "signaling-status");
    else if (state.registered) setStatus("signaling-status", "Signaling closed; the data channel (if any) stays open.", "bad");
  };
  ws.onerror = () => {};
}
async function register(ws, peerId, token) {
  const payload = P.registrationPayload(state.nonce, peerId, "client", state.identity.publicKey);
  const signature = await state.identity.sign(payload);
  ws.send(JSON.stringify({ type: "register", peer_id: peerId, role: "client", token, metadata: { agent: "browser" },
    public_key: P.b64encode(state.identity.publicKey), signature: P.b64encode(signature) }));
}

function renderWorkers() {
  const ul = $("workers");
  ul.replaceChildren();
  if (!state.workers.length) { ul.innerHTML = '<li class="muted">No worker is connected.</li>'; return; }
  for (const w of state.workers) {
    const li = document.createElement("li");
    li.className = "worker";
    li.dataset.peerId = w.peer_id;
    const pinned = pinnedFor(w.peer_id);
    const shared = w.metadata?.shared_storage === true;
    const trust = !pinned ? ["new", ""] : pinned === w.fingerprint ? ["pinned", "ok"] : ["KEY CHANGED", "bad"];
    const head = document.createElement("div");
    head.innerHTML = `<span class="name"></span><span class="badge ${shared ? "ok" : ""}">${shared ? "shared storage" : "no shared storage"}</span><span class="badge ${trust[1]}">${trust[0]}</span>`;
    head.querySelector(".name").textContent = w.peer_id;
    const fp = document.createElement("code");
    fp.className = "fingerprint";
    fp.textContent = w.fingerprint ?? "";
    const pick = document.createElement("button");
    pick.type = "button";
    pick.textContent = state.worker === w.peer_id ? "Chosen" : "Use this worker";
    pick.className = "secondary pick";
    pick.onclick = () => chooseWorker(w.peer_id);
    if (state.worker === w.peer_id) li.classList.add("chosen");
    li.dataset.shared = String(shared);
    li.append(head, fp, pick);
    ul.append(li);
  }
}

// ------------------------------------------------------------------------ WebRTC offer
function gathered(pc, timeoutMs = 15000) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const t = setTimeout(resolve, timeoutMs);
    pc.addEventListener("icegatheringstatechange", () => { if (pc.iceGatheringState === "complete") { clearTimeout(t); resolve(); } });
  });
}
const fail = (code, detail) => new P.ProtocolError(code, detail, false);

/** Unix seconds at which the first TURN credential among `servers` expires: its username
 *  is `{expiry}:{peer_id}` (TURN REST convention, PROTOCOL.md 5.4); Infinity without one. */
function credentialsExpireAt(servers) {
  const stamps = servers.map((s) => String(s.username ?? "").split(":")).filter((p) => p.length > 1 && /^\d+$/.test(p[0]));
  return stamps.length ? Math.min(...stamps.map((p) => Number(p[0]))) : Infinity;
}
/** Register again when the TURN credentials expire within 60 s, as the Python client does:
 *  coturn refuses an expired credential, so a tab left open for a day still connects. */
async function freshCredentials() {
  if (Date.now() / 1000 + 60 < credentialsExpireAt(state.iceServers)) return;
  setStatus("peer-status", "TURN credentials expired; registering again…");
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(fail("TIMEOUT", "signaling did not register this page again within 15 s")), 15000);
    state.onRegistered = () => { clearTimeout(timer); state.onRegistered = null; resolve(); };
    connectSignaling(sessionStorage.getItem(TOKEN_KEY) ?? "");
  });
}

async function chooseWorker(peerId) {
  if (state.choosing) return;
  state.choosing = true;
  try { await connectWorker(peerId); } finally { state.choosing = false; }
}
async function connectWorker(peerId) {
  state.session?.close();
  state.session = null;
  state.worker = peerId;
  sessionStorage.setItem(WORKER_KEY, peerId);
  renderWorkers();
  enable(false);
  document.body.dataset.state = "connecting";
  $("peer-status").dataset.state = "connecting";
  setStatus("peer-status", `Connecting to ${peerId}…`);
  try {
    await freshCredentials();
    state.session = await openSession(peerId);
    $("peer-status").dataset.state = "ready";
    document.body.dataset.state = "ready";
    enable(true);
    if (state.interrupted) $("resume-transfer").hidden = false;
  } catch (e) {
    $("peer-status").dataset.state = "failed";
    document.body.dataset.state = "registered";
    showError(e.code ?? "CONNECTION_FAILED", e.detail ?? String(e), "peer-status");
  }
}

async function openSession(peerId) {
  const relay = $("relay-only").checked;
  const servers = state.iceServers;
  if (relay && !servers.some((s) => [s.urls].flat().some((u) => /^turns?:/.test(u))))
    throw fail("NO_TURN_SERVER", "choose a signaling server with TURN, or untick relay only");
  const pc = new RTCPeerConnection({ iceServers: servers, iceTransportPolicy: relay ? "relay" : "all" });
  try {
    return await negotiate(pc, peerId, relay);
  } catch (e) {
    pc.close();
    throw e;
  }
}

/** Offer (after ICE gathering completed: aiortc does not trickle), answer, data channel
 *  open, handshake; returns the authenticated Session. */
async function negotiate(pc, peerId, relay) {
  const channel = pc.createDataChannel("jobs", { ordered: true });
  const opened = new Promise((resolve, reject) => {
    channel.onopen = resolve;
    const t = setTimeout(() => reject(fail("CONNECTION_FAILED", "the data channel did not open within 30 s")), 30000);
    channel.addEventListener("open", () => clearTimeout(t));
    pc.addEventListener("connectionstatechange", () => { if (pc.connectionState === "failed") reject(fail("CONNECTION_FAILED", "ICE failed")); });
  });
  opened.catch(() => {}); // awaited below; a failure before that is reported there
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc);
  const offerSdp = pc.localDescription.sdp;
  if (relay && !/^a=candidate:.* typ relay/m.test(offerSdp)) throw fail("NO_RELAY_CANDIDATE", "no relay candidate was gathered");
  const answered = new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(fail("CONNECTION_FAILED", "no answer within 20 s")), 20000);
    state.onAnswer = (f) => {
      if (f.type === "error") { clearTimeout(t); reject(fail(f.code, f.message)); }
      else if (f.from === peerId) { clearTimeout(t); resolve(f); }
    };
  });
  state.ws.send(JSON.stringify({ type: "offer", to: peerId, sdp: offerSdp }));
  const answer = await answered;
  await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
  await opened;
  setStatus("peer-status", `Channel open to ${peerId}; proving keys…`);
  const dtls = (which, sdp) => {
    try { return P.sdpDtlsFingerprint(sdp); } catch (e) { throw fail("AUTH_FAILED", `the ${which}: ${e.message}`); }
  };
  const session = new Session(channel, {
    identity: state.identity, pinned: pinnedFor(peerId), maxMessageSize: pc.sctp?.maxMessageSize,
    // The SDP texts as sent and received: Chromium's remoteDescription keeps only the
    // strongest a=fingerprint of the answer, and the transcript needs its sha-256.
    offerDtls: dtls("offer", offerSdp), answerDtls: dtls("answer", answer.sdp),
  }, ui);
  session.pc = pc;
  pc.addEventListener("connectionstatechange", () => { if (["failed", "closed"].includes(pc.connectionState)) session.close(); });
  const workerFp = await session.handshake();
  pin(peerId, workerFp);
  renderWorkers();
  setStatus("peer-status", `Connected to ${peerId}, key ${short(workerFp)} proven${relay ? " (relay only)" : ""}.`, "ok");
  return session;
}

// ------------------------------------------------------------------------------- UI
function enable(on) {
  for (const id of ["run-job", "file-input", "get-results"]) $(id).disabled = !on;
  if (!on) for (const id of ["cancel-job", "cancel-transfer", "run-on-file"]) $(id).disabled = true;
}
const STEP_TEXT = { input: "Validate input", output: "Validate output", run: "Run the job" };
const ui = {
  step(name, stepState, text) {
    let li = $("steps").querySelector(`[data-step=${name}]`);
    if (!li) { li = document.createElement("li"); li.dataset.step = name; $("steps").append(li); }
    li.dataset.state = stepState;
    li.textContent = `${STEP_TEXT[name]}: ${text}`;
    $("cancel-job").disabled = !(name === "run" && stepState === "active");
  },
  job(msg) {
    if (msg.kind === "JobLog") appendLine($("job-log"), msg.line);
    else if (msg.kind === "JobMetrics")
      $("job-metrics").textContent = `validation ${msg.validation_ms} ms · file access ${msg.file_access_ms} ms · run ${msg.run_s} s · total ${msg.total_s} s`;
    else if (msg.kind === "JobComplete") {
      state.lastJob = msg.job_id;
      $("results-job").value = msg.job_id;
      setStatus("job-complete", `JOB_COMPLETE ${msg.job_id}: ${msg.file_count} files, ${msg.total_mb.toFixed(2)} MB in ${msg.output_path}`, "ok");
    } else if (msg.kind === "JobFailed") setStatus("job-complete", `JOB_FAILED ${msg.job_id}: ${msg.reason}`, "bad");
    else if (msg.kind === "PathError") showError("PATH_ERROR", msg.reason);
    else if (msg.kind === "ResultsStored") setStatus("results-status", `Results stored on the storage service at ${msg.download_path}.`, "ok");
  },
  transfer(t) {
    const el = $("transfer-status");
    el.dataset.phase = t.phase;
    if (t.size !== undefined) $("transfer-progress").value = t.size ? (t.done ?? 0) / t.size : 1;
    const speed = t.speed ? ` · ${mb(t.speed)} MB/s` : "";
    const eta = t.eta !== null && t.eta !== undefined && t.speed ? ` · ${Math.ceil(t.eta)} s left` : "";
    const text = {
      hashing: () => `Computing sha256… ${mb(t.done)} of ${mb(t.size)} MB`,
      offered: () => `Offered ${t.name} (${mb(t.size)} MB, sha256 ${short(t.sha256)})`,
      proving: () => "The worker asked for proof of possession; answering…",
      sending: () => `Sending ${mb(t.done)} of ${mb(t.size)} MB${t.offset ? ` (resumed at ${mb(t.offset)} MB)` : ""}${speed}${eta}`,
      verifying: () => "All bytes sent; the worker is checking the sha256…",
      received: () => `Stored on the worker, sha256 ${short(t.sha256)} verified.${t.offset ? ` Resumed at ${mb(t.offset)} MB.` : ""}`,
      exists: () => "The worker already holds this file: nothing was sent (FILE_EXISTS).",
      cancelled: () => `Cancelled at ${mb(t.done ?? 0)} MB; the worker keeps the part for a resume.`,
      interrupted: () => `Connection lost at ${mb(t.done ?? 0)} MB. Reconnect and choose the same file to resume.`,
      failed: () => P.describeError(t.code, t.detail),
    }[t.phase]();
    el.textContent = text;
    el.className = `status ${["received", "exists"].includes(t.phase) ? "ok" : ["failed", "interrupted"].includes(t.phase) ? "bad" : ""}`;
    $("cancel-transfer").disabled = !["offered", "proving", "sending"].includes(t.phase);
    if (["received", "exists"].includes(t.phase)) { $("run-on-file").disabled = false; state.interrupted = null; $("resume-transfer").hidden = true; }
    if (t.phase === "interrupted") state.interrupted = state.lastFile;
  },
  results(r) {
    const link = $("results-link");
    $("results-status").dataset.phase = r.phase;
    if (r.phase === "requested") { link.hidden = true; setStatus("results-status", `Asking for the results of ${r.jobId}…`); }
    else if (r.phase === "receiving") setStatus("results-status", `Receiving ${r.name}: ${mb(r.done)} of ${mb(r.size)} MB${r.speed ? ` · ${mb(r.speed)} MB/s` : ""}`);
    else if (r.phase === "verified") {
      if (link.href) URL.revokeObjectURL(link.href);
      link.href = URL.createObjectURL(r.blob);
      link.download = r.name;
      link.textContent = `Save ${r.name} (${mb(r.size)} MB)`;
      link.dataset.sha256 = r.sha256;
      link.hidden = false;
      setStatus("results-status", `${r.name}: sha256 ${r.sha256} verified.`, "ok");
    } else if (r.phase === "failed") showError(r.code, r.detail, "results-status");
  },
  error(code, detail) { showError(code, detail); },
  closed() {
    $("peer-status").dataset.state = "closed";
    document.body.dataset.state = state.registered ? "registered" : "closed";
    enable(false);
    setStatus("peer-status", P.describeError("CONNECTION_LOST", "choose the worker again to reconnect"), "bad");
  },
};

async function sendFile(file) {
  if (!state.session) return showError("NOT_CONNECTED", "choose a worker first");
  state.lastFile = file;
  $("resume-transfer").hidden = true;
  try { await state.session.sendFile(file); } catch (e) { showError(e.code ?? "INTERNAL_ERROR", e.detail ?? String(e), "transfer-status"); }
}

async function start() {
  try {
    state.identity = await loadIdentity();
  } catch (e) {
    document.body.dataset.state = "no-identity";
    return showError(e.code ?? "SECURE_CONTEXT_REQUIRED", e.message, "signaling-status");
  }
  $("my-fingerprint").textContent = state.identity.fingerprint;
  document.body.dataset.state = "idle";
  $("token").value = sessionStorage.getItem(TOKEN_KEY) ?? "";
  $("relay-only").checked = sessionStorage.getItem(RELAY_KEY) === "1";
  $("connect-form").onsubmit = (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value);
    sessionStorage.setItem(RELAY_KEY, $("relay-only").checked ? "1" : "0");
    connectSignaling($("token").value);
  };
  $("job-form").onsubmit = async (ev) => {
    ev.preventDefault();
    $("steps").replaceChildren(); clearLog($("job-log")); $("job-metrics").textContent = ""; setStatus("job-complete", "");
    try { await state.session.runSharedJob($("input-path").value.trim(), $("output-path").value.trim()); }
    catch (e) { showError(e.code ?? "INTERNAL_ERROR", e.detail ?? String(e)); }
  };
  $("cancel-job").onclick = () => { try { state.session.cancelJob(); } catch (e) { showError(e.code, e.detail); } };
  $("run-on-file").onclick = async () => {
    $("steps").replaceChildren(); clearLog($("job-log")); $("job-metrics").textContent = ""; setStatus("job-complete", "");
    $("run-on-file").disabled = true;
    try { await state.session.startJob(); } catch (e) { showError(e.code ?? "INTERNAL_ERROR", e.detail ?? String(e)); }
  };
  $("file-input").onchange = () => { const f = $("file-input").files[0]; if (f) sendFile(f); $("file-input").value = ""; };
  const zone = $("drop-zone");
  zone.ondragover = (ev) => { ev.preventDefault(); zone.classList.add("over"); };
  zone.ondragleave = () => zone.classList.remove("over");
  zone.ondrop = (ev) => { ev.preventDefault(); zone.classList.remove("over"); const f = ev.dataTransfer.files[0]; if (f && state.session) sendFile(f); };
  $("refresh-workers").onclick = () => state.ws?.send(JSON.stringify({ type: "list_peers" }));
  $("cancel-transfer").onclick = () => state.session?.cancelTransfer();
  $("resume-transfer").onclick = () => { if (state.interrupted) sendFile(state.interrupted); };
  $("results-form").onsubmit = async (ev) => {
    ev.preventDefault();
    try { await state.session.requestResults($("results-job").value.trim()); } catch (e) { showError(e.code ?? "INTERNAL_ERROR", e.detail ?? String(e), "results-status"); }
  };
  if ($("token").value || sessionStorage.getItem(WORKER_KEY)) connectSignaling($("token").value);
}
start();
