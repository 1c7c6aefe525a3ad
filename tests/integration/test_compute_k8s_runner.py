"""The compute node's Kubernetes runner against a real kube-apiserver (the fixtures of
test_ops_k8s.py), with the RBAC infra/components/k8s-runner gives the node, in a namespace that
enforces the restricted Pod Security Standard.

There is no kubelet or job controller here, so the test plays them honestly (``Kubelet``): it
watches the namespace's Jobs through the API; for each new one it creates the pod from the Job's
template (the API server admits it or not, as it would the job controller's), resolves the
container's environment as the kubelet does (``secretKeyRef`` read from the Secret, waiting for it
to exist), runs the container's command as a local process (``python`` is this virtualenv's, the
image's PATH), and writes the Job's status as the job controller would: active while the process
runs, Complete or Failed when it exits. A deleted Job's process gets a grace period, then is
terminated, and its pod is deleted (the garbage collector's part).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from test_ops_k8s import BUILT, COMPUTE_TOKEN, admin, cluster, now, render_overlay  # noqa: F401 - fixtures
from test_ops_k8s import MEMBER_NS as NS  # the member's own namespace, where its node runs its Jobs

from services.compute import k8s_runner, psi_kernel
from services.compute import worker as wire
from services.compute.jobtypes import aggregation
from services.compute.jobtypes.base import JobContext, JobSpec, JobType, Outcome
from services.compute.k8s_runner import (JobClient, KubernetesConfig, KubernetesRunner, RunnerError, WorkerListener,
                                         api_client)
from services.compute.runner import LocalRunner

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "registry.example.org/rdx/compute:0.1.0-dev"
pytestmark = [pytest.mark.timeout(240 if BUILT else 3600), pytest.mark.built_tools]  # test_ops_k8s's cluster


# --------------------------------------------------------------------------------------------
# The kubelet and job controller, played


class Kubelet:
    def __init__(self, admin_client, home: Path):
        from kubernetes import client as k

        self.api = admin_client
        self.batch, self.core = k.BatchV1Api(admin_client), k.CoreV1Api(admin_client)
        self.home = home
        self.mode = "run"                     # run | fail | hold
        self.jobs: dict[str, dict] = {}       # Job name -> {"labels", "pod", "proc", "deleted", "env"}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        from kubernetes import watch

        while not self.stop.is_set():
            for event in watch.Watch().stream(self.batch.list_namespaced_job, NS, timeout_seconds=2):
                name = event["object"].metadata.name
                if event["type"] == "ADDED" and name not in self.jobs:
                    self.jobs[name] = {"proc": None, "deleted": False, "mode": self.mode,
                                       "labels": dict(event["object"].metadata.labels or {})}
                    threading.Thread(target=self._run, args=(event["object"],), daemon=True).start()
                elif event["type"] == "DELETED" and name in self.jobs:
                    self.jobs[name]["deleted"] = True
                    threading.Thread(target=self._delete, args=(name,), daemon=True).start()
                if self.stop.is_set():
                    return

    def _run(self, job) -> None:
        try:
            self._start(job)
        except Exception as exc:  # noqa: BLE001 - kept for the test's messages
            self.jobs[job.metadata.name]["error"] = repr(exc)
            raise

    def _start(self, job) -> None:
        name, state = job.metadata.name, self.jobs[job.metadata.name]
        if state["mode"] == "hold":  # unschedulable: nothing ever happens
            return
        if state["mode"] == "fail":  # e.g. its deadline passed before a node could take it
            self._status(name, failed=True, reason="DeadlineExceeded")
            return
        template = self.api.sanitize_for_serialization(job.spec.template)
        pod = f"{name}-{secrets.token_hex(3)}"
        self.core.create_namespaced_pod(NS, {  # the job controller's pod: admitted by the restricted PSS, or not
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod, "labels": {**template["metadata"]["labels"], "batch.kubernetes.io/job-name": name},
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name,
                                              "uid": job.metadata.uid, "controller": True}]},
            "spec": {**template["spec"], "nodeName": "node-1"}})
        state["pod"] = pod
        (container,) = template["spec"]["containers"]
        env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(self.home)}
        for var in container.get("env", []):
            if "value" in var:
                env[var["name"]] = var["value"]
            else:
                ref = var["valueFrom"]["secretKeyRef"]
                env[var["name"]] = self._secret(ref["name"], ref["key"])
        state["env"] = env
        argv = container.get("command", []) + container.get("args", [])
        argv[0] = shutil.which(argv[0], path=env["PATH"])
        self._status(name, active=True)
        proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)  # the container: one process group
        state["proc"] = proc
        state["output"] = proc.communicate()[0].decode(errors="replace")
        if not state["deleted"]:
            self._status(name, failed=proc.returncode != 0, reason="BackoffLimitExceeded")

    def _secret(self, name: str, key: str) -> str:
        """As the kubelet: the container waits (CreateContainerConfigError) until the Secret exists."""
        from kubernetes.client.exceptions import ApiException

        deadline = time.monotonic() + 15
        while True:
            try:
                return base64.b64decode(self.core.read_namespaced_secret(name, NS).data[key]).decode()
            except ApiException as exc:
                if exc.status != 404 or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _status(self, name: str, active: bool = False, failed: bool = False, reason: str = "") -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            if active:
                self.batch.patch_namespaced_job_status(name, NS, {"status": {"startTime": now(), "active": 1}})
                return
            self.batch.patch_namespaced_job_status(name, NS, {"status": {"startTime": now()}})
            if failed:
                body = {"active": 0, "failed": 1, "conditions": [
                    {"type": "FailureTarget", "status": "True", "reason": reason, "lastTransitionTime": now()},
                    {"type": "Failed", "status": "True", "reason": reason, "lastTransitionTime": now()}]}
            else:
                body = {"active": 0, "succeeded": 1, "completionTime": now(), "conditions": [
                    {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": now()},
                    {"type": "Complete", "status": "True", "lastTransitionTime": now()}]}
            self.batch.patch_namespaced_job_status(name, NS, {"status": body})
        except ApiException as exc:
            if exc.status != 404:  # deleted meanwhile: nothing to report
                raise

    def _delete(self, name: str) -> None:
        state = self.jobs[name]
        deadline = time.monotonic() + 3  # the grace period, then the container is killed
        while state.get("pod") and state["proc"] is None and time.monotonic() < deadline:
            time.sleep(0.05)
        proc = state["proc"]
        if proc is not None:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.terminate()  # SIGTERM to the container's main process, then SIGKILL to all of it
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    pass
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        if state.get("pod"):
            self.core.delete_namespaced_pod(state["pod"], NS, grace_period_seconds=0)

    def wait_gone(self, name: str, timeout: float = 15) -> dict:
        """The Job's process has ended (by itself, or killed after the Job was deleted)."""
        state = self.jobs[name]
        deadline = time.monotonic() + timeout
        while not (state["proc"] is not None and state["proc"].poll() is not None and "output" in state):
            assert time.monotonic() < deadline, f"the process of {name} is still running ({state.get('error')})"
            time.sleep(0.05)
        return state

    def close(self) -> None:
        self.stop.set()
        for state in self.jobs.values():
            if state["proc"] is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(state["proc"].pid, signal.SIGKILL)
        self.thread.join(5)


@pytest.fixture(scope="module")
def kube(cluster, admin, tmp_path_factory):  # noqa: F811 - the fixtures imported above
    """The namespace, the compute node's RBAC as infra/ renders it, and the played kubelet."""
    from kubernetes import client as k
    from kubernetes.dynamic import DynamicClient

    k.CoreV1Api(admin).create_namespace({"metadata": {"name": NS, "labels": {
        "pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"}}})
    dynamic = DynamicClient(admin)
    rbac = [o for o in render_overlay("dev-site-example") if o["kind"] in ("ServiceAccount", "Role", "RoleBinding")
            and o["metadata"]["name"] in ("compute-example", "compute-jobs-example")]
    assert sorted(o["kind"] for o in rbac) == ["Role", "RoleBinding", "ServiceAccount"]
    for obj in rbac:
        dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"]).create(body=obj, namespace=NS)
    kubelet = Kubelet(admin, tmp_path_factory.mktemp("kubelet"))
    yield kubelet
    kubelet.close()


@pytest.fixture(scope="module")
def node_api(cluster):  # noqa: F811
    """The compute node's own client: its service account's token, so only infra/'s Role."""
    client = api_client(cluster.kubeconfig(cluster.home / "compute.kubeconfig", token=COMPUTE_TOKEN, user="compute"))
    yield client
    client.close()


def make_runner(node_api, **config) -> KubernetesRunner:
    options = {"worker_processes": 2, "min_batches": 0, "connect_timeout_s": 60.0, "poll_s": 0.3, **config}
    cfg = KubernetesConfig(namespace=NS, image=IMAGE, member="example",
                           resources={"requests": {"cpu": "2", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "1Gi"}},
                           **options)
    jobs = JobClient(NS, node_api, resources=cfg.resources, labels={"rdx.io/member": "example"},
                     ttl_seconds_after_finished=600)
    return KubernetesRunner(cfg, LocalRunner(1), jobs, WorkerListener("127.0.0.1", 0))


@pytest.fixture
async def runner(kube, node_api):
    made: list[KubernetesRunner] = []

    async def start(**config) -> KubernetesRunner:
        r = make_runner(node_api, **config)
        await r.start()
        made.append(r)
        return r

    yield start
    for r in made:
        await r.stop()


# --------------------------------------------------------------------------------------------
# A job type's batches


SCALAR = psi_kernel.new_scalar()
KEYS = [f"+86 138 {i:08d}".encode() for i in range(3000)]
BATCHES = [KEYS[i:i + 500] for i in range(0, len(KEYS), 500)]
AMOUNTS = np.array([12.5, -3.25, 1e6, 0.0, 7.125] * 40)


class Batches(JobType):
    """The heavy part of a PSI (hash and mask) and of an aggregation (fixed-point encoding)."""

    name = "psi"

    def __init__(self, during=None, extra=None):
        self.during, self.extra = during, extra
        self.masked: list[bytes] = []
        self.encoded = None

    async def run(self, ctx: JobContext) -> Outcome:
        self.masked = await asyncio.gather(*(ctx.compute(psi_kernel.hash_and_mask, SCALAR, b) for b in BATCHES))
        self.encoded = await ctx.compute(aggregation.encode, AMOUNTS)
        if self.extra is not None:
            await ctx.compute(*self.extra)
        if self.during is not None:
            await self.during()
        return Outcome(hashlib.sha256(b"".join(self.masked)).hexdigest(), len(KEYS))


def context(r: KubernetesRunner, job: str) -> JobContext:
    spec = JobSpec(job=job, type="psi", consumer="example", inputs=(), participants=("example", "other"), nodes={},
                   params={}, max_price=0, deadline=int(time.time() + 600))

    async def nothing(*_):
        raise AssertionError("not used")

    return JobContext(spec, "example", channel=nothing, load_input=nothing, load_local=nothing,
                      dataset_key=lambda _: None, commit_result=nothing, progress=lambda *_: None,
                      compute=r.compute, workers=r.workers)


def exists(admin_client, kind: str, name: str) -> bool:  # noqa: F811
    from kubernetes import client as k
    from kubernetes.client.exceptions import ApiException

    read = k.BatchV1Api(admin_client).read_namespaced_job if kind == "job" else k.CoreV1Api(admin_client).read_namespaced_secret
    try:
        read(name, NS)
        return True
    except ApiException as exc:
        assert exc.status == 404
        return False


def new_jobs(kube: Kubelet, before: set[str]) -> list[str]:
    return [n for n in kube.jobs if n not in before]


async def failed_run(r: KubernetesRunner, kube: Kubelet, mode: str, job: str, match: str) -> tuple[float, str]:
    """Run ``job`` with the kubelet in ``mode``, expecting a RunnerError matching ``match``; returns
    the seconds it took and the name of the one Job it made."""
    before = set(kube.jobs)
    kube.mode = mode
    try:
        started = time.monotonic()
        with pytest.raises(RunnerError, match=match):
            await r.run(Batches(), context(r, job))
        took = time.monotonic() - started
    finally:
        kube.mode = "run"
    (name,) = new_jobs(kube, before)
    return took, name


# --------------------------------------------------------------------------------------------
# The tests


async def test_a_jobs_batches_run_in_its_worker_pod_and_equal_the_local_result(runner, kube, admin, node_api):  # noqa: F811
    from kubernetes import client as k
    from kubernetes.client.exceptions import ApiException

    r = await runner()
    before = set(kube.jobs)
    seen = {}

    async def during():
        (name,) = new_jobs(kube, before)
        run = k8s_runner._current.get()
        seen["name"], seen["live"] = name, run.live
        seen["job"] = k.BatchV1Api(admin).read_namespaced_job(name, NS)
        seen["secret"] = exists(admin, "secret", name)
        seen["pod"] = k.CoreV1Api(admin).read_namespaced_pod(kube.jobs[name]["pod"], NS)
        with pytest.raises(ApiException) as denied:  # the node made the Secret but cannot read it back
            k.CoreV1Api(node_api).read_namespaced_secret(name, NS)
        seen["denied"] = denied.value.status

    job_type = Batches(during)
    started = time.monotonic()
    outcome = await r.run(job_type, context(r, "J-k8s-0001"))
    took = time.monotonic() - started

    # the very results the node's own kernel gives
    assert job_type.masked == [psi_kernel.hash_and_mask(SCALAR, b) for b in BATCHES]
    assert np.array_equal(job_type.encoded, aggregation.encode(AMOUNTS))
    assert outcome.records_used == len(KEYS)
    # while it ran: the Job (admitted pod and all), its Secret, two worker connections
    name = seen["name"]
    assert name.startswith("rdx-job-j-k8s-0001-") and seen["live"] == 2 and seen["secret"] and seen["denied"] == 403
    assert seen["job"].metadata.labels["rdx.io/member"] == "example"
    assert seen["pod"].spec.security_context.run_as_non_root
    state = kube.jobs[name]
    token = state["env"][wire.ENV_TOKEN]
    assert len(bytes.fromhex(token)) == 32
    assert token not in str(admin.sanitize_for_serialization(seen["job"]))
    # after: both deleted, and the worker ended by itself when the node closed its connections
    assert not exists(admin, "job", name) and not exists(admin, "secret", name)
    state = kube.wait_gone(name)
    assert state["proc"].returncode == 0, state["output"]
    assert "2 of 2 processes failed" not in state["output"] and token not in state["output"]
    print(f"3000 keys + 200 values through a worker pod in {took:.1f}s")


async def test_a_small_job_stays_on_the_node(runner, kube, admin):  # noqa: F811
    r = await runner(min_batches=100)
    before = set(kube.jobs)
    job_type = Batches()
    await r.run(job_type, context(r, "J-k8s-0002"))
    assert job_type.masked == [psi_kernel.hash_and_mask(SCALAR, b) for b in BATCHES]
    await asyncio.sleep(1)  # the watch would have seen a Job by now
    assert new_jobs(kube, before) == []
    from kubernetes import client as k

    assert not [j for j in k.BatchV1Api(admin).list_namespaced_job(NS).items if "j-k8s-0002" in j.metadata.name]


async def test_a_job_that_kubernetes_fails_fails_the_run_with_its_reason(runner, kube, admin):  # noqa: F811
    r = await runner(connect_timeout_s=60)
    took, name = await failed_run(r, kube, "fail", "J-k8s-0003",
                                  r"the Kubernetes Job rdx-job-j-k8s-0003-[-\w]+ failed \(DeadlineExceeded\) "
                                  r"before its worker connected")
    assert took < 15, f"{took:.1f}s: the failure was not noticed by polling the Job"
    assert not exists(admin, "job", name) and not exists(admin, "secret", name)


async def test_a_worker_that_never_dials_back_fails_the_run_after_the_timeout(runner, kube, admin):  # noqa: F811
    r = await runner(connect_timeout_s=3)
    took, name = await failed_run(r, kube, "hold", "J-k8s-0004",
                                  r"the worker of Kubernetes Job rdx-job-j-k8s-0004-[-\w]+ did not connect within 3s")
    assert 3 <= took < 10, took
    assert not exists(admin, "job", name) and not exists(admin, "secret", name)


async def test_cancelling_the_job_deletes_its_job_and_secret(runner, kube, admin):  # noqa: F811
    r = await runner()
    before = set(kube.jobs)
    task = asyncio.ensure_future(r.run(Batches(extra=(time.sleep, 120)), context(r, "J-k8s-0005")))
    deadline = time.monotonic() + 60
    while True:  # the batches are done and the long one is in the pod
        names = new_jobs(kube, before)
        if names and kube.jobs[names[0]].get("proc") is not None and exists(admin, "secret", names[0]):
            await asyncio.sleep(1.5)
            break
        assert time.monotonic() < deadline and not task.done(), "the worker never started"
        await asyncio.sleep(0.1)
    (name,) = names
    assert exists(admin, "job", name) and not task.done()
    task.cancel()
    started = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 5
    assert not exists(admin, "job", name) and not exists(admin, "secret", name)
    state = kube.wait_gone(name)  # stopped after the grace period: it was still sleeping
    assert state["proc"].returncode == 128 + signal.SIGTERM, state["output"]


async def test_the_listener_admits_only_a_live_token_over_tls(runner, kube):
    import socket
    import ssl

    r = await runner()
    address = r.listener.address
    with pytest.raises((EOFError, ConnectionError, ssl.SSLError)):  # an unknown token: closed, nothing read
        await asyncio.to_thread(wire.dial, address, secrets.token_bytes(32), r.listener.cert_pem, 2)
    other_cert = (await asyncio.to_thread(k8s_runner._self_signed))[0].decode()
    with pytest.raises(ssl.SSLCertVerificationError):  # a listener that is not the pinned one
        await asyncio.to_thread(wire.dial, address, secrets.token_bytes(32), other_cert, 2)
    host, port = address.rsplit(":", 1)

    def plain_tcp() -> bytes:  # no TLS: never an answer; a TLS alert, or the close
        with socket.create_connection((host, int(port)), timeout=10) as plain:
            plain.sendall(wire.HEADER.pack(32) + secrets.token_bytes(32))
            return plain.recv(100)

    reply = await asyncio.to_thread(plain_tcp)  # (the event loop serves the listener meanwhile)
    assert reply == b"" or reply[0] == 0x15, reply
