/**
 * rdx signing in TypeScript (docs/signing.md): the canonical JSON of a tx envelope, its Ed25519
 * signature, and RFC 9421 signed requests as the gateway verifies them. Ed25519 is @noble/ed25519;
 * SHA-256 and base64 are Node's own.
 */
import { createHash } from "node:crypto";
import * as ed from "@noble/ed25519";

/** Integers a tx may hold: those an IEEE double holds exactly. */
export const INT_MAX = Number.MAX_SAFE_INTEGER; // 2^53 - 1
export const MAX_DEPTH = 16;

export class CanonicalError extends Error {}

export type Json = null | boolean | number | bigint | string | Json[] | { [key: string]: Json };

/** Compares two strings by Unicode code point (what Python's sort does), not by UTF-16 unit. */
export function compareCodePoints(a: string, b: string): number {
  const x = Array.from(a), y = Array.from(b);
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    const d = x[i].codePointAt(0)! - y[i].codePointAt(0)!;
    if (d !== 0) return d;
  }
  return x.length - y.length;
}

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

function encodeString(s: string): string {
  if (LONE_SURROGATE.test(s)) throw new CanonicalError("text holds a lone surrogate, which UTF-8 cannot encode");
  // JSON.stringify escapes exactly what Python's json.dumps(ensure_ascii=False) escapes:
  // " \ \b \f \n \r \t, other controls below U+0020 as \u00xx; everything else as UTF-8.
  return JSON.stringify(s);
}

function encode(value: Json, depth: number): string {
  if (value === null) return "null";
  if (value === true) return "true";
  if (value === false) return "false";
  if (typeof value === "bigint") {
    if (value > BigInt(INT_MAX) || value < -BigInt(INT_MAX)) throw new CanonicalError("an integer is outside +-(2^53 - 1)");
    return value.toString();
  }
  if (typeof value === "number") {
    if (!Number.isInteger(value)) throw new CanonicalError("floats are not allowed in transactions; use integers");
    if (Math.abs(value) > INT_MAX) throw new CanonicalError("an integer is outside +-(2^53 - 1)");
    return Object.is(value, -0) ? "0" : String(value);
  }
  if (typeof value === "string") return encodeString(value);
  if (depth > MAX_DEPTH) throw new CanonicalError(`nested deeper than ${MAX_DEPTH} levels`);
  if (Array.isArray(value)) return "[" + value.map((v) => encode(v, depth + 1)).join(",") + "]";
  if (typeof value === "object" && Object.getPrototypeOf(value) === Object.prototype) {
    const keys = Object.keys(value).sort(compareCodePoints);
    return "{" + keys.map((k) => encodeString(k) + ":" + encode(value[k], depth + 1)).join(",") + "}";
  }
  throw new CanonicalError(`${typeof value} is not a JSON value`);
}

/** The canonical encoding: sorted keys, no whitespace, UTF-8; refuses what a tx could never hold. */
export function canonical(value: Json): Uint8Array {
  return new TextEncoder().encode(encode(value, 1));
}

export const b64 = (bytes: Uint8Array): string => Buffer.from(bytes).toString("base64");
export const unb64 = (text: string): Uint8Array => new Uint8Array(Buffer.from(text, "base64"));

export class Signer {
  private constructor(readonly account: string, private readonly seed: Uint8Array, readonly publicKey: Uint8Array) {}

  /** From a 32-byte Ed25519 seed (the `secret_key` of a Python key file, base64). */
  static async fromSeed(account: string, seed: Uint8Array): Promise<Signer> {
    if (seed.length !== 32) throw new Error("an Ed25519 seed is 32 bytes");
    return new Signer(account, seed, await ed.getPublicKeyAsync(seed));
  }

  get publicKeyB64(): string {
    return b64(this.publicKey);
  }

  async sign(message: Uint8Array): Promise<Uint8Array> {
    return ed.signAsync(message, this.seed);
  }
}

export interface UnsignedTx {
  chain_id: string;
  type: string;
  signer: string;
  nonce: number;
  payload: { [key: string]: Json };
}

export interface SignedTx extends UnsignedTx {
  sig: string;
}

const TYPE = /^[a-z]+\.[A-Za-z]+$/, ACCOUNT = /^[a-z0-9][a-z0-9.\-]*$/;

/** The envelope's own rules (services/common/tx.py's Tx model), checked before signing. */
export function checkEnvelope(tx: UnsignedTx): void {
  if (typeof tx.chain_id !== "string" || tx.chain_id.length < 1 || tx.chain_id.length > 50) throw new Error("chain_id: 1 to 50 characters");
  if (typeof tx.type !== "string" || tx.type.length > 64 || !TYPE.test(tx.type)) throw new Error("type: <module>.<Message>");
  if (typeof tx.signer !== "string" || tx.signer.length > 64 || !ACCOUNT.test(tx.signer)) throw new Error("signer: an account id");
  if (!Number.isSafeInteger(tx.nonce) || tx.nonce < 1) throw new Error("nonce: an integer >= 1");
  if (tx.payload === null || typeof tx.payload !== "object" || Array.isArray(tx.payload)) throw new Error("payload: an object");
}

/** The bytes the signature covers: the canonical envelope without `sig`. */
export function signingBytes(tx: UnsignedTx): Uint8Array {
  checkEnvelope(tx);
  const { chain_id, type, signer, nonce, payload } = tx;
  return canonical({ chain_id, type, signer, nonce, payload });
}

export async function signTx(signer: Signer, tx: Omit<UnsignedTx, "signer">): Promise<SignedTx> {
  const unsigned: UnsignedTx = { chain_id: tx.chain_id, type: tx.type, signer: signer.account, nonce: tx.nonce, payload: tx.payload };
  return { ...unsigned, sig: b64(await signer.sign(signingBytes(unsigned))) };
}

/** The bytes on chain (what CometBFT's broadcast_tx takes, base64 in its JSON-RPC). */
export function encodeTx(tx: SignedTx): Uint8Array {
  signingBytes(tx);
  const { chain_id, type, signer, nonce, payload, sig } = tx;
  return canonical({ chain_id, type, signer, nonce, payload, sig });
}

/** CometBFT's tx hash: upper-case hex SHA-256 of the encoded tx. */
export function txHash(encoded: Uint8Array): string {
  return createHash("sha256").update(encoded).digest("hex").toUpperCase();
}

// -- RFC 9421 signed requests ---------------------------------------------------------------------

export const COMPONENTS = ["@method", "@target-uri", "content-digest"] as const;

export interface RequestToSign {
  method: string;
  /** The absolute URL exactly as sent: the gateway rebuilds it from scheme, Host, path and query. */
  url: string;
  body: Uint8Array;
  /** Unix seconds; now by default. The gateway accepts [now - 300 s, now + 5 s]. */
  created?: number;
  /** Random by default; the gateway refuses a Signature it has already seen. */
  nonce?: string;
  label?: string;
}

export interface SignedHeaders {
  "Content-Digest": string;
  "Signature-Input": string;
  Signature: string;
}

/** RFC 9530 Content-Digest with SHA-256, over the body as sent (also when it is empty). */
export function contentDigest(body: Uint8Array): string {
  return `sha-256=:${createHash("sha256").update(body).digest("base64")}:`;
}

function sfString(value: string): string {
  if (!/^[\x20-\x7e]*$/.test(value)) throw new Error("a structured-field string is printable ASCII");
  return `"${value.replace(/\\/g, "\\\\").replace(/"/g, '\\"')}"`;
}

/** `@target-uri`: the URL as sent, an empty path written as "/". */
export function targetUri(url: string): string {
  const m = /^([A-Za-z][A-Za-z0-9+.\-]*):\/\/([^/?#]+)([^?#]*)(\?[^#]*)?$/.exec(url);
  if (!m) throw new Error(`not an absolute URL without fragment: ${url}`);
  return `${m[1]}://${m[2]}${m[3] || "/"}${m[4] ?? ""}`;
}

export function signatureParams(keyid: string, created: number, nonce: string): string {
  const ids = COMPONENTS.map(sfString).join(" ");
  return `(${ids});created=${created};keyid=${sfString(keyid)};alg="ed25519";nonce=${sfString(nonce)}`;
}

/** RFC 9421 section 2.5: one line per covered component, then @signature-params; ASCII. */
export function signatureBase(method: string, url: string, digest: string, params: string): string {
  return [
    `"@method": ${method.toUpperCase()}`,
    `"@target-uri": ${targetUri(url)}`,
    `"content-digest": ${digest}`,
    `"@signature-params": ${params}`,
  ].join("\n");
}

export async function signRequest(signer: Signer, req: RequestToSign): Promise<SignedHeaders> {
  const created = req.created ?? Math.floor(Date.now() / 1000);
  const nonce = req.nonce ?? Buffer.from(ed.etc.randomBytes(12)).toString("base64url");
  const label = req.label ?? "sig1";
  if (!/^[a-z*][a-z0-9_\-.*]*$/.test(label)) throw new Error("a signature label is a structured-field key");
  const digest = contentDigest(req.body);
  const params = signatureParams(signer.account, created, nonce);
  const base = signatureBase(req.method, req.url, digest, params);
  const signature = await signer.sign(new TextEncoder().encode(base));
  return { "Content-Digest": digest, "Signature-Input": `${label}=${params}`, Signature: `${label}=:${b64(signature)}:` };
}
