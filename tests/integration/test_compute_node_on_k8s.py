"""A real compute node process on the Kubernetes runner, end to end: a PSI job between two member
nodes on the real chain and Kafka, the provider's node started with ``RDX_RUNNER=kubernetes``
against a real kube-apiserver (test_ops_k8s.py's cluster), in a namespace enforcing the restricted
Pod Security Standard, with only the Role infra/components/k8s-runner renders: its credentials are
that service account's token in the kubeconfig named by ``KUBECONFIG`` (how ``api_client`` finds
them outside a pod), its worker listener on loopback (the default).

The kubelet and the job controller are played by test_compute_k8s_runner.py's ``Kubelet``: it
watches the namespace's Jobs, admits the pod through the API server, runs the pod's command
(``python -m services.compute.worker``) as a local process with the env of the Job and its Secret,
and writes the Job's status. The test checks the whole path: the job completes and settles on
chain, the consumer's opened result is the clear intersection, exactly one Job labelled for the
job id and the provider was created, every one of the provider's batches was answered in the pod,
the Job and its Secret are gone after the job, and the worker exited 0.
"""

from __future__ import annotations

import json
import math
import os
import re
import time

import pytest
import pytest_asyncio
from jobkit import PRICE, example_metadata, start_net
from test_compute import phones
from test_compute_k8s_runner import IMAGE, exists, kube  # noqa: F401 - the played kubelet fixture
from test_ops_k8s import BUILT, COMPUTE_TOKEN, admin, cluster  # noqa: F401 - fixtures
from test_ops_k8s import MEMBER_NS as NS  # the member's own namespace

from rdx.components import free_port
from services.compute import worker as wire
from services.compute.datasets import Datasets
from services.compute.k8s_runner import JOB_ID_LABEL, MEMBER_LABEL, label_value

pytestmark = [pytest.mark.timeout(240 if BUILT else 3600), pytest.mark.built_tools]  # test_ops_k8s's cluster

TAG = os.urandom(3).hex()
PROV = f"k8s-prov-{TAG}"
CONS = f"k8s-zcons-{TAG}"  # sorts after the provider: the provider dials it (jobkit's convention)
ASSET = f"{PROV}.subs"
BATCH = 256  # RDX_PSI_BATCH: many batches from small sets
CONSUMER_KEYS = phones(0, 2000)
PROVIDER_KEYS = phones(1200, 2300)


def _write(root) -> None:
    for member, dataset, keys, asset in ((CONS, "customers", CONSUMER_KEYS, None), (PROV, "subs", PROVIDER_KEYS, ASSET)):
        (root / member).mkdir(parents=True)
        (root / member / f"{dataset}.csv").write_text("phone\n" + "\n".join(keys) + "\n")
        spec = {"id": dataset, "format": "csv", "path": f"{dataset}.csv", "key": "phone"}
        if asset:  # the provider's dataset backs its listing; the consumer's is its own input
            spec["asset"] = asset
        (root / member / "datasets.json").write_text(json.dumps({"datasets": [spec]}))


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def net(chain, kafka, cluster, kube, tmp_path_factory):  # noqa: F811 - the fixtures imported above
    root = tmp_path_factory.mktemp("node-on-k8s")
    _write(root)
    kubeconfig = cluster.kubeconfig(root / "compute.kubeconfig", token=COMPUTE_TOKEN, user="compute")
    on_k8s = {"RDX_RUNNER": "kubernetes", "RDX_K8S_NAMESPACE": NS, "RDX_K8S_IMAGE": IMAGE,
              "RDX_K8S_MIN_BATCHES": "0", "RDX_K8S_WORKERS": "2", "RDX_K8S_WORKER_PORT": str(free_port()),
              "RDX_K8S_CONNECT_TIMEOUT_S": "60", "KUBECONFIG": str(kubeconfig)}
    n = await start_net(chain, kafka, root, consumer=CONS, members=[PROV, CONS], listings={}, psi_batch=BATCH,
                        node_env={PROV: on_k8s})
    try:  # jobkit lists for its own job types; a PSI listing here
        await n.tx(n.ids[PROV], "assets.List", {
            "id": ASSET, "level": "L3", "operations": ["psi"],
            "commitment": Datasets.from_path(root / PROV / "datasets.json").get("subs").summary()[0],
            "price": {"model": "fixed", "amount": PRICE}, "min_group_size": 1,
            "metadata": example_metadata(f"Subscribers {ASSET}")})
        yield n
    finally:
        await n.stop()


async def submit_psi(net, job: str) -> None:
    grant = f"g-{job}"
    await net.tx(net.ids[CONS], "access.Request", {
        "id": grant, "asset": ASSET, "operations": ["psi"], "purpose": "joint marketing",
        "expires_at": int(time.time()) + 86_400, "max_runs": 1})
    await net.tx(net.ids[PROV], "access.Approve", {"id": grant})
    await net.tx(net.ids[CONS], "jobs.Submit", {
        "id": job, "type": "psi", "inputs": [{"asset": ASSET, "grant": grant}],
        "params": {"dataset": "customers", "key": "phone"}, "max_price": PRICE + 50, "timeout_s": 120})


async def test_a_node_on_the_kubernetes_runner_runs_a_psi_job_s_batches_in_its_worker_pod(net, kube, admin):  # noqa: F811
    job = f"j-k8s-node-{TAG}"
    before = set(kube.jobs)
    started = time.monotonic()
    await submit_psi(net, job)
    record = await net.wait_chain(job, timeout=90)
    took = time.monotonic() - started

    # on chain: completed, both attested the same result hash, the escrow settled; the result is right
    await net.settled(job, record)
    assert net.result(job)["result"]["intersection"] == sorted(set(CONSUMER_KEYS) & set(PROVIDER_KEYS))

    # exactly one Job for this job id (no retry), made by the provider's node, seen by the watch
    mine = [name for name in kube.jobs if name not in before
            and kube.jobs[name]["labels"].get(JOB_ID_LABEL) == label_value(job)]
    assert len(mine) == 1, {name: kube.jobs[name]["labels"] for name in kube.jobs if name not in before}
    (name,) = mine
    assert kube.jobs[name]["labels"][MEMBER_LABEL] == PROV
    # gone once the job is done: the node deletes both before it attests
    assert not exists(admin, "job", name) and not exists(admin, "secret", name)

    state = kube.wait_gone(name)
    assert state["proc"].returncode == 0, state["output"]
    assert state["env"][wire.ENV_ADDRESS].startswith("127.0.0.1:")  # the node's listener, on loopback
    # every one of the provider's batches ran in the pod: its Y batches and the consumer's X batches
    answered = sum(int(n) for n in re.findall(r"answered (\d+) batches", state["output"]))
    expected = math.ceil(len(PROVIDER_KEYS) / BATCH) + math.ceil(len(CONSUMER_KEYS) / BATCH)
    assert answered == expected, state["output"]
    node_log = net.nodes[PROV].process.log_path.read_text()
    assert f"Kubernetes Job {name} deleted after {expected} batches" in node_log
    # neither the pod's output nor the node's log holds a key or the token
    token = state["env"][wire.ENV_TOKEN]
    for text in (state["output"], node_log):
        assert "+86-1" not in text and token not in text
    print(f"PSI {len(CONSUMER_KEYS)} x {len(PROVIDER_KEYS)}, {expected} batches in the worker pod: "
          f"submit to completed in {took:.1f}s")
