"""The Kubernetes runner without a cluster: the worker Job's manifest (what the restricted Pod
Security Standard and rdx's own rules demand, and that the token is never a literal value), the
Secret's, Job names, and how RDX_* settings choose and configure the runner.

The runner against a real kube-apiserver, with the test playing the kubelet:
tests/integration/test_compute_k8s_runner.py."""

from __future__ import annotations

import json
import re
import time
from types import SimpleNamespace

import pytest

from services.compute import worker as wire
from services.compute.jobtypes.base import JobSpec
from services.compute.k8s_runner import (JobClient, KubernetesConfig, KubernetesRunner, WorkerListener, _JobRun,
                                         job_name, secret_manifest)
from services.compute.runner import LocalRunner, make_runner
from services.compute.settings import ComputeSettings

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def runner(**config) -> KubernetesRunner:
    from kubernetes import client

    cfg = KubernetesConfig(namespace="rdx", image="registry.example.org/rdx/compute:1.2.3", member="acme",
                           resources={"requests": {"cpu": "4", "memory": "8Gi"}, "limits": {"cpu": "4", "memory": "8Gi"}},
                           worker_processes=4, **config)
    jobs = JobClient("rdx", client.ApiClient(), resources=cfg.resources, labels={"rdx.io/member": "acme"},
                     ttl_seconds_after_finished=600)
    listener = WorkerListener("10.1.2.3", 50052)
    listener.cert_pem = "-----BEGIN CERTIFICATE-----\nMIIB...\n-----END CERTIFICATE-----\n"
    return KubernetesRunner(cfg, LocalRunner(1), jobs, listener)


def spec(job: str = "J-2026/psi.0042", deadline_in: float = 3600) -> JobSpec:
    return JobSpec(job=job, type="psi", consumer="acme", inputs=(), participants=("acme", "bank"), nodes={},
                   params={}, max_price=0, deadline=int(time.time() + deadline_in))


def test_the_worker_job_is_restricted_sized_and_gets_its_token_from_the_secret():
    r = runner()
    run = _JobRun(r, spec())
    run.token = bytes(range(32))
    job = r.jobs.batch.api_client.sanitize_for_serialization(run.manifest())
    text = json.dumps(job)
    assert run.token.hex() not in text and "BEGIN CERTIFICATE" not in text  # only in the Secret

    assert job["metadata"]["name"] == run.name and DNS_LABEL.match(run.name) and len(run.name) <= 63
    assert job["metadata"]["labels"]["app.kubernetes.io/name"] == "compute-worker"  # infra/'s NetworkPolicy
    assert job["metadata"]["labels"]["rdx.io/member"] == "acme"
    assert job["metadata"]["annotations"]["rdx.io/job-id"] == "J-2026/psi.0042"
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["ttlSecondsAfterFinished"] == 600
    assert 3600 <= job["spec"]["activeDeadlineSeconds"] <= 3661  # the chain's deadline, plus a minute
    pod = job["spec"]["template"]["spec"]
    assert job["spec"]["template"]["metadata"]["labels"] == job["metadata"]["labels"]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
    assert pod["securityContext"] == {"fsGroup": 10001, "runAsGroup": 10001, "runAsNonRoot": True, "runAsUser": 10001,
                                      "seccompProfile": {"type": "RuntimeDefault"}}
    (container,) = pod["containers"]
    assert container["image"] == "registry.example.org/rdx/compute:1.2.3"
    assert container["command"] == ["python", "-m", "services.compute.worker"] and "args" not in container
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                            "readOnlyRootFilesystem": True, "runAsNonRoot": True}
    assert container["resources"] == {"limits": {"cpu": "4", "memory": "8Gi"}, "requests": {"cpu": "4", "memory": "8Gi"}}
    assert container["volumeMounts"] == [{"mountPath": "/tmp", "name": "tmp"}] and pod["volumes"][0]["emptyDir"] == {}
    env = {e["name"]: e for e in container["env"]}
    assert env[wire.ENV_ADDRESS]["value"] == "10.1.2.3:50052" and env[wire.ENV_PROCESSES]["value"] == "4"
    for name, key in ((wire.ENV_TOKEN, "token"), (wire.ENV_CERT, "cert")):
        assert "value" not in env[name]
        assert env[name]["valueFrom"] == {"secretKeyRef": {"name": run.name, "key": key}}


def test_each_run_of_a_job_gets_its_own_job_name():
    r = runner()
    names = {_JobRun(r, spec()).name for _ in range(20)}
    assert len(names) == 20
    for name in names:
        assert name.startswith("rdx-job-j-2026-psi-0042-") and DNS_LABEL.match(name) and len(name) <= 63
    long = job_name("J" * 200, suffix="abc123")
    assert len(long) <= 63 and long.endswith("-abc123") and DNS_LABEL.match(long)
    assert job_name("J" * 200) != job_name("J" * 199)
    assert job_name("plain-id") == "rdx-job-plain-id"


def test_the_secret_is_immutable_and_owned_by_its_job():
    from kubernetes import client

    owner = client.V1Job(metadata=client.V1ObjectMeta(name="rdx-job-x-abc", uid="1234-5678", labels={"a": "b"}))
    secret = client.ApiClient().sanitize_for_serialization(
        secret_manifest("rdx-job-x-abc", "rdx", {"token": "00ff", "cert": "PEM"}, owner, {"a": "b"}))
    assert secret["immutable"] is True and secret["type"] == "Opaque"
    assert secret["stringData"] == {"token": "00ff", "cert": "PEM"}
    (ref,) = secret["metadata"]["ownerReferences"]
    assert (ref["kind"], ref["name"], ref["uid"]) == ("Job", "rdx-job-x-abc", "1234-5678")


def test_settings_choose_and_configure_the_kubernetes_runner(tmp_path, monkeypatch):
    config = tmp_path / "kubeconfig"  # read, never dialled: building the runner contacts no server
    config.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "x", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "x", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "x", "user": "x"}}]}))
    monkeypatch.setenv("KUBECONFIG", str(config))
    env = {"RDX_RUNNER": "kubernetes", "RDX_MEMBER_ID": "acme", "RDX_K8S_NAMESPACE": "rdx-jobs",
           "RDX_K8S_IMAGE": "img:1", "RDX_K8S_CPU": "8", "RDX_K8S_MEMORY": "16Gi", "RDX_K8S_WORKERS": "8",
           "RDX_K8S_MIN_BATCHES": "0", "RDX_K8S_WORKER_HOST": "0.0.0.0", "RDX_K8S_WORKER_ADVERTISE": "10.0.0.7"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = ComputeSettings()
    r = make_runner(settings.runner, 2, settings)
    assert isinstance(r, KubernetesRunner) and r.name == "kubernetes"
    assert r.workers == 8 and r.local.workers == 2
    assert r.config.min_batches == 0 and r.config.connect_timeout_s == 300
    assert r.jobs.namespace == "rdx-jobs" and r.jobs.resources["limits"] == {"cpu": "8", "memory": "16Gi"}
    assert r.listener.host == "0.0.0.0" and r.listener.address == "10.0.0.7:50052"
    # listening on every address without saying which one pods dial is refused, as is no image
    monkeypatch.delenv("RDX_K8S_WORKER_ADVERTISE")
    with pytest.raises(SystemExit, match="RDX_K8S_WORKER_ADVERTISE"):
        make_runner("kubernetes", 2, ComputeSettings())
    monkeypatch.delenv("RDX_K8S_IMAGE")
    with pytest.raises(SystemExit, match="RDX_K8S_IMAGE"):
        make_runner("kubernetes", 2, ComputeSettings())
    # the defaults: the local runner; the worker listener on loopback
    for key in env:
        monkeypatch.delenv(key, raising=False)
    defaults = ComputeSettings()
    assert defaults.runner == "local" and defaults.k8s_worker_host == "127.0.0.1"
    assert isinstance(make_runner(defaults.runner, 2, defaults), LocalRunner)
    with pytest.raises(ValueError, match="unknown runner 'slurm'"):
        make_runner("slurm", 2, settings)


def test_worker_frames_round_trip_and_refuse_oversized_ones():
    import socket

    a, b = socket.socketpair()
    with a, b:
        wire.send_frame(a, b"x" * 100_000)
        assert wire.recv_frame(b) == b"x" * 100_000
        a.sendall(wire.HEADER.pack(wire.MAX_FRAME + 1))
        with pytest.raises(ValueError, match="over the limit"):
            wire.recv_frame(b)
        a.close()
        with pytest.raises(EOFError):
            wire.recv_frame(b)
