// The identity pieces of the protocol module (re-exported by protocol.js): the channel
// handshake's transcript and client machine (PROTOCOL.md 2.5, 4.7, protocol/identity.py,
// protocol/handshake.py), the signaling registration payload (5.3) and the proof of
// possession digest (2.3, protocol/proof.py).
import { Sha256 } from "./sha256.js";
import { ProtocolError } from "./errors.js";
import { concat, hex, sha256hex, unhex } from "./bytes.js";
import { encode } from "./protocol.js"; // used only inside functions: the import cycle is safe

const utf8 = new TextEncoder();
const malformed = (detail) => new ProtocolError("MALFORMED_FRAME", detail);
// ------------------------------------------------ identity pieces (protocol/identity.py)
const ascii = (s) => utf8.encode(s);
const u16 = (n) => Uint8Array.of(n >> 8, n & 255);
const fields = (...parts) => concat(...parts.flatMap((p) => [u16(p.length), p]));
export const TRANSCRIPT_CONTEXT = "rtc-worker/channel-handshake/v1";
export const REGISTER_CONTEXT = "rtc-worker/signaling-register/v1";

/** `sha-256 AB:CD:...`: algorithm lower case, hex upper case. Throws Error. */
export function normaliseDtls(value) {
  const parts = value.trim().split(/\s+/);
  if (parts.length !== 2 || !/^[\x00-\x7f]*$/.test(value)) throw new Error("a DTLS fingerprint is '<algorithm> <AB:CD:...>'");
  return `${parts[0].toLowerCase()} ${parts[1].toUpperCase()}`;
}
/** The one sha-256 `a=fingerprint` of an SDP (RFC 8122 section 5). Throws Error. */
export function sdpDtlsFingerprint(sdp) {
  const found = new Set();
  for (const line of sdp.split(/\r\n|\r|\n/))
    if (line.startsWith("a=fingerprint:")) {
      const v = normaliseDtls(line.slice("a=fingerprint:".length));
      if (v.startsWith("sha-256 ")) found.add(v);
    }
  if (found.size !== 1) throw new Error(`expected one sha-256 DTLS fingerprint in the SDP, found ${found.size}`);
  return [...found][0];
}
/** The handshake transcript (PROTOCOL.md 2.5): context || field(each). Byte arguments. */
export function transcript({ offer_dtls, answer_dtls, client_key, worker_key, client_nonce, worker_nonce }) {
  return concat(ascii(TRANSCRIPT_CONTEXT), fields(ascii(normaliseDtls(offer_dtls)), ascii(normaliseDtls(answer_dtls)),
    client_key, worker_key, client_nonce, worker_nonce));
}
/** The signaling registration payload (PROTOCOL.md 5.3). */
export function registrationPayload(nonce, peerId, role, publicKey) {
  return concat(ascii(REGISTER_CONTEXT), fields(nonce, utf8.encode(peerId), ascii(role), publicKey));
}
export const fingerprint = (publicKey) => sha256hex(publicKey);
const P = 2n ** 255n - 19n;
const SMALL_ORDER_Y = new Set([0n, 1n, P - 1n,
  0x05fc536d880238b13933c6d305acdfd5f098eff289f4c345b027b2c28f95e826n,
  0x7a03ac9277fdc74ec6cc392cfa53202a0f67100d760b3cba4fd84d3d706a17c7n]);
/** A key nobody holds alone: non-canonical or of small order (RFC 8032 5.1.3). */
export function isWeakPublicKey(key) {
  if (key.length !== 32) return true;
  let y = 0n;
  for (let i = 31; i >= 0; i--) y = (y << 8n) | BigInt(key[i]);
  y &= (1n << 255n) - 1n;
  return y >= P || SMALL_ORDER_Y.has(y);
}
/** Ed25519 verification through WebCrypto; never throws. */
export async function verify(publicKey, signature, payload) {
  if (isWeakPublicKey(publicKey)) return false;
  try {
    const key = await crypto.subtle.importKey("raw", publicKey, { name: "Ed25519" }, false, ["verify"]);
    return await crypto.subtle.verify({ name: "Ed25519" }, key, signature, payload);
  } catch { return false; }
}
const label = (role, t) => concat(ascii(role), t);

/** The client side of the channel handshake (PROTOCOL.md 4.7, CLIENT_AUTH_TABLE).
 *  signer: {publicKey: Uint8Array(32), sign(bytes): Promise<Uint8Array(64)>}.
 *  pinned: the fingerprint the worker must prove, or null (trust on first use). */
export const CLIENT_AUTH_TABLE = Object.freeze({
  "NEW|start": "HELLO_SENT",
  "HELLO_SENT|AuthChallenge": "HELLO_SENT",
  "HELLO_SENT|valid": "RESPONDED",
  "HELLO_SENT|bad signature": "FAILED",
  "HELLO_SENT|key changed": "FAILED",
  "HELLO_SENT|refused": "FAILED",
  "RESPONDED|AuthOk": "RESPONDED",
  "RESPONDED|valid": "AUTHENTICATED",
  "RESPONDED|wrong principal": "FAILED",
  "RESPONDED|refused": "FAILED",
});
export class ClientHandshake {
  constructor({ signer, offerDtls, answerDtls, pinned = null, nonce = null }) {
    Object.assign(this, { signer, offerDtls, answerDtls, pinned, state: "NEW", workerKey: null });
    this.nonce = nonce ?? crypto.getRandomValues(new Uint8Array(32));
  }
  _step(step) {
    const next = CLIENT_AUTH_TABLE[`${this.state}|${step}`];
    if (!next) throw new ProtocolError("UNEXPECTED_MESSAGE", `can't handle ${step} in handshake state ${this.state}`);
    this.state = next;
  }
  _fail(step, code, detail) {
    this._step(step);
    return { failed: { code, detail }, send: code === "UNEXPECTED_MESSAGE" ? [] : [encode({ kind: "ProtocolErrorFrame", code: "AUTH_FAILED", detail })] };
  }
  /** The AUTH_HELLO frame. */
  start() {
    this._step("start");
    return encode({ kind: "AuthHello", public_key: this.signer.publicKey, nonce: this.nonce });
  }
  /** Take one handshake message; returns {send: [frames], failed?: {code, detail}, done?: fingerprint}. */
  async receive(msg) {
    if (msg.kind === "ProtocolErrorFrame") return this._fail("refused", msg.code, msg.detail);
    if (msg.kind === "AuthChallenge") {
      this._step("AuthChallenge");
      const fp = fingerprint(msg.public_key);
      if (this.pinned && this.pinned !== fp)
        return this._fail("key changed", "WORKER_KEY_CHANGED", `pinned ${this.pinned}, the worker proved ${fp}`);
      this.transcript = transcript({ offer_dtls: this.offerDtls, answer_dtls: this.answerDtls, client_key: this.signer.publicKey,
        worker_key: msg.public_key, client_nonce: this.nonce, worker_nonce: msg.nonce });
      if (!(await verify(msg.public_key, msg.signature, label("worker", this.transcript))))
        return this._fail("bad signature", "AUTH_FAILED", "the worker's signature does not verify");
      this._step("valid");
      this.workerKey = msg.public_key;
      this.workerFingerprint = fp;
      const signature = await this.signer.sign(label("client", this.transcript));
      return { send: [encode({ kind: "AuthResponse", signature })] };
    }
    if (msg.kind === "AuthOk") {
      this._step("AuthOk");
      const mine = fingerprint(this.signer.publicKey);
      if (msg.fingerprint !== mine) return this._fail("wrong principal", "AUTH_FAILED", `AUTH_OK names ${msg.fingerprint}`);
      this._step("valid");
      return { send: [], done: this.workerFingerprint };
    }
    throw new ProtocolError("UNEXPECTED_MESSAGE", `${msg.kind} during the handshake`);
  }
}

// -------------------------------------------------------- proof of possession (2.3)
/** sha256(nonce || bytes of each range, in order), lower-case hex. readRange(offset,
 *  length) -> Promise<Uint8Array>. Throws ProtocolError MALFORMED_FRAME for a range
 *  beyond `size` (the sender then gives no answer). */
export async function proofDigest(request, size, readRange) {
  const h = new Sha256().update(unhex(request.nonce));
  for (const [offset, length] of request.ranges) {
    if (offset + length > size) throw malformed(`range ${offset}+${length} is beyond the file's ${size} bytes`);
    h.update(await readRange(offset, length));
  }
  return hex(h.digest());
}
