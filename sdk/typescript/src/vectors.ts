/** Checks tests/vectors/signing.json (docs/signing.md) against this package, vector by vector. */
import { canonical, CanonicalError, encodeTx, signatureBase, signingBytes, signRequest, Signer, signTx, txHash, unb64 } from "./index.js";

const utf8 = (s: string) => new TextEncoder().encode(s);
const same = (a: Uint8Array, b: Uint8Array) => Buffer.from(a).equals(Buffer.from(b));

/** Returns the number of failures; `log` gets one line per vector. */
export async function checkVectors(v: any, log: (line: string) => void): Promise<number> {
  let passed = 0, failed = 0;
  const check = async (name: string, fn: () => Promise<string | null> | string | null) => {
    let problem: string | null;
    try {
      problem = await fn();
    } catch (err) {
      problem = `threw ${err instanceof Error ? err.message : err}`;
    }
    if (problem === null) passed++;
    else failed++;
    log(`${problem === null ? "ok  " : "FAIL"} ${name}${problem === null ? "" : ": " + problem}`);
  };
  const signers: Record<string, Signer> = {};
  for (const [name, k] of Object.entries<any>(v.keys)) {
    signers[name] = await Signer.fromSeed(k.account, unb64(k.seed_b64));
    await check(`key ${name}`, () => (signers[name].publicKeyB64 === k.public_key_b64 ? null : `public key ${signers[name].publicKeyB64}`));
  }
  for (const c of v.canonical) {
    await check(`canonical: ${c.name}`, () => {
      const raw = canonical(c.value);
      return same(raw, unb64(c.canonical_b64)) && same(raw, utf8(c.canonical)) ? null : `got ${new TextDecoder().decode(raw)}`;
    });
  }
  for (const c of v.refused) {
    await check(`refused: ${c.name}`, () => {
      try {
        canonical(JSON.parse(c.value_json));
      } catch (err) {
        return err instanceof CanonicalError ? null : `wrong error ${err}`;
      }
      return "encoded a value the chain refuses";
    });
  }
  for (const t of v.txs) {
    await check(`tx: ${t.name}`, async () => {
      const signer = signers[t.key];
      if (t.unsigned.signer !== signer.account) return "signer is not the key's account";
      if (!same(signingBytes(t.unsigned), utf8(t.signing_bytes))) return `signing bytes ${new TextDecoder().decode(signingBytes(t.unsigned))}`;
      const tx = await signTx(signer, t.unsigned);
      if (tx.sig !== t.sig) return `sig ${tx.sig}`;
      const encoded = encodeTx(tx);
      if (!same(encoded, unb64(t.encoded_b64)) || !same(encoded, utf8(t.encoded))) return "encoded bytes differ";
      return txHash(encoded) === t.hash ? null : `hash ${txHash(encoded)}`;
    });
  }
  for (const r of v.requests) {
    await check(`request: ${r.name}`, async () => {
      const headers = await signRequest(signers[r.key], {
        method: r.method, url: r.url, body: utf8(r.body), created: r.created, nonce: r.nonce, label: r.label });
      for (const name of ["Content-Digest", "Signature-Input", "Signature"] as const) {
        if (headers[name] !== r.headers[name]) return `${name} ${headers[name]}`;
      }
      const params = headers["Signature-Input"].slice(r.label.length + 1);
      const base = signatureBase(r.method, r.url, headers["Content-Digest"], params);
      return base === r.signature_base ? null : `signature base ${JSON.stringify(base)}`;
    });
  }
  log(`${passed} passed, ${failed} failed`);
  return failed;
}
