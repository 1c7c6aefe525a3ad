"""``make bench-compute``: PSI between two compute nodes on the real components, against
openmined-psi on the same inputs in the same run (../shared/BENCH.md).

What runs: a Kafka broker, a CometBFT node with the consensus service, and two compute nodes
(``python -m services.compute``, RDX_WORKERS worker processes each), all on this machine. A
bank (consumer) and a telco (provider) each hold n phone numbers, a quarter of them shared.
Each round is a whole job through the chain: the bank submits a PSI job, both nodes load and
verify their datasets (the telco's against its listing's Merkle commitment), run ECDH-PSI
over the authenticated peer channel, attest, and the chain completes and settles it. The
bank's sealed result is fetched, opened and checked against the clear intersection.

The baseline, openmined-psi 2.0.6 (P-256, the C++ library's Python binding), runs the same
PSI (client and server in one process, as its own benchmarks do, with the RAW data structure:
the full doubly-encrypted set, as ours sends) on the same two lists, in a separate
interpreter: it pins protobuf 6.30.2 while rdx pins 7.x, so it lives in its own virtual
environment under ~/.cache/rdx/bench (made on first use with pip; later runs reuse it).
Rounds alternate rdx and baseline; medians are reported. Peak memory: the VmHWM of both
nodes' processes and their worker processes (fresh nodes per size), and the baseline's
ru_maxrss.

    python bench/compute.py [--sizes 100000,1000000] [--rounds 3] [--rounds-large 1] [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402
from rdx import toolchain as tc  # noqa: E402
from rdx.components import CometNode, KafkaBroker, ServiceProcess, free_port  # noqa: E402
from rdx.supervisor import genesis_app_state  # noqa: E402
from services.common.chain import ChainClient  # noqa: E402
from services.common.events import TOPICS  # noqa: E402
from services.common.identity import Identity  # noqa: E402
from services.compute import psi_kernel, results  # noqa: E402
from services.compute.datasets import Datasets  # noqa: E402

CHAIN_ID = "rdx-bench"
BASELINE = "openmined-psi==2.0.6"
BASELINE_PROTOBUF = "protobuf==6.30.2"
BASELINE_SCRIPT = r'''
import json, resource, sys, time
import private_set_intersection.python as psi
client_items = open(sys.argv[1]).read().split("\n")[1:-1]
server_items = open(sys.argv[2]).read().split("\n")[1:-1]
started = time.perf_counter()
client = psi.client.CreateWithNewKey(True)
server = psi.server.CreateWithNewKey(True)
setup = psi.ServerSetup()
setup.ParseFromString(server.CreateSetupMessage(1e-9, len(client_items), server_items, psi.DataStructure.RAW).SerializeToString())
request = psi.Request()
request.ParseFromString(client.CreateRequest(client_items).SerializeToString())
response = psi.Response()
response.ParseFromString(server.ProcessRequest(request).SerializeToString())
intersection = client.GetIntersection(setup, response)
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "intersection": len(intersection),
                  "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
'''


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def phones(start: int, n: int) -> list[str]:
    return [f"+86-1{i:010d}" for i in range(start, start + n)]


# -- the baseline's own environment ------------------------------------------------------------------

def baseline_python() -> Path | None:
    venv = Path.home() / ".cache" / "rdx" / "bench" / BASELINE.replace("==", "-")
    py = venv / "bin" / "python"
    if (venv / ".installed").exists():
        return py
    say(f"making {venv} for the baseline ({BASELINE}, {BASELINE_PROTOBUF}) ...")
    base = getattr(sys, "_base_executable", sys.executable)
    try:
        subprocess.run([base, "-m", "venv", str(venv)], check=True, capture_output=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", BASELINE,
                        BASELINE_PROTOBUF], check=True, capture_output=True, timeout=600)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        say(f"the baseline could not be installed ({exc}); it is reported as missing")
        shutil.rmtree(venv, ignore_errors=True)
        return None
    (venv / ".installed").touch()
    return py


def run_baseline(py: Path, script: Path, client_file: Path, server_file: Path) -> dict:
    out = subprocess.run([str(py), str(script), str(client_file), str(server_file)], capture_output=True,
                         text=True, check=True, timeout=7200)
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the exchange ------------------------------------------------------------------------------------

class Exchange:
    def __init__(self, root: Path, workers: int, batch: int):
        self.root, self.workers, self.batch = root, workers, batch
        self.toolchain = tc.installed()
        self.association = Identity.generate("association")
        self.kafka = KafkaBroker(root / "kafka", self.toolchain, port=free_port(), controller_port=free_port())
        abci = free_port()
        self.consensus = ServiceProcess("consensus", free_port(), {
            "RDX_KAFKA_BOOTSTRAP": self.kafka.bootstrap, "RDX_STATE_ROOT": str(root / "state"),
            "RDX_CHAIN_ID": CHAIN_ID, "RDX_ABCI_PORT": str(abci)}, root / "logs")
        self.comet = CometNode(root / "comet", self.toolchain, chain_id=CHAIN_ID, rpc_port=free_port(),
                               p2p_port=free_port(), abci_port=abci, timeout_commit="200ms",
                               app_state=genesis_app_state(self.association))
        self.members = {"bank": Identity.generate("bank"), "telco": Identity.generate("telco")}
        self.nodes_keys = {m: Identity.generate(f"{m}.node") for m in self.members}
        self.grpc = {m: free_port() for m in self.members}
        self.nodes: dict[str, ServiceProcess] = {}
        self.generation = 0

    def start(self) -> None:
        self.kafka.prepare()
        self.kafka.start()
        if hasattr(self.kafka, "create_topics"):
            self.kafka.create_topics(TOPICS)
        self.consensus.start()
        self.comet.prepare()
        self.comet.start()

    def start_nodes(self, n: int) -> None:
        """Fresh nodes that hold only the size-n datasets (so each size's peak memory is its own)."""
        self.generation += 1
        for member in self.members:
            key = self.root / "keys" / f"{member}.node.json"
            self.nodes_keys[member].save(key)
            self.nodes[member] = ServiceProcess("compute", free_port(), {
                "RDX_KAFKA_BOOTSTRAP": self.kafka.bootstrap, "RDX_COMETBFT_RPC": self.comet.rpc_url,
                "RDX_CHAIN_ID": CHAIN_ID, "RDX_STATE_ROOT": str(self.root / "state"), "RDX_MEMBER_ID": member,
                "RDX_NODE_KEY_FILE": str(key), "RDX_GRPC_PORT": str(self.grpc[member]),
                "RDX_DATASETS": str(self.root / "data" / member / f"n{n}.json"),
                "RDX_WORKERS": str(self.workers), "RDX_PSI_BATCH": str(self.batch), "RDX_LOG_LEVEL": "WARNING",
            }, self.root / "logs" / f"{member}-{self.generation}")
            self.nodes[member].start(timeout=120, wait=False)
        for node in self.nodes.values():
            node.wait_ready(120)
        # A node computes its datasets' commitments for /datasets when it starts: let that finish
        # first, so that it does not compete with the measured jobs.
        for member in self.members:
            deadline = time.monotonic() + 600
            while any(d["commitment"] is None and d["error"] is None for d in self.http(member, "/datasets")):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{member}'s node did not summarise its datasets")
                time.sleep(0.5)

    def stop_nodes(self) -> None:
        for node in self.nodes.values():
            node.stop()
        self.nodes = {}

    def stop(self) -> None:
        self.stop_nodes()
        self.comet.stop()
        self.consensus.stop()
        self.kafka.stop()

    def http(self, member: str, path: str) -> dict:
        with urllib.request.urlopen(f"{self.nodes[member].url}{path}", timeout=10) as resp:
            return json.loads(resp.read())

    def peak_rss_mib(self) -> dict[str, float]:
        """VmHWM of each node's process tree (the node and its worker processes), MiB."""
        out = {}
        for member, node in self.nodes.items():
            pids = _tree(node.process.pid)
            each = [round(_hwm_kib(p) / 1024) for p in pids]
            out[member] = sum(each)
            out[f"{member}_processes"] = each
        return out


def _tree(pid: int) -> list[int]:
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    for c in children:
        pids.extend(_tree(int(c)))
    return pids


def _hwm_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def write_data(root: Path, sizes: list[int]) -> dict[int, int]:
    """Per size: a bank CSV and a telco CSV of n numbers, a quarter shared; returns the intersection sizes."""
    expected = {}
    bank_cfg, telco_cfg = [], []
    for n in sizes:
        shared = n // 4
        bank, telco = phones(0, n), phones(n - shared, n)
        expected[n] = shared
        for member, items, cfg in (("bank", bank, bank_cfg), ("telco", telco, telco_cfg)):
            d = root / "data" / member
            d.mkdir(parents=True, exist_ok=True)
            (d / f"n{n}.csv").write_text("phone\n" + "\n".join(items) + "\n")
            entry = {"id": f"n{n}", "format": "csv", "path": f"n{n}.csv", "key": "phone"}
            if member == "telco":
                entry["asset"] = f"telco.n{n}"
            cfg.append(entry)
    for member, cfg in (("bank", bank_cfg), ("telco", telco_cfg)):
        for entry in cfg:
            (root / "data" / member / f"{entry['id']}.json").write_text(json.dumps({"datasets": [entry]}))
    return expected


async def setup_chain(x: Exchange, sizes: list[int], runs: int) -> None:
    async with ChainClient(x.comet.rpc_url, CHAIN_ID) as chain:
        for member, ident in x.members.items():
            await chain.submit(x.association, "members.Register", {
                "id": member, "name": member, "roles": ["consumer", "provider"], "public_key": ident.public_key,
                "node": {"public_key": x.nodes_keys[member].public_key, "endpoint": f"127.0.0.1:{x.grpc[member]}"}})
        await chain.submit(x.association, "bank.Deposit", {"to": "bank", "amount": 10**9, "reference": "bench"})

        try:
            from services.common.listing import example_metadata
        except ImportError:  # pragma: no cover
            def example_metadata(title, **_):
                return {"title": title}
        for n in sizes:
            commitment, _ = Datasets.from_path(x.root / "data" / "telco" / f"n{n}.json").get(f"n{n}").summary()
            await chain.submit(x.members["telco"], "assets.List", {
                "id": f"telco.n{n}", "level": "L3", "operations": ["psi", "psi_cardinality"], "commitment": commitment,
                "price": {"model": "fixed", "amount": 100}, "metadata": example_metadata(f"{n} subscribers")})
            await chain.submit(x.members["bank"], "access.Request", {
                "id": f"g-n{n}", "asset": f"telco.n{n}", "operations": ["psi"], "purpose": "benchmark",
                "expires_at": int(time.time()) + 86_400, "max_runs": runs})
            await chain.submit(x.members["telco"], "access.Approve", {"id": f"g-n{n}"})


async def run_ours(x: Exchange, n: int, job: str, expected: int) -> dict:
    async with ChainClient(x.comet.rpc_url, CHAIN_ID) as chain:
        started = time.time()
        await chain.submit(x.members["bank"], "jobs.Submit", {
            "id": job, "type": "psi", "inputs": [{"asset": f"telco.n{n}", "grant": f"g-n{n}"}],
            "params": {"dataset": f"n{n}", "key": "phone"}, "max_price": 1000, "timeout_s": 7200}, wait=False)
        while True:
            record = await chain.query(f"/jobs/{job}")
            if record and record["status"] != "running":
                break
            await asyncio.sleep(0.1)
        seconds = time.time() - started
    if record["status"] != "completed":
        raise RuntimeError(f"job {job} {record['status']}: {record.get('ended_reason')}")
    rows = {m: x.http(m, f"/jobs/{job}") for m in x.members}
    node_seconds = max(r["computed_at"] for r in rows.values()) - min(r["started_at"] for r in rows.values())
    for _ in range(100):  # the bank's node releases the result once it has seen JobCompleted
        try:
            body = x.http("bank", f"/jobs/{job}/result")
            break
        except urllib.error.HTTPError:
            await asyncio.sleep(0.1)
    opened = results.open_envelope(x.nodes_keys["bank"], body["envelope"])
    found = len(opened["result"]["intersection"])
    if found != expected:
        raise RuntimeError(f"job {job}: intersection {found}, expected {expected}")
    return {"job_s": seconds, "nodes_s": node_seconds}


def kernel_costs() -> dict[str, float]:
    keys = [f"+86-1{i:010d}".encode() for i in range(5000)]
    t = time.perf_counter()
    pts = psi_kernel.hash_to_curve(keys)
    t_hash = (time.perf_counter() - t) / len(keys) * 1e6
    blob = b"".join(pts)
    t = time.perf_counter()
    psi_kernel.mask_blob(psi_kernel.new_scalar(), blob)
    t_mask = (time.perf_counter() - t) / len(keys) * 1e6
    return {"hash_to_curve_us": round(t_hash, 2), "x25519_mask_us": round(t_mask, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of each system for sizes under 1M")
    ap.add_argument("--rounds-large", type=int, default=1, help="rounds for sizes of 1M and over")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="worker processes per node")
    ap.add_argument("--batch", type=int, default=16_384, help="RDX_PSI_BATCH of the nodes (their default)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "compute.json"))
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    rounds = {n: (args.rounds_large if n >= 1_000_000 else args.rounds) for n in sizes}
    load_before = os.getloadavg()
    py = baseline_python()
    root = Path(tempfile.mkdtemp(prefix="rdx-bench-compute-"))
    script = root / "baseline.py"
    script.write_text(BASELINE_SCRIPT)
    x = Exchange(root, args.workers, args.batch)
    metrics, notes = [], []
    costs = kernel_costs()
    try:
        say(f"writing datasets for sizes {sizes} ...")
        expected = write_data(root, sizes)
        say("starting Kafka, CometBFT and the consensus service ...")
        x.start()
        asyncio.run(setup_chain(x, sizes, max(rounds.values()) + 2))
        for n in sizes:
            say(f"n = {n}: starting two fresh compute nodes ({args.workers} workers each) ...")
            x.start_nodes(n)
            files = (root / "data" / "bank" / f"n{n}.csv", root / "data" / "telco" / f"n{n}.csv")
            ours, theirs = [], []
            if n < 1_000_000:  # warm-up: one job through every component, and the baseline once
                asyncio.run(run_ours(x, n, f"warm-n{n}", expected[n]))
                if py:
                    run_baseline(py, script, *files)
            for r in range(rounds[n]):
                result = asyncio.run(run_ours(x, n, f"job-n{n}-{r}", expected[n]))
                ours.append(result)
                say(f"  rdx round {r + 1}: job {result['job_s']:.2f}s (nodes {result['nodes_s']:.2f}s)")
                if py:
                    base = run_baseline(py, script, *files)
                    if base["intersection"] != expected[n]:
                        raise RuntimeError(f"baseline found {base['intersection']}, expected {expected[n]}")
                    theirs.append(base)
                    say(f"  openmined-psi round {r + 1}: {base['seconds']:.2f}s")
            peak = x.peak_rss_mib()
            x.stop_nodes()
            label = f"{n // 1_000_000}m" if n >= 1_000_000 else f"{n // 1000}k"
            job_s = statistics.median(o["job_s"] for o in ours)
            nodes_s = statistics.median(o["nodes_s"] for o in ours)
            base_s = statistics.median(t["seconds"] for t in theirs) if theirs else None
            base_mib = max(t["peak_rss_kib"] for t in theirs) / 1024 if theirs else None
            bar = "<= 1.0 (ratio: faster than openmined-psi); goal <= 0.333 (3x)"
            metrics.append(common.metric(f"psi_{label}_job_s", job_s, "s", baseline_name=f"openmined_psi_{label}_s",
                                         baseline_value=base_s, bar=bar,
                                         passed=(job_s / base_s <= 1.0) if base_s else None))
            metrics.append(common.metric(f"psi_{label}_nodes_s", nodes_s, "s", baseline_name=f"openmined_psi_{label}_s",
                                         baseline_value=base_s, bar=bar,
                                         passed=(nodes_s / base_s <= 1.0) if base_s else None))
            metrics.append(common.metric(f"psi_{label}_peak_rss_mib", peak["bank"] + peak["telco"], "MiB",
                                         baseline_name=f"openmined_psi_{label}_peak_rss_mib", baseline_value=base_mib))
            metrics.append(common.metric(f"psi_{label}_elements_per_s", 2 * n / job_s, "elements/s"))
            notes.append(f"n={n}: {rounds[n]} round(s) each; rdx job times {[round(o['job_s'], 2) for o in ours]}, "
                         f"openmined {[round(t['seconds'], 2) for t in theirs]}; peak RSS MiB by process (node first, "
                         f"then its workers): bank {peak['bank_processes']}, telco {peak['telco_processes']}")
    finally:
        x.stop()
    load_after = os.getloadavg()
    notes_text = (f"both nodes, Kafka, CometBFT and the baseline share this machine; {args.workers} worker "
                  f"processes per node, batches of {args.batch}; per element in-run: {costs}; load average before "
                  f"{load_before[0]:.2f}, after {load_after[0]:.2f} (others' work counts); "
                  f"*_job_s is submit to completed on chain (load + commitment check + PSI + attest + settle), "
                  f"*_nodes_s is from the first node starting to the last computing; openmined-psi runs "
                  f"client and server in one process on one core, DataStructure.RAW. " + " | ".join(notes))
    common.write("compute", metrics, notes_text, Path(args.out))
    say(f"wrote {args.out}")
    for m in metrics:
        say(f"  {m['name']}: {m['value']} {m['unit']} (baseline {m['baseline_value']}, ratio {m['ratio']})")
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
