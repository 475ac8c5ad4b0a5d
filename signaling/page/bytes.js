// Bytes helpers of the protocol module (re-exported by protocol.js): standard base64,
// hex, concatenation and sha256 of bytes.
import { Sha256 } from "./sha256.js";

const B64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
export function b64encode(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}
/** Standard base64 with padding that must give exactly `size` bytes; throws Error. */
export function b64decode(text, size) {
  if (!B64.test(text)) throw new Error("not base64");
  const bin = atob(text);
  if (bin.length !== size) throw new Error(`expected ${size} bytes, got ${bin.length}`);
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}
export const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
export const unhex = (text) => Uint8Array.from(text.match(/../g) ?? [], (h) => parseInt(h, 16));
export function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}
export const sha256hex = (bytes) => hex(new Sha256().update(bytes).digest());
