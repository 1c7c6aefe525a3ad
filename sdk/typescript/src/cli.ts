/**
 * rdx-sign: the TypeScript signer from the command line, for scripts and the tests.
 *   rdx-sign vectors <signing.json>   reproduce every vector; exit 1 on any difference
 *   rdx-sign tx       (stdin JSON)    {"seed_b64","account","chain_id","type","nonce","payload"} -> {"tx","encoded_b64","hash"}
 *   rdx-sign request  (stdin JSON)    {"seed_b64","account","method","url","body"} -> sends it signed, prints {"status","body"}
 */
import { readFileSync } from "node:fs";
import { checkVectors } from "./vectors.js";
import { b64, encodeTx, signRequest, Signer, signTx, txHash, unb64 } from "./index.js";

async function stdinJson(): Promise<any> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return JSON.parse(Buffer.concat(chunks).toString("utf8"));
}

async function main(argv: string[]): Promise<number> {
  const [command, arg] = argv;
  if (command === "vectors") {
    const failures = await checkVectors(JSON.parse(readFileSync(arg, "utf8")), (line) => console.log(line));
    return failures === 0 ? 0 : 1;
  }
  if (command === "tx") {
    const input = await stdinJson();
    const signer = await Signer.fromSeed(input.account, unb64(input.seed_b64));
    const tx = await signTx(signer, { chain_id: input.chain_id, type: input.type, nonce: input.nonce, payload: input.payload });
    const encoded = encodeTx(tx);
    console.log(JSON.stringify({ tx, encoded_b64: b64(encoded), hash: txHash(encoded) }));
    return 0;
  }
  if (command === "request") {
    const input = await stdinJson();
    const signer = await Signer.fromSeed(input.account, unb64(input.seed_b64));
    const body = new TextEncoder().encode(input.body ?? "");
    const headers: Record<string, string> = { ...(await signRequest(signer, { method: input.method, url: input.url, body })) };
    if (body.length) headers["content-type"] = "application/json";
    const resp = await fetch(input.url, { method: input.method, headers, body: body.length ? body : undefined });
    console.log(JSON.stringify({ status: resp.status, body: await resp.text() }));
    return 0;
  }
  console.error("usage: rdx-sign vectors <file> | tx | request   (see src/cli.ts)");
  return 2;
}

main(process.argv.slice(2)).then((code) => process.exit(code), (err) => {
  console.error(`rdx-sign: ${err instanceof Error ? err.message : err}`);
  process.exit(1);
});
