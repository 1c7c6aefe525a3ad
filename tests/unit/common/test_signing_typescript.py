"""The TypeScript signer (sdk/typescript) reproduces every vector of tests/vectors/signing.json,
byte for byte, and notices a vector it does not reproduce."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import tssigner

VECTORS = Path(__file__).parents[2] / "vectors" / "signing.json"


def test_typescript_signer_reproduces_every_vector():
    done = tssigner.run("vectors", str(VECTORS))
    v = json.loads(VECTORS.read_text(encoding="utf-8"))
    count = len(v["keys"]) + sum(len(v[k]) for k in ("canonical", "refused", "txs", "requests"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == f"{count} passed, 0 failed"


def test_typescript_signer_fails_on_a_vector_it_does_not_reproduce(tmp_path):
    v = json.loads(VECTORS.read_text(encoding="utf-8"))
    v["txs"][0]["unsigned"]["payload"]["max_runs"] += 1  # the same sig, hash, bytes are now wrong
    v["requests"][0]["created"] += 1
    bad = tmp_path / "signing.json"
    bad.write_text(json.dumps(v, ensure_ascii=False), encoding="utf-8")
    done = tssigner.run("vectors", str(bad))
    assert done.returncode == 1
    failing = [line for line in done.stdout.splitlines() if line.startswith("FAIL")]
    assert [line.split(":")[0] for line in failing] == ["FAIL tx", "FAIL request"]


def test_typescript_package_tests_pass():
    tssigner.build()
    done = subprocess.run(["node", "--test", "dist/test/"], cwd=tssigner.PACKAGE, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "# fail 0" in done.stdout
