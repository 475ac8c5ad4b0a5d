// Errors of the rtc-worker protocol for the browser: the ProtocolError class and every
// code as readable text (PROTOCOL.md 3). Part of the protocol module: protocol.js
// re-exports all of it, so the page imports one module.

/** A refused frame or a misuse, with the code of its reply (PROTOCOL.md 3.2, 3.3).
 *  remote: the peer sent it (RemoteProtocolError); else we misused the protocol. */
export class ProtocolError extends Error {
  constructor(code, detail, remote = true) {
    super(`${code}: ${detail}`);
    this.code = code;
    this.detail = detail;
    this.remote = remote;
  }
}
export const ERROR_TEXT = Object.freeze({
  // 3.2 PROTOCOL_ERROR
  UNKNOWN_MESSAGE: "The other side does not know this message.",
  MALFORMED_FRAME: "A message did not follow the protocol's grammar.",
  FRAME_TOO_LARGE: "A message was larger than allowed.",
  PATH_TOO_LONG: "The path is too long (at most 4096 bytes).",
  TOO_MANY_FIELDS: "A message had too many fields.",
  INVALID_JOB_ID: "The job id may use only letters, digits, '.', '_' and '-' (1 to 64).",
  UNEXPECTED_MESSAGE: "That is not possible right now (wrong moment in the exchange).",
  UNEXPECTED_DATA: "File data arrived outside a transfer, or a chunk broke its bounds.",
  WORKER_BUSY: "The worker is running another job; try again later.",
  NO_SHARED_STORAGE: "This worker has no shared storage: send a file instead.",
  OVERLOADED: "The worker could not keep up and closed the connection.",
  UNKNOWN_JOB: "The worker has no results for this job (or they belong to someone else).",
  NO_STORAGE: "The worker has no storage service configured.",
  INTERNAL_ERROR: "The worker failed internally (see its log).",
  AUTH_REQUIRED: "The worker needs the identity handshake first.",
  AUTH_FAILED: "The identity handshake failed: a signature did not verify.",
  NOT_AUTHORIZED: "This worker does not accept this browser's identity (ask its operator to authorize your fingerprint).",
  WORKER_KEY_CHANGED: "The worker's key is not the one pinned for it: refused. Someone may be impersonating it; if its operator really changed its key, forget the pin.",
  // 3.3 TRANSFER_ERROR
  HASH_MISMATCH: "The file's sha256 did not match: it was corrupted on the way.",
  SIZE_MISMATCH: "More or fewer bytes arrived than announced.",
  FILE_TOO_LARGE: "The file is larger than the worker accepts.",
  DISK_FULL: "The worker's disk is full.",
  INVALID_NAME: "The file name is not a plain base name.",
  CANCELLED: "The transfer was cancelled; what arrived is kept for a resume.",
  QUOTA_EXCEEDED: "You hold too many unfinished transfers on this worker.",
  // 3.4 signaling
  INVALID_JSON: "The signaling server could not read a frame.",
  INVALID_FRAME: "The signaling server refused a malformed frame.",
  UNKNOWN_TYPE: "The signaling server does not know this frame.",
  NOT_REGISTERED: "Not registered with the signaling server yet.",
  UNAUTHORIZED: "Wrong or missing token: the signaling server refused the connection.",
  PEER_ID_TAKEN: "This browser is already connected in another tab.",
  ALREADY_REGISTERED: "Already registered.",
  PEER_NOT_FOUND: "That worker is not connected to the signaling server any more.",
  KEY_REQUIRED: "The signaling server needs a key to register.",
  BAD_SIGNATURE: "The signaling server did not accept this browser's signature.",
  PEER_ID_BOUND: "This peer id belongs to another key on the signaling server.",
  REGISTRATION_TIMEOUT: "Registration took too long; connect again.",
  TOO_MANY_CONNECTIONS: "The signaling server has too many connections; try again later.",
  SERVER_ERROR: "The signaling server could not complete the request; try again later.",
  // the page's own
  NO_TURN_SERVER: "Relay only was chosen, but the signaling server offers no TURN server.",
  NO_RELAY_CANDIDATE: "Relay only was chosen, but the TURN server gave no relay address (refused credentials, or unreachable).",
  CONNECTION_FAILED: "The WebRTC connection could not be established.",
  CONNECTION_LOST: "The connection to the worker was lost.",
  NOT_CONNECTED: "Choose a worker first.",
  TIMEOUT: "The worker did not answer in time.",
  RESULTS_TOO_LARGE: "The results are larger than this page holds in memory (512 MiB): refused before any byte was sent. Fetch them with rtc-client instead.",
  PATH_ERROR: "The worker refused the path.",
  SECURE_CONTEXT_REQUIRED: "This page needs a secure context (HTTPS or localhost) for WebCrypto.",
});
/** "CODE: readable text (detail)" for any code, known or not. */
export function describeError(code, detail = "") {
  const text = ERROR_TEXT[code] ?? "Error.";
  return detail ? `${code}: ${text} (${detail})` : `${code}: ${text}`;
}

