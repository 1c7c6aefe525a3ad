"""Record the light client's test vectors from a real 4-validator CometBFT testnet (rdx.testnet):
``python tests/unit/common/record_lightclient_vectors.py`` rewrites lightclient_testnet_vectors.json
beside it. Heights h, h+1 and h+5 with every validator signing, then, with validator 4 stopped,
a height its commit marks absent; and a ``prove=true`` query with the header after its height.
A Kafka broker of its own is started for the validators' relays (their readiness needs it)."""

from __future__ import annotations

import json
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from rdx import toolchain as tc  # noqa: E402
from rdx.components import KafkaBroker, free_port  # noqa: E402
from rdx.testnet import Testnet  # noqa: E402
from services.common.events import TOPICS  # noqa: E402

OUT = Path(__file__).with_name("lightclient_testnet_vectors.json")


def get(url: str, method: str, **params) -> dict:
    query = urllib.parse.urlencode(params)
    with urllib.request.urlopen(f"{url}/{method}?{query}", timeout=5) as resp:
        return json.loads(resp.read())["result"]


def latest(url: str) -> int:
    return int(get(url, "status")["sync_info"]["latest_block_height"])


def wait(url: str, height: int) -> None:
    deadline = time.monotonic() + 60
    while latest(url) < height:
        if time.monotonic() > deadline:
            raise SystemExit(f"height {height} never came")
        time.sleep(0.2)


def block(url: str, height: int) -> dict:
    wait(url, height)
    return {"commit": get(url, "commit", height=height),
            "validators": get(url, "validators", height=height, per_page=100)}


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="rdx-light-vectors."))
    kafka = KafkaBroker(root / "kafka", tc.installed(), port=free_port(), controller_port=free_port())
    kafka.prepare()
    kafka.start()
    kafka.create_topics(TOPICS)
    net = Testnet(root, kafka.bootstrap, validators=4, chain_id="rdx-light", timeout_commit="200ms")
    try:
        net.start()
        url = net.rpc_urls[0]
        wait(url, 3)
        h = latest(url)
        blocks = {h: block(url, h), h + 1: block(url, h + 1), h + 5: block(url, h + 5)}
        key = f"members/{net.association.account}"
        answer = get(url, "abci_query", path=json.dumps(f"/{key}"), prove="true")
        answered = int(answer["response"]["height"])
        blocks[answered + 1] = block(url, answered + 1)
        net.stop_validator(3)
        start = latest(url) + 2
        for height in range(start, start + 20):
            b = block(url, height)
            if any(s["block_id_flag"] == 1 for s in b["commit"]["signed_header"]["commit"]["signatures"]):
                blocks[height] = b
                break
        else:
            raise SystemExit("no commit with an absent validator")
        OUT.write_text(json.dumps({"chain_id": net.chain_id, "first": h, "absent": height,
                                   "blocks": {str(k): v for k, v in sorted(blocks.items())},
                                   "query": {"key": key, "answer": answer}}, indent=1) + "\n")
        print(f"wrote {OUT}: heights {sorted(blocks)}")
    finally:
        net.stop()
        kafka.stop()


if __name__ == "__main__":
    main()
