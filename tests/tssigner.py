"""The TypeScript signer (sdk/typescript) for the tests: built by its own setup script (a no-op
when nothing changed; `make test` runs it first as `setup-ts`), then run as `node dist/src/cli.js`."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sdk" / "typescript"
CLI = PACKAGE / "dist" / "src" / "cli.js"
_built = False


def build() -> None:
    global _built
    if not _built:
        if shutil.which("node") is None:
            raise RuntimeError("node is missing: the TypeScript signer's tests need Node.js 20+ (see sdk/typescript/setup.sh)")
        subprocess.run([str(PACKAGE / "setup.sh")], check=True, timeout=600)
        _built = True


def run(*args: str, stdin: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    build()
    return subprocess.run(["node", str(CLI), *args], input=json.dumps(stdin) if stdin is not None else None,
                          capture_output=True, text=True, timeout=timeout)


def call(command: str, stdin: dict) -> dict:
    done = run(command, stdin=stdin)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)
