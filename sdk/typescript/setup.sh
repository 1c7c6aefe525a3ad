#!/bin/sh
# Builds the TypeScript signer: npm packages from the registry (cached in ~/.cache/rdx/npm, outside
# the checkout; node_modules/ and dist/ are ignored by git), then tsc. Does nothing when the
# sources and lock file are unchanged since the last build. Called by `make setup-ts` and the tests.
set -eu
cd "$(dirname "$0")"
command -v node >/dev/null 2>&1 || { echo "setup-ts: node is missing; install Node.js 20 or later (with npm) to build sdk/typescript" >&2; exit 1; }
command -v npm >/dev/null 2>&1 || { echo "setup-ts: npm is missing; install it with Node.js 20 or later" >&2; exit 1; }
major=$(node -p 'process.versions.node.split(".")[0]')
[ "$major" -ge 20 ] || { echo "setup-ts: node $(node --version) is too old; sdk/typescript needs Node.js 20 or later" >&2; exit 1; }
stamp=$(cat package.json package-lock.json tsconfig.json src/*.ts test/*.ts | node -e '
  const h = require("crypto").createHash("sha256"); process.stdin.on("data", (d) => h.update(d)).on("end", () => console.log(h.digest("hex")))')
[ -f dist/.built ] && [ "$(cat dist/.built)" = "$stamp" ] && exit 0
if [ ! -f node_modules/.package-lock.json ] || ! cmp -s package-lock.json node_modules/.rdx-lock; then
  npm ci --cache "${XDG_CACHE_HOME:-$HOME/.cache}/rdx/npm" --prefer-offline --no-audit --no-fund --loglevel=error
  cp package-lock.json node_modules/.rdx-lock
fi
rm -rf dist
node_modules/.bin/tsc -p .
echo "$stamp" > dist/.built
echo "setup-ts: built sdk/typescript (node $(node --version))"
