// The client's state tables of the rtc-worker protocol, mirrored from protocol/: the job
// session (protocol/job.py WORKER_TABLE, and CLIENT_TABLE derived from it the same way),
// which request a PROTOCOL_ERROR refuses (protocol/routes.py REQUEST_OF_CODE and
// protocol/_client_role.py), and the file sender (protocol/sender.py SENDER_TABLE).
// Part of the protocol module: protocol.js re-exports all of it. Keys are
// "STATE|event" (the job client's state is "WORKER_STATE|PENDING"); an event is a message
// kind (the Python class name) or an outcome; anything missing is refused with
// UNEXPECTED_MESSAGE. Source: PROTOCOL.md sections 4.1, 4.3 and 4.5.
import { ProtocolError } from "./errors.js";

// ------------------------------------------------------------- the job session (4.1)
/** protocol/job.py Outcome: what the worker's checks concluded; on the client side, what
 *  each reply stands for. */
export const OUTCOME = Object.freeze({
  INPUT_ACCEPTED: "input accepted",
  INPUT_REJECTED: "input rejected",
  FILE_ACCEPTED: "file accepted",
  OUTPUT_ACCEPTED: "output accepted",
  OUTPUT_REJECTED: "output rejected",
  JOB_RUNNING: "job running",
  START_REFUSED: "start refused",
  JOB_FINISHED: "job finished",
});
const O = OUTCOME;
const NOT_RUNNING = ["IDLE", "HAVE_INPUT", "HAVE_FILE", "HAVE_OUTPUT", "READY"];
const JOB_STATES = [...NOT_RUNNING, "RUNNING"];
const each = (states, event, to = null) => states.map((s) => [`${s}|${event}`, to ?? s]);
const moves = (outcome, pairs) => pairs.map(([s, to]) => [`${s}|${outcome}`, to]);

/** The worker's job table (protocol/job.py WORKER_TABLE): "STATE|event" -> next state. */
export const WORKER_JOB_TABLE = Object.freeze(Object.fromEntries([
  ...each(NOT_RUNNING, "JobId"),
  ...each(NOT_RUNNING, "SharedInputPath"),
  ...each(NOT_RUNNING, "SharedOutputPath"),
  ...each(JOB_STATES, "ResultsViaStorage"),
  ...moves(O.INPUT_ACCEPTED, [["IDLE", "HAVE_INPUT"], ["HAVE_INPUT", "HAVE_INPUT"], ["HAVE_FILE", "HAVE_INPUT"], ["HAVE_OUTPUT", "READY"], ["READY", "READY"]]),
  ...moves(O.FILE_ACCEPTED, [["IDLE", "HAVE_FILE"], ["HAVE_INPUT", "HAVE_FILE"], ["HAVE_FILE", "HAVE_FILE"], ["HAVE_OUTPUT", "READY"], ["READY", "READY"]]),
  ...moves(O.INPUT_REJECTED, [["IDLE", "IDLE"], ["HAVE_INPUT", "IDLE"], ["HAVE_FILE", "IDLE"], ["HAVE_OUTPUT", "HAVE_OUTPUT"], ["READY", "HAVE_OUTPUT"]]),
  ...moves(O.OUTPUT_ACCEPTED, [["IDLE", "HAVE_OUTPUT"], ["HAVE_INPUT", "READY"], ["HAVE_FILE", "READY"], ["HAVE_OUTPUT", "HAVE_OUTPUT"], ["READY", "READY"]]),
  ...moves(O.OUTPUT_REJECTED, [["IDLE", "IDLE"], ["HAVE_INPUT", "HAVE_INPUT"], ["HAVE_FILE", "HAVE_FILE"], ["HAVE_OUTPUT", "IDLE"], ["READY", "HAVE_INPUT"]]),
  ["READY|JobStart", "RUNNING"],
  ["HAVE_FILE|JobStart", "RUNNING"],
  ["RUNNING|JobCancel", "RUNNING"],
  [`RUNNING|${O.JOB_FINISHED}`, "IDLE"],
]));

/** The request a client waits an answer for (protocol/job.py Pending). */
const NONE = "-";
/** Messages the client sends that the job tables govern (protocol/job.py CLIENT_SENDS). */
export const CLIENT_SENDS = Object.freeze(["JobId", "SharedInputPath", "SharedOutputPath", "JobStart", "JobCancel", "ResultsViaStorage"]);

function deriveClientTable() {
  const table = {};
  const add = (s, pending, key, to, after) => { table[`${s}|${pending}|${key}`] = `${to}|${after}`; };
  for (const s of JOB_STATES) {
    const worker = Object.fromEntries(Object.entries(WORKER_JOB_TABLE)
      .filter(([k]) => k.startsWith(`${s}|`)).map(([k, v]) => [k.slice(s.length + 1), v]));
    for (const [message, wait] of [["SharedInputPath", "input"], ["SharedOutputPath", "output"]])
      if (message in worker) add(s, NONE, message, s, wait);
    for (const plain of ["JobId", "ResultsViaStorage"]) if (plain in worker) add(s, NONE, plain, s, NONE);
    for (const [reply, wait] of [[O.INPUT_ACCEPTED, "input"], [O.INPUT_REJECTED, "input"], [O.OUTPUT_ACCEPTED, "output"], [O.OUTPUT_REJECTED, "output"]])
      if (reply in worker) add(s, wait, reply, worker[reply], NONE);
    // A file may be held while a path is checked: both apply in the order they finish.
    if (O.FILE_ACCEPTED in worker) for (const wait of [NONE, "input", "output"]) add(s, wait, O.FILE_ACCEPTED, worker[O.FILE_ACCEPTED], wait);
    if ("JobStart" in worker) {
      const running = worker.JobStart;
      add(s, NONE, "JobStart", s, "start");
      add(s, "start", O.START_REFUSED, s, NONE);
      add(s, "start", O.JOB_RUNNING, running, NONE);
      add(s, "start", "JobCancel", s, "start");
      add(s, "start", O.JOB_FINISHED, WORKER_JOB_TABLE[`${running}|${O.JOB_FINISHED}`], NONE);
    }
    if ("JobCancel" in worker) {
      add(s, NONE, "JobCancel", s, NONE);
      add(s, NONE, O.JOB_RUNNING, s, NONE);
      add(s, NONE, O.JOB_FINISHED, worker[O.JOB_FINISHED], NONE);
    }
  }
  return Object.freeze(table);
}
/** The client's job table (protocol/job.py CLIENT_TABLE): "WORKER|PENDING|event" ->
 *  "WORKER|PENDING", derived from WORKER_JOB_TABLE as the Python one is. */
export const CLIENT_JOB_TABLE = deriveClientTable();

/** protocol/routes.py REQUEST_OF_CODE: a PROTOCOL_ERROR code -> the only request it can
 *  answer. Other codes answer the request the client waits for. */
export const REQUEST_OF_CODE = Object.freeze({ WORKER_BUSY: "start", NO_SHARED_STORAGE: "path", NO_STORAGE: "results_via_storage", UNKNOWN_JOB: "results" });
const REFUSED_REQUEST = Object.freeze({ input: O.INPUT_REJECTED, output: O.OUTPUT_REJECTED, start: O.START_REFUSED });

/** protocol/routes.py reply_key: the outcome a job reply stands for, given the request
 *  pending (PATH_VALIDATED::output is the output's). */
export function replyKey(msg, pending) {
  if (msg.kind === "PathValidated") return msg.which === "output" ? O.OUTPUT_ACCEPTED : O.INPUT_ACCEPTED;
  if (msg.kind === "PathError") return { input: O.INPUT_REJECTED, output: O.OUTPUT_REJECTED }[pending] ?? O.JOB_RUNNING;
  if (msg.kind === "JobLog" || msg.kind === "JobMetrics") return O.JOB_RUNNING;
  return O.JOB_FINISHED;
}

/** The client's view of the worker's job session (protocol/_client_role.py ClientSide). */
export class ClientJob {
  constructor() { this.worker = "IDLE"; this.pending = NONE; }
  toString() { return this.pending === NONE ? this.worker : `${this.worker} (awaiting ${this.pending})`; }
  /** Take `key` if the table allows it now; false (nothing changes) otherwise. */
  move(key) {
    const next = CLIENT_JOB_TABLE[`${this.worker}|${this.pending}|${key}`];
    if (!next) return false;
    [this.worker, this.pending] = next.split("|");
    return true;
  }
  /** Before sending a job message: throws ProtocolError (local) UNEXPECTED_MESSAGE when
   *  the worker would refuse it now (nothing is sent then). */
  send(kind) {
    if (!CLIENT_SENDS.includes(kind) || !this.move(kind))
      throw new ProtocolError("UNEXPECTED_MESSAGE", `a client may not send ${kind} now (the job session is ${this})`, false);
  }
  /** A job reply from the worker (RESULTS_STORED aside): returns the request it answers
   *  ("input", "output", "start" or "" for a running job's frames). Throws ProtocolError
   *  (remote) UNEXPECTED_MESSAGE when it answers nothing (nothing changes). */
  receive(msg) {
    const pending = this.pending;
    if (!this.move(replyKey(msg, pending)))
      throw new ProtocolError("UNEXPECTED_MESSAGE", `the worker sent ${msg.kind} while the job session is ${this}`);
    return pending === NONE ? "" : pending;
  }
  /** Which request a PROTOCOL_ERROR refuses (protocol/_client_role.py _refused):
   *  "input", "output", "start", "results", "results_via_storage", "file" or "" (none).
   *  resultsPending: a RESULTS_REQUEST awaits its FILE_META; fileOffered: our FILE_META
   *  awaits its answer. Moves the job session as the refusal does. */
  refusal(code, { resultsPending = false, fileOffered = false } = {}) {
    const pending = this.pending;
    let request = Object.hasOwn(REQUEST_OF_CODE, code) ? REQUEST_OF_CODE[code] : "";
    if (request === "path" || (!request && pending !== NONE)) request = ["input", "output", "start"].includes(pending) ? pending : "";
    if (!request) request = resultsPending ? "results" : fileOffered ? "file" : "";
    if ((Object.hasOwn(REFUSED_REQUEST, request) && !this.move(REFUSED_REQUEST[request])) || (request === "results" && !resultsPending)) return "";
    return request;
  }
}

// --------------------------------------------------- the sender machine (4.5, SENDER_TABLE)
const OPEN = ["AWAIT_READY", "PROVING", "PROVED", "SENDING", "AWAIT_RECEIVED"];
/** protocol/sender.py SENDER_TABLE (without the worker's PREPARING rows). */
export const SENDER_TABLE = Object.freeze({
  "IDLE|FileMeta": "AWAIT_READY",
  "AWAIT_READY|FileReady": "SENDING",
  "AWAIT_READY|FileExists": "IDLE",
  "AWAIT_READY|ProtocolErrorFrame": "IDLE",
  "AWAIT_READY|FileProofRequest": "PROVING",
  "PROVING|FileRanges": "PROVED",
  "PROVING|FileReady": "SENDING",
  "PROVED|FileReady": "SENDING",
  "PROVED|FileExists": "IDLE",
  "SENDING|FileProgress": "SENDING",
  "SENDING|EndOfFile": "AWAIT_RECEIVED",
  "AWAIT_RECEIVED|FileProgress": "AWAIT_RECEIVED",
  "AWAIT_RECEIVED|FileReceived": "IDLE",
  ...Object.fromEntries(OPEN.flatMap((s) => [[`${s}|TransferError`, "IDLE"], [`${s}|FileCancel`, "IDLE"], [`${s}|cancel`, "CANCELLED"]])),
  ...Object.fromEntries(["FileProofRequest", "FileReady", "FileExists", "FileProgress", "FileReceived"].map((k) => [`CANCELLED|${k}`, "CANCELLED"])),
  "CANCELLED|TransferError": "IDLE",
  "CANCELLED|FileCancel": "IDLE",
  "CANCELLED|give up": "IDLE",
});
/** The sending side's state (protocol/sender.py Sender). */
export class SenderMachine {
  constructor() { this.state = "IDLE"; }
  can(event) { return `${this.state}|${event}` in SENDER_TABLE; }
  /** The next state for `event`, without moving; throws ProtocolError (remote)
   *  UNEXPECTED_MESSAGE when the table has no such row. */
  next(event) {
    const next = SENDER_TABLE[`${this.state}|${event}`];
    if (!next) throw new ProtocolError("UNEXPECTED_MESSAGE", `can't handle ${event} when the sender is ${this.state}`);
    return next;
  }
  /** Move on `event`; returns the state before. Throws as next(). */
  step(event) {
    const before = this.state;
    this.state = this.next(event);
    return before;
  }
}
