import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { checkVectors } from "../src/vectors.js";
import { canonical, CanonicalError, compareCodePoints } from "../src/index.js";

// dist/test/vectors.test.js -> the repository's tests/vectors/signing.json
const FILE = fileURLToPath(new URL("../../../../tests/vectors/signing.json", import.meta.url));

test("every vector of tests/vectors/signing.json is reproduced", async () => {
  const lines: string[] = [];
  const v = JSON.parse(readFileSync(FILE, "utf8"));
  const failures = await checkVectors(v, (l) => lines.push(l));
  assert.equal(failures, 0, lines.filter((l) => l.startsWith("FAIL")).join("\n"));
  const count = Object.keys(v.keys).length + ["canonical", "refused", "txs", "requests"].reduce((n, k) => n + v[k].length, 0);
  assert.equal(lines.at(-1), `${count} passed, 0 failed`);
});

test("keys sort by code point: U+1F600 after U+FF61, though its first UTF-16 unit is smaller", () => {
  assert.ok(compareCodePoints("\u{1F600}", "\uFF61") > 0);
  assert.equal(new TextDecoder().decode(canonical({ "\u{1F600}": 1, "\uFF61": 2 })), '{"\uFF61":2,"\u{1F600}":1}');
});

test("what a JavaScript value can hold but a tx cannot is refused", () => {
  for (const bad of [Number.NaN, Infinity, 0.5, 2 ** 53, 2n ** 53n, undefined, () => 1, new Date(0)]) {
    assert.throws(() => canonical({ a: bad as any }), CanonicalError);
  }
  assert.equal(new TextDecoder().decode(canonical({ a: -0, b: 2n ** 53n - 1n })), '{"a":0,"b":9007199254740991}');
});
