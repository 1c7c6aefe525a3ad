"""A job's latency by phase (issue 23, part 1), on the real chain and broker with two real compute
nodes that trust only the chain's genesis, as `rdx up` runs them: a PSI job from submission to
settlement, and what each node recorded of it — its marks in the journal (``/jobs/{id}``'s
``timings``) and the ``rdx_compute_job_phase_seconds`` histogram on its ``/metrics`` — checked
against each other, against the chain's own blocks and against the test's clock."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from jobkit import start_net
from services.compute.lifecycle import MARKS, PHASES

pytestmark = pytest.mark.integration

PROVIDER, CONSUMER = "lat-p", "lat-z"  # the consumer sorts last: the provider dials it
N, SHARED = 5000, 1200


def _phones(start: int, n: int) -> list[str]:
    return [f"+86-2{i:010d}" for i in range(start, start + n)]


def _phase_samples(url: str) -> dict[tuple[str, str], tuple[float, float]]:
    """(type, phase) -> (count, sum) of rdx_compute_job_phase_seconds on a node's /metrics."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[tuple[str, str], list[float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "rdx_compute_job_phase_seconds":
            continue
        for s in family.samples:
            key = (s.labels.get("type"), s.labels.get("phase"))
            if s.name.endswith("_count"):
                out.setdefault(key, [0.0, 0.0])[0] = s.value
            elif s.name.endswith("_sum"):
                out.setdefault(key, [0.0, 0.0])[1] = s.value
    return {k: (v[0], v[1]) for k, v in out.items()}


async def _committed_at(net, height: int) -> float:
    commit = await net.chain.rpc("commit", height=str(height))
    from services.common.lightclient import epoch_seconds

    times = sorted(epoch_seconds(s["timestamp"]) for s in commit["signed_header"]["commit"]["signatures"]
                   if s.get("block_id_flag") == 2)
    return times[len(times) // 2]


@pytest.mark.timeout(240)
async def test_a_psi_job_s_phases_are_observed_on_both_nodes_in_order(chain, kafka, tmp_path):
    consumer_set = _phones(0, N)
    provider_set = _phones(N - SHARED, N)
    for member, name, rows, asset in ((CONSUMER, "customers", consumer_set, None),
                                      (PROVIDER, "subscribers", provider_set, f"{PROVIDER}.subscribers")):
        folder = tmp_path / member
        folder.mkdir(parents=True)
        (folder / f"{name}.csv").write_text("phone\n" + "\n".join(rows) + "\n")
        entry = {"id": name, "format": "csv", "path": f"{name}.csv", "key": "phone", **({"asset": asset} if asset else {})}
        (folder / "datasets.json").write_text(json.dumps({"datasets": [entry]}))
    genesis = {"RDX_TRUSTED_GENESIS": str(chain.node.home / "config" / "genesis.json")}  # as `rdx up` does
    net = await start_net(chain, kafka, tmp_path, consumer=CONSUMER, members=[PROVIDER, CONSUMER],
                          listings={PROVIDER: ["subscribers"]}, ops=["psi"],
                          node_env={PROVIDER: genesis, CONSUMER: genesis})
    try:
        before = {m: _phase_samples(net.nodes[m].url) for m in net.nodes}
        job = f"lat-{net.tag}"
        sent = time.time()
        await net.submit(job, "psi", [f"{PROVIDER}.subscribers"], {"dataset": "customers", "key": "phone"})
        record = await net.wait_chain(job)
        assert record["status"] == "completed", record
        assert len(net.result(job)["result"]["intersection"]) == SHARED
        await net.settled(job, record)

        rows = {}
        for m in (PROVIDER, CONSUMER):  # every mark, the chain's authorising time included (read off the job's path)
            rows[m] = await net.wait_node(m, job, lambda r: set(r["timings"]) == set(MARKS), timeout=20)
        authorised = await _committed_at(net, record["submitted_height"])
        for m, row in rows.items():
            t = row["timings"]
            # in order: the chain's commit of the authorising block, then this node's clock mark by mark
            assert all(t[a] <= t[b] for a, b in zip(MARKS[:-2], MARKS[1:-1])), (m, t)
            assert t["settled"] >= t["attested"], (m, t)
            # the authorising block was committed after the submission left the test and before either
            # node heard of it (one machine, one clock)
            assert sent - 0.05 <= t["authorized"] <= t["received"], (m, sent, t)
            assert t["done"] <= time.time()
            # the journal's marks are the columns the node has always kept
            assert t["received"] == row["received_at"] and t["started"] == row["started_at"]
            assert t["computed"] == row["computed_at"]

        # both nodes took the authorising block's commit time: the block that holds jobs.Submit
        assert rows[PROVIDER]["timings"]["authorized"] == rows[CONSUMER]["timings"]["authorized"] == authorised
        # the provider's key goes out only after the lock, which follows both attestations: the
        # consumer (which opens its result after the release) completes after the provider attested
        assert rows[CONSUMER]["timings"]["completed"] >= rows[PROVIDER]["timings"]["attested"]
        assert rows[CONSUMER]["timings"]["done"] >= rows[CONSUMER]["timings"]["completed"]

        # each phase observed exactly once per node, with the seconds its marks give
        for m, row in rows.items():
            t, after = row["timings"], _phase_samples(net.nodes[m].url)
            for phase, first, then in PHASES:
                count0, sum0 = before[m].get(("psi", phase), (0.0, 0.0))
                count1, sum1 = after[("psi", phase)]
                assert count1 - count0 == 1, (m, phase)
                assert sum1 - sum0 == pytest.approx(max(0.0, t[then] - t[first]), abs=1e-6), (m, phase)
            # the phases on the job's path add up to the whole (settlement runs beside the result)
            parts = sum(max(0.0, t[b] - t[a]) for p, a, b in PHASES if p not in ("settlement", "total"))
            assert parts == pytest.approx(t["done"] - t["authorized"], abs=1e-6), (m, t)
        print({m: {p: round(max(0.0, r["timings"][b] - r["timings"][a]), 3) for p, a, b in PHASES}
               for m, r in rows.items()})
    finally:
        await net.stop()
