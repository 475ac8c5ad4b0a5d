// The browser's identity and the workers it trusts.
//
// Identity: an Ed25519 key pair made with WebCrypto, non-extractable, kept in IndexedDB
// (the CryptoKeyPair is stored by structured clone; the private key never leaves the
// browser). Its fingerprint is the sha256 of the raw 32-byte public key, 64 hex digits,
// as protocol/identity.py. Known workers: peer id -> fingerprint in localStorage, pinned
// on first use and refused loudly when a worker proves another key (like the Python
// client's known_workers file and SSH's known_hosts).
import { fingerprint } from "./protocol.js";

const DB_NAME = "rtc-worker-page";
const STORE = "keys";
const KEY_ID = "identity";
const PINS_KEY = "rtc-worker-page/known-workers";

function openDb() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB_NAME, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(STORE);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}
function request(db, mode, run) {
  return new Promise((resolve, reject) => {
    const tx = db.transaction(STORE, mode);
    const req = run(tx.objectStore(STORE));
    tx.oncomplete = () => resolve(req.result);
    tx.onerror = () => reject(tx.error ?? req.error);
    tx.onabort = () => reject(tx.error ?? req.error);
  });
}

/** This browser's identity: {publicKey: Uint8Array(32), fingerprint, sign(bytes)}.
 *  Made on first use and kept in IndexedDB. Throws when WebCrypto is missing (not a
 *  secure context) or Ed25519 is unsupported. */
export async function loadIdentity() {
  if (!globalThis.isSecureContext || !crypto.subtle) {
    const e = new Error("WebCrypto needs a secure context: open the page over HTTPS or on localhost");
    e.code = "SECURE_CONTEXT_REQUIRED";
    throw e;
  }
  const db = await openDb();
  try {
    let pair = await request(db, "readonly", (s) => s.get(KEY_ID));
    if (!pair) {
      pair = await crypto.subtle.generateKey({ name: "Ed25519" }, false, ["sign", "verify"]);
      try {
        await request(db, "readwrite", (s) => s.add(pair, KEY_ID));
      } catch (e) {
        // Another tab stored its key first (add() of an existing key): use that one.
        if (e?.name !== "ConstraintError") throw e;
      }
      pair = await request(db, "readonly", (s) => s.get(KEY_ID));
    }
    const publicKey = new Uint8Array(await crypto.subtle.exportKey("raw", pair.publicKey));
    return {
      publicKey,
      fingerprint: fingerprint(publicKey),
      extractable: pair.privateKey.extractable,
      sign: async (payload) => new Uint8Array(await crypto.subtle.sign({ name: "Ed25519" }, pair.privateKey, payload)),
    };
  } finally {
    db.close();
  }
}

/** The pinned workers: {peer_id: fingerprint}. */
export function knownWorkers() {
  try { return JSON.parse(localStorage.getItem(PINS_KEY) ?? "{}") ?? {}; } catch { return {}; }
}
/** The fingerprint pinned for a worker, or null on first use. */
export const pinnedFor = (peerId) => knownWorkers()[peerId] ?? null;
/** Pin a worker's fingerprint on first use. Throws (WORKER_KEY_CHANGED) if another is pinned. */
export function pin(peerId, fp) {
  const pins = knownWorkers();
  if (pins[peerId] && pins[peerId] !== fp) {
    const e = new Error(`${peerId} is pinned to ${pins[peerId]}, not ${fp}`);
    e.code = "WORKER_KEY_CHANGED";
    throw e;
  }
  pins[peerId] = fp;
  localStorage.setItem(PINS_KEY, JSON.stringify(pins));
}
/** Forget a worker's pin (its operator really changed its key). */
export function forget(peerId) {
  const pins = knownWorkers();
  delete pins[peerId];
  localStorage.setItem(PINS_KEY, JSON.stringify(pins));
}
