"""Write the seed inputs of every fuzz target into tests/fuzz/corpus/<target>/ (idempotent):
a signed tx of every type from the mixed workload, every hostile class, and query paths.

    python -m tests.fuzz.seed
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from services.common.tx import Tx
from tests.fuzz.targets import ASSOCIATION, CHAIN, MEMBER, TYPES
from tests.hostile import hostile_query_paths, hostile_txs
from tests.workload import mixed_workload

CORPUS = Path(__file__).resolve().parent / "corpus"


def seeds() -> dict[str, list[bytes]]:
    steps = list(mixed_workload(ASSOCIATION, members=2, tag="s"))
    txs = [Tx.build(who, CHAIN, type_, 1, payload).encode() for who, type_, payload in steps]
    hostile = [raw for raw in hostile_txs(MEMBER, CHAIN, 2).values() if len(raw) < 16_384]  # not the 64 KiB one
    signed = [bytes([TYPES.index(type_) | (0x80 if who is ASSOCIATION else 0)]) + json.dumps(payload).encode()
              for who, type_, payload in steps]
    paths = ["/members/fuzz-member", "/accounts/association", "/members/", "/members/?limit=1",
             "/members/?after=members/a&limit=2", "/quote/s.a0/10", "/params", *hostile_query_paths("s.a0").values()]
    return {
        "tx_decode": txs + hostile,
        "check_tx": txs + hostile,
        "signed_check_tx": signed,
        "query": [p.encode("utf-8", "surrogatepass") for p in paths],
        "proposal": [b"\xff\x00".join(txs[:3]), b"\xff\x00".join(hostile[:4]), *hostile[:6]],
    }


def main() -> None:
    for target, inputs in seeds().items():
        folder = CORPUS / target
        folder.mkdir(parents=True, exist_ok=True)
        for data in inputs:
            if len(data) > 16_384:  # the long-path and oversize classes: trivial branches, big files
                continue
            (folder / f"seed-{hashlib.sha1(data).hexdigest()}").write_bytes(data)
        print(f"{target}: {len(inputs)} seeds")


if __name__ == "__main__":
    main()
