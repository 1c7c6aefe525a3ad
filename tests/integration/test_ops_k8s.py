"""`rdx ops` and the Kubernetes Job client against a real Kubernetes API server.

etcd and kube-apiserver are built from the Go module proxy on first use and cached
(rdx/k8s_toolchain.py); if they are not built yet, the first test builds them (several minutes,
once per version) or fails saying why: never a silent skip.

The rendered dev overlays are applied whole, the association's (infra/overlays/dev, namespace
rdx-dev) and member example's site (infra/overlays/dev-site-example, namespace rdx-dev-example): the Strimzi and Prometheus
Operator custom resources too, after installing minimal CRDs for them (their schemas are
infra/check.py's business). There is no kubelet, scheduler or controller manager, so the test
plays their parts as they would: it creates each workload's pods from its pod template (the
namespace enforces the restricted Pod Security Standard, so the API server checks every pod),
patches the pods' and the workloads' status subresources, and serves each "pod" on its own
address in a private network namespace (CometBFT's /status on the validators, /metrics on
every service), where the API server's pod proxy reaches it as it reaches real pods.

The commands run as a user who has only the RBAC of infra/rbac/ops.yaml, and the Job client as
the compute node's service account with only the Role of infra/components/k8s-runner (applied
with the member's overlay, in the member's namespace). The runner built on that client: tests/integration/test_compute_k8s_runner.py.
"""

from __future__ import annotations

import copy
import datetime
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from typer.testing import CliRunner

from rdx import k8s_toolchain
from rdx.ops import RESTARTED_AT, Ops, api_client, ops
from services.compute.k8s_runner import JobClient, KubeError, job_name
from rdx.toolchain import SetupError

ROOT = Path(__file__).resolve().parents[2]
NS = "rdx-dev"                 # the association's namespace
MEMBER_NS = "rdx-dev-example"  # member example's site: its compute node, keys and data
BUILT = k8s_toolchain.kube_apiserver_bin().exists() and k8s_toolchain.etcd_bin().exists()
# A cold build of kube-apiserver on a 2-core machine takes many minutes; after that, ~a minute.
pytestmark = [pytest.mark.timeout(180 if BUILT else 3600), pytest.mark.built_tools]

SRE_TOKEN = secrets.token_urlsafe(16)
COMPUTE_TOKEN = secrets.token_urlsafe(16)
COMPUTE_SA = f"system:serviceaccount:{MEMBER_NS}:compute-example"


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------------------------
# The cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    server = k8s_toolchain.LocalAPIServer(
        tmp_path_factory.mktemp("kube"), pod_network=True,
        tokens={SRE_TOKEN: ("alice", ["rdx-sre"]),
                COMPUTE_TOKEN: (COMPUTE_SA, ["system:serviceaccounts", f"system:serviceaccounts:{MEMBER_NS}"])})
    try:
        server.start()
    except SetupError as exc:
        pytest.fail(f"the Kubernetes API server for the ops tests could not be set up: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


def crd(group: str, version: str, kind: str, plural: str) -> dict:
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {"group": group, "scope": "Namespaced",
                 "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
                 "versions": [{"name": version, "served": True, "storage": True, "subresources": {"status": {}},
                               "schema": {"openAPIV3Schema": {"type": "object",
                                                              "x-kubernetes-preserve-unknown-fields": True}}}]},
    }


CRDS = [
    crd("kafka.strimzi.io", "v1beta2", "Kafka", "kafkas"),
    crd("kafka.strimzi.io", "v1beta2", "KafkaNodePool", "kafkanodepools"),
    crd("kafka.strimzi.io", "v1beta2", "KafkaTopic", "kafkatopics"),
    crd("kafka.strimzi.io", "v1beta2", "KafkaUser", "kafkausers"),
    crd("monitoring.coreos.com", "v1", "PrometheusRule", "prometheusrules"),
    crd("monitoring.coreos.com", "v1", "ServiceMonitor", "servicemonitors"),
]


def render_overlay(name: str) -> list[dict]:
    import subprocess
    import sys

    sys.path.insert(0, str(ROOT / "infra"))
    import check

    out = subprocess.run([str(check.ensure_kustomize()), "build", str(ROOT / "infra" / "overlays" / name)],
                         capture_output=True, text=True, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="module")
def admin(cluster):
    client = api_client(cluster.kubeconfig(cluster.home / "admin.kubeconfig"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def deployment(cluster, admin, tmp_path_factory):
    """The dev overlay applied, its pods running and ready, every pod answering as rdx would."""
    from kubernetes import client as k
    from kubernetes.dynamic import DynamicClient

    ext = k.ApiextensionsV1Api(admin)
    for body in CRDS:
        ext.create_custom_resource_definition(body)
    deadline = time.monotonic() + 30
    for body in CRDS:
        while not any(c.type == "Established" and c.status == "True"
                      for c in (ext.read_custom_resource_definition(body["metadata"]["name"]).status.conditions or [])):
            assert time.monotonic() < deadline, f"CRD {body['metadata']['name']} not established"
            time.sleep(0.2)
    dynamic = DynamicClient(admin)
    objects = render_overlay("dev") + render_overlay("dev-site-example")
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "StatefulSet", "Kafka", "PrometheusRule", "NetworkPolicy"} <= kinds
    for obj in sorted(objects, key=lambda o: o["kind"] != "Namespace"):
        resource = dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        resource.create(body=obj, namespace=obj["metadata"].get("namespace"))
    # Who may do what: the SRE group (infra/rbac/), in both namespaces (a member binds its own people in its
    # own); the compute node's service account came with the member's overlay.
    for namespace in (NS, MEMBER_NS):
        for obj in yaml.safe_load_all((ROOT / "infra" / "rbac" / "ops.yaml").read_text()):
            dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"]).create(body=obj, namespace=namespace)

    sim = Simulator(cluster, admin, objects)
    sim.start_all()
    yield sim
    sim.close()


# --------------------------------------------------------------------------------------------
# Kubelet, controllers and the pods' own endpoints, simulated


class PodHandler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        sim: Simulator = self.server.sim
        ip, port = self.server.server_address[:2]
        status, body, ctype = sim.respond(ip, port, self.path.split("?")[0])
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class Simulator:
    """Plays kubelet and controllers for the rdx workloads, and answers for the pods."""

    def __init__(self, cluster, admin, objects):
        from kubernetes import client as k

        self.cluster, self.netns = cluster, cluster.netns
        self.core, self.apps, self.batch = k.CoreV1Api(admin), k.AppsV1Api(admin), k.BatchV1Api(admin)
        self.objects = objects
        self.pods: dict[str, dict] = {}      # pod name -> {"ip", "workload", "component", "ready"}
        self.by_ip: dict[str, str] = {}
        self.height: dict[str, int] = {}     # validator pod -> chain height
        self.relay: dict[str, int] = {}      # validator pod -> relay position
        self.lag: dict[str, dict[str, int]] = {}
        self.rpc_down: set[str] = set()
        self.servers: dict[tuple[str, int], ThreadingHTTPServer] = {}
        self.next_ip = 0
        self.lock = threading.Lock()

    # -- the pods' endpoints -------------------------------------------------------------------

    def respond(self, ip: str, port: int, path: str) -> tuple[int, str, str]:
        pod = self.by_ip.get(ip)
        if pod is None:
            return 404, "no such pod", "text/plain"
        info = self.pods[pod]
        if info["component"] == "validator" and port == 26657 and path == "/status":
            if pod in self.rpc_down:
                return 503, "", "text/plain"
            return 200, cometbft_status(pod, self.height[pod]), "application/json"
        if path == "/metrics":
            registry = CollectorRegistry()
            service = "consensus" if info["component"] == "validator" else info["component"]
            Gauge("rdx_service_up", "1 while the service is ready", ["service"], registry=registry).labels(service).set(1)
            lag = Gauge("rdx_kafka_consumer_lag_events", "events in the topic not yet consumed", ["service", "topic"],
                        registry=registry)
            for topic, n in self.lag.get(pod, {}).items():
                lag.labels(service, topic).set(n)
            if info["component"] == "validator":
                Gauge("rdx_relay_published_height", "height of the last chain event acknowledged by Kafka",
                      registry=registry).set(self.relay[pod])
            return 200, generate_latest(registry).decode(), "text/plain; version=0.0.4"
        return 404, "not found", "text/plain"

    def listen(self, ip: str, port: int) -> None:
        if (ip, port) in self.servers:
            return
        server = self.netns.call(lambda: ThreadingHTTPServer((ip, port), PodHandler))
        server.sim = self
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.servers[(ip, port)] = server

    # -- kubelet -------------------------------------------------------------------------------

    def workload(self, kind: str, name: str) -> dict:
        return next(o for o in self.objects if o["kind"] == kind and o["metadata"]["name"] == name)

    def create_pod(self, kind: str, name: str, pod_name: str, template: dict | None = None) -> str:
        obj = self.workload(kind, name)
        template = copy.deepcopy(template or obj["spec"]["template"])
        spec = template["spec"]
        labels = dict(template["metadata"].get("labels", {}))
        if kind == "StatefulSet":
            labels["statefulset.kubernetes.io/pod-name"] = pod_name
            spec["hostname"], spec["subdomain"] = pod_name, obj["spec"]["serviceName"]
            spec.setdefault("volumes", []).extend(
                {"name": t["metadata"]["name"], "persistentVolumeClaim": {"claimName": f"{t['metadata']['name']}-{pod_name}"}}
                for t in obj["spec"].get("volumeClaimTemplates", []))
        spec["nodeName"] = "node-1"
        namespace = obj["metadata"]["namespace"]
        self.core.create_namespaced_pod(namespace, {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod_name, "labels": labels, "annotations": template["metadata"].get("annotations", {})},
            "spec": spec})
        with self.lock:
            ip = self.netns.pod_ip(self.next_ip)
            self.next_ip += 1
        component = labels["app.kubernetes.io/name"]
        self.pods[pod_name] = {"ip": ip, "workload": (kind, name), "component": component, "spec": spec,
                               "namespace": namespace}
        self.by_ip[ip] = pod_name
        if component == "validator":
            self.height[pod_name], self.relay[pod_name] = 120, 118
            self.listen(ip, 26657)
            self.listen(ip, 8004)
        else:
            self.lag[pod_name] = {"rdx.chain.events.v1": 3}
            for container in spec["containers"]:
                for port in container.get("ports", []):
                    if port["name"] == "http":
                        self.listen(ip, port["containerPort"])
        self.set_pod_ready(pod_name, True)
        return pod_name

    def set_pod_ready(self, pod: str, ready: bool, waiting: str = "CrashLoopBackOff") -> None:
        info = self.pods[pod]
        info["ready"] = ready
        spec = info["spec"]

        def statuses(containers):
            return [{"name": c["name"], "ready": ready, "started": ready, "restartCount": 0 if ready else 3,
                     "image": c["image"], "imageID": "",
                     "state": {"running": {"startedAt": now()}} if ready else {"waiting": {"reason": waiting}}}
                    for c in containers]

        flag = "True" if ready else "False"
        status = {
            "phase": "Running", "podIP": info["ip"], "podIPs": [{"ip": info["ip"]}],
            "hostIP": k8s_toolchain.APISERVER_POD_IP, "hostIPs": [{"ip": k8s_toolchain.APISERVER_POD_IP}],
            "startTime": now(),
            "conditions": [{"type": t, "status": s, "lastTransitionTime": now()} for t, s in
                           (("PodScheduled", "True"), ("Initialized", "True"), ("ContainersReady", flag), ("Ready", flag))],
            "containerStatuses": statuses(spec["containers"]),
        }
        sidecars = [c for c in spec.get("initContainers", []) if c.get("restartPolicy") == "Always"]
        if sidecars:
            status["initContainerStatuses"] = statuses(sidecars)
        self.core.patch_namespaced_pod_status(pod, info["namespace"], {"status": status})

    # -- controllers ---------------------------------------------------------------------------

    def sync_status(self, kind: str, name: str, updated: int | None = None, total: int | None = None) -> None:
        """Workload status from its pods, as the Deployment or StatefulSet controller writes it."""
        read = self.apps.read_namespaced_deployment if kind == "Deployment" else self.apps.read_namespaced_stateful_set
        namespace = self.workload(kind, name)["metadata"]["namespace"]
        obj = read(name, namespace)
        desired = obj.spec.replicas
        pods = [p for p, info in self.pods.items() if info["workload"] == (kind, name)]
        ready = sum(1 for p in pods if self.pods[p]["ready"])
        total = len(pods) if total is None else total
        updated = desired if updated is None else updated
        status = {"observedGeneration": obj.metadata.generation, "replicas": total, "updatedReplicas": updated,
                  "readyReplicas": ready, "availableReplicas": ready}
        if kind == "Deployment":
            status["unavailableReplicas"] = max(desired - ready, 0)
            self.apps.patch_namespaced_deployment_status(name, namespace, {"status": status})
        else:
            revision = f"{name}-{obj.metadata.generation}"
            status.update(currentReplicas=updated, currentRevision=revision, updateRevision=revision)
            self.apps.patch_namespaced_stateful_set_status(name, namespace, {"status": status})

    def start_all(self) -> None:
        for obj in self.objects:
            kind, name = obj["kind"], obj["metadata"]["name"]
            if kind == "Deployment":
                for i in range(obj["spec"].get("replicas", 1)):
                    self.create_pod(kind, name, f"{name}-5d8f7c9b4-{i:05d}"[: 63])
                self.sync_status(kind, name)
            elif kind == "StatefulSet":
                for i in range(obj["spec"].get("replicas", 1)):
                    self.create_pod(kind, name, f"{name}-{i}")
                self.sync_status(kind, name)

    def scale_validators(self, count: int) -> None:
        self.apps.patch_namespaced_stateful_set_scale("validator", NS, {"spec": {"replicas": count}})
        for i in range(count):
            pod = f"validator-{i}"
            if pod not in self.pods:
                self.create_pod("StatefulSet", "validator", pod)
            else:
                self.set_pod_ready(pod, True)
        for pod in [p for p in self.pods if p.startswith("validator-") and int(p.split("-")[1]) >= count]:
            self.core.delete_namespaced_pod(pod, NS, grace_period_seconds=0)
            del self.by_ip[self.pods.pop(pod)["ip"]]
        self.sync_status("StatefulSet", "validator")

    def roll_out(self, kind: str, name: str, delay: float = 1.0) -> threading.Thread:
        """In the background: once the workload's generation moves, replace its pods one by one
        from the new template, as the controller and the kubelet would, then report it done."""
        read = self.apps.read_namespaced_deployment if kind == "Deployment" else self.apps.read_namespaced_stateful_set
        namespace = self.workload(kind, name)["metadata"]["namespace"]

        def run():
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                obj = read(name, namespace)
                if obj.metadata.generation > (obj.status.observed_generation or 0):
                    break
                time.sleep(0.1)
            else:
                return
            template = self.apps.api_client.sanitize_for_serialization(obj.spec.template)
            pods = sorted(p for p, info in self.pods.items() if info["workload"] == (kind, name))
            self.sync_status(kind, name, updated=0)
            for done, pod in enumerate(reversed(pods), start=1):  # StatefulSets go from the highest ordinal
                time.sleep(delay)
                self.core.delete_namespaced_pod(pod, namespace, grace_period_seconds=0)
                del self.by_ip[self.pods.pop(pod)["ip"]]
                self.create_pod(kind, name, pod, template=template)
                self.sync_status(kind, name, updated=done)
            self.sync_status(kind, name)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        for server in self.servers.values():
            server.shutdown()
            server.server_close()


def cometbft_status(pod: str, height: int) -> str:
    import json

    return json.dumps({"jsonrpc": "2.0", "id": -1, "result": {
        "node_info": {"moniker": pod, "network": "rdx-dev", "version": "0.38.26"},
        "sync_info": {"latest_block_height": str(height), "latest_block_time": now(), "catching_up": False},
        "validator_info": {"voting_power": "10"}}})


# --------------------------------------------------------------------------------------------
# Running the commands as the SRE


@pytest.fixture(scope="module")
def sre_kubeconfig(cluster) -> Path:
    return cluster.kubeconfig(cluster.home / "sre.kubeconfig", token=SRE_TOKEN, user="alice")


def rdx_ops(kubeconfig: Path, *args: str, namespace: str = NS):
    result = CliRunner().invoke(ops, [*args, "--namespace", namespace, "--kubeconfig", str(kubeconfig)])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


WORKLOADS = ["validator", "billing", "catalog", "gateway"]  # the association's; compute-example is in MEMBER_NS


def test_status_reports_every_component_healthy(deployment, sre_kubeconfig):
    result = rdx_ops(sre_kubeconfig, "status")
    out = result.output
    # everything rdx runs is ready; Strimzi (there is none here) has not reported Kafka Ready
    assert result.exit_code == 1, out
    assert out.rstrip().endswith("unhealthy:\n  - kafka rdx-kafka: no Ready condition yet"), out
    assert f"Kubernetes {k8s_toolchain.KUBERNETES_VERSION}" in out
    for name in WORKLOADS:
        assert f"ok  {name}" in out, out
    assert "validator-0 height 120, relay 118" in out  # CometBFT RPC and the sidecar's metrics, via the proxy
    assert "lag rdx.chain.events.v1=3" in out           # a service's /metrics, via the proxy
    assert "BAD kafka rdx-kafka" in out
    assert "compute-example" not in out  # the member's node is in the member's namespace, and only there
    member = rdx_ops(sre_kubeconfig, "status", namespace=MEMBER_NS)
    assert member.exit_code == 0 and "ok  compute-example" in member.output, member.output


def test_status_is_healthy_once_kafka_is_ready(deployment, admin, sre_kubeconfig):
    from kubernetes import client as k

    k.CustomObjectsApi(admin).patch_namespaced_custom_object_status(
        "kafka.strimzi.io", "v1beta2", NS, "kafkas", "rdx-kafka",
        {"status": {"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now()}]}})
    result = rdx_ops(sre_kubeconfig, "status")
    assert result.exit_code == 0, result.output
    assert "ok  kafka rdx-kafka" in result.output
    assert result.output.rstrip().endswith("healthy: every component is ready")
    as_json = rdx_ops(sre_kubeconfig, "status", "--output", "json")
    assert '"healthy": true' in as_json.output


def test_status_names_what_is_unhealthy(deployment, sre_kubeconfig):
    catalog = next(p for p, i in deployment.pods.items() if i["workload"] == ("Deployment", "catalog"))
    billing = next(p for p, i in deployment.pods.items() if i["workload"] == ("Deployment", "billing"))
    deployment.set_pod_ready(catalog, False)
    deployment.sync_status("Deployment", "catalog")
    deployment.lag[billing] = {"rdx.chain.events.v1": 5000}
    deployment.rpc_down.add("validator-0")
    try:
        result = rdx_ops(sre_kubeconfig, "status")
        out = result.output
        assert result.exit_code == 1, out
        assert "BAD catalog" in out and "0/1" in out
        assert f"catalog: pod {catalog} not ready (catalog: CrashLoopBackOff)" in out
        assert f"billing: {billing}: consumer lag on rdx.chain.events.v1 is 5000 events" in out
        assert "validator: validator-0: CometBFT RPC: HTTP 503" in out
        assert "ok  gateway" in out
    finally:
        deployment.set_pod_ready(catalog, True)
        deployment.sync_status("Deployment", "catalog")
        deployment.lag[billing] = {"rdx.chain.events.v1": 3}
        deployment.rpc_down.discard("validator-0")
    # the relay far behind the chain is unhealthy too (the RdxRelayBehind alert's threshold)
    deployment.relay["validator-0"] = 50
    try:
        result = rdx_ops(sre_kubeconfig, "status")
        assert result.exit_code == 1
        assert "validator-0: relay at height 50, 70 blocks behind the chain (120)" in result.output
    finally:
        deployment.relay["validator-0"] = 118
    assert rdx_ops(sre_kubeconfig, "status").exit_code == 0


def test_restart_rolls_a_deployment_and_waits_for_it(deployment, admin, sre_kubeconfig):
    from kubernetes import client as k

    apps = k.AppsV1Api(admin)
    before = apps.read_namespaced_deployment("gateway", NS)
    assert RESTARTED_AT not in (before.spec.template.metadata.annotations or {})
    old_pods = {p for p, i in deployment.pods.items() if i["workload"] == ("Deployment", "gateway")}
    rollout = deployment.roll_out("Deployment", "gateway", delay=1.5)
    started = time.monotonic()
    result = rdx_ops(sre_kubeconfig, "restart", "gateway", "--timeout", "60")
    took = time.monotonic() - started
    rollout.join(10)
    assert result.exit_code == 0, result.output
    after = apps.read_namespaced_deployment("gateway", NS)
    stamp = after.spec.template.metadata.annotations[RESTARTED_AT]
    assert after.metadata.generation == before.metadata.generation + 1
    assert took >= 1.5, "the command returned before the rollout was done"
    assert "0 of 1 replicas updated" in result.output and "rolled out: 1/1 updated and available" in result.output
    # the new pods carry the new template's annotation, as the Deployment controller makes them
    pods = k.CoreV1Api(admin).list_namespaced_pod(NS, label_selector="app.kubernetes.io/name=gateway").items
    assert [p.metadata.annotations[RESTARTED_AT] for p in pods] == [stamp]
    assert old_pods == {p.metadata.name for p in pods}  # same names here: the simulator reuses them
    assert rdx_ops(sre_kubeconfig, "status").exit_code == 0


def test_restart_fails_when_the_rollout_does_not_finish(deployment, sre_kubeconfig):
    result = rdx_ops(sre_kubeconfig, "restart", "billing", "--timeout", "2")
    assert result.exit_code == 1
    assert "the rollout of deployment/billing did not finish within 2s" in result.output
    deployment.sync_status("Deployment", "billing")  # as the controller would, eventually


def test_restart_finds_a_member_node_and_refuses_ambiguous_names(deployment, sre_kubeconfig):
    result = rdx_ops(sre_kubeconfig, "restart", "no-such-service", "--timeout", "1")
    assert result.exit_code == 1 and "no Deployment or StatefulSet 'no-such-service'" in result.output
    rollout = deployment.roll_out("Deployment", "compute-example", delay=0.2)
    result = rdx_ops(sre_kubeconfig, "restart", "compute", "--timeout", "30", namespace=MEMBER_NS)  # by its label
    rollout.join(10)
    assert result.exit_code == 0, result.output
    assert "deployment/compute-example: restart requested" in result.output


def test_restart_refuses_to_break_the_validator_quorum(deployment, admin, sre_kubeconfig):
    from kubernetes import client as k

    apps = k.AppsV1Api(admin)
    # dev: one validator; restarting it halts the chain
    result = rdx_ops(sre_kubeconfig, "restart", "validator", "--timeout", "5")
    assert result.exit_code == 1, result.output
    assert "refusing to restart statefulset/validator: 1 of 1 validators are ready" in result.output
    # 4 validators with one already down: a second one down leaves 2 of 4
    deployment.scale_validators(4)
    deployment.set_pod_ready("validator-2", False)
    deployment.sync_status("StatefulSet", "validator")
    generation = apps.read_namespaced_stateful_set("validator", NS).metadata.generation
    result = rdx_ops(sre_kubeconfig, "restart", "validator", "--timeout", "5")
    assert result.exit_code == 1, result.output
    assert "3 of 4 validators are ready; restarting them one at a time leaves 2" in result.output
    sts = apps.read_namespaced_stateful_set("validator", NS)
    assert sts.metadata.generation == generation
    assert RESTARTED_AT not in (sts.spec.template.metadata.annotations or {})
    status = rdx_ops(sre_kubeconfig, "status")
    assert status.exit_code == 1 and "pod validator-2 not ready" in status.output
    # all 4 ready: one down leaves 3 of 4 (> 2/3), so the rolling restart goes ahead
    deployment.set_pod_ready("validator-2", True)
    deployment.sync_status("StatefulSet", "validator")
    rollout = deployment.roll_out("StatefulSet", "validator", delay=0.3)
    result = rdx_ops(sre_kubeconfig, "restart", "validator", "--timeout", "60")
    rollout.join(15)
    assert result.exit_code == 0, result.output
    assert "rolled out: 4/4 updated, 4 ready" in result.output
    assert RESTARTED_AT in apps.read_namespaced_stateful_set("validator", NS).spec.template.metadata.annotations
    status = rdx_ops(sre_kubeconfig, "status")
    assert status.exit_code == 0, status.output
    for i in range(4):
        assert f"validator-{i} height 120" in status.output


def test_the_sre_role_cannot_do_more_than_ops(cluster, deployment, sre_kubeconfig):
    from kubernetes import client as k
    from kubernetes.client.exceptions import ApiException

    client = api_client(sre_kubeconfig)
    with pytest.raises(ApiException) as denied:
        k.CoreV1Api(client).list_namespaced_secret(NS)
    assert denied.value.status == 403
    with pytest.raises(ApiException) as denied:
        k.AppsV1Api(client).delete_namespaced_deployment("gateway", NS)
    assert denied.value.status == 403
    client.close()


def test_job_client_submits_reads_and_cancels_a_job(cluster, deployment, admin):
    from kubernetes import client as k

    compute = api_client(cluster.kubeconfig(cluster.home / "compute.kubeconfig", token=COMPUTE_TOKEN, user="compute"))
    runner = JobClient(MEMBER_NS, compute, labels={"rdx.io/member": "example"}, active_deadline_seconds=3600)
    job_id = "J-2026/psi.0042"
    name = runner.submit(job_id, "registry.example.org/rdx/compute:0.1.0-dev", ["--job", job_id, "--kind", "psi"],
                         {"RDX_JOB_ID": job_id, "RDX_THREADS": "8"})
    assert name == job_name(job_id) and name.startswith("rdx-job-j-2026-psi-0042-") and len(name) <= 63
    job = k.BatchV1Api(admin).read_namespaced_job(name, MEMBER_NS)
    assert job.spec.backoff_limit == 0 and job.spec.active_deadline_seconds == 3600
    assert job.spec.ttl_seconds_after_finished == 3600
    assert job.metadata.annotations["rdx.io/job-id"] == job_id
    assert job.metadata.labels["rdx.io/member"] == "example"
    pod = job.spec.template.spec
    assert pod.restart_policy == "Never" and pod.automount_service_account_token is False
    assert pod.security_context.run_as_non_root and pod.security_context.seccomp_profile.type == "RuntimeDefault"
    (container,) = pod.containers
    assert container.image == "registry.example.org/rdx/compute:0.1.0-dev"
    assert container.args == ["--job", job_id, "--kind", "psi"]
    assert {e.name: e.value for e in container.env} == {"RDX_JOB_ID": job_id, "RDX_THREADS": "8"}
    assert container.security_context.read_only_root_filesystem is True
    assert container.security_context.capabilities.drop == ["ALL"]
    assert container.resources.limits == {"cpu": "2", "memory": "4Gi"}
    # the job controller's view, written to the status subresource as it would
    assert runner.status(name).phase == "pending"
    batch = k.BatchV1Api(admin)
    started = now()
    batch.patch_namespaced_job_status(name, MEMBER_NS, {"status": {"startTime": started, "active": 1, "ready": 1}})
    state = runner.status(name)
    assert (state.phase, state.active) == ("running", 1)
    batch.patch_namespaced_job_status(name, MEMBER_NS, {"status": {
        "active": 0, "ready": 0, "succeeded": 1, "completionTime": now(),
        "conditions": [{"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": now()},
                       {"type": "Complete", "status": "True", "lastTransitionTime": now()}]}})
    state = runner.status(name)
    assert (state.phase, state.succeeded) == ("succeeded", 1) and state.finished
    with pytest.raises(Exception, match="already exists"):
        runner.submit(job_id, "registry.example.org/rdx/compute:0.1.0-dev", [], {})
    # cancel: the Job (and, through the garbage collector, its pods) is deleted
    assert runner.cancel(name) is True
    deadline = time.monotonic() + 10
    while runner.status(name).phase != "missing":
        assert time.monotonic() < deadline, "the cancelled Job is still there"
        time.sleep(0.2)
    assert runner.cancel(name) is False
    # a job that fails (its deadline passed): failed, with the controller's reason
    other = runner.submit("J-2026-0043", "registry.example.org/rdx/compute:0.1.0-dev", [], {})
    assert other == "rdx-job-j-2026-0043-" + job_name("J-2026-0043").rsplit("-", 1)[1]
    batch.patch_namespaced_job_status(other, MEMBER_NS, {"status": {"startTime": now(), "active": 1}})
    batch.patch_namespaced_job_status(other, MEMBER_NS, {"status": {"active": 0, "failed": 1, "conditions": [
        {"type": "FailureTarget", "status": "True", "reason": "DeadlineExceeded",
         "message": "Job was active longer than specified deadline", "lastTransitionTime": now()},
        {"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
         "message": "Job was active longer than specified deadline", "lastTransitionTime": now()}]}})
    state = runner.status(other)
    assert (state.phase, state.reason, state.failed) == ("failed", "DeadlineExceeded", 1)
    assert runner.cancel(other) is True
    # the compute node's account may run Jobs and make their Secrets, and nothing else: it can read
    # no Secret (not even its own node's key) and no pod, and do nothing in the association's namespace
    from kubernetes.client.exceptions import ApiException

    for read in (lambda: k.CoreV1Api(compute).list_namespaced_pod(MEMBER_NS),
                 lambda: k.CoreV1Api(compute).list_namespaced_secret(MEMBER_NS),
                 lambda: k.CoreV1Api(compute).read_namespaced_secret("compute-node-key", MEMBER_NS),
                 lambda: k.AppsV1Api(compute).list_namespaced_deployment(MEMBER_NS),
                 lambda: k.CoreV1Api(compute).list_namespaced_secret(NS)):
        with pytest.raises(ApiException) as denied:
            read()
        assert denied.value.status == 403
    with pytest.raises(KubeError, match=f'HTTP 403: .*cannot create resource "jobs" .* in the namespace "{NS}"'):
        JobClient(NS, compute).submit("J-elsewhere", "registry.example.org/rdx/compute:0.1.0-dev", [], {})
    compute.close()


def test_the_prod_overlay_is_accepted_by_the_api_server(cluster, deployment, admin):
    """Server-side validation catches what the offline schemas cannot (a port name over 15
    characters did slip through once): every prod object, created as a dry run."""
    from kubernetes.dynamic import DynamicClient

    dynamic = DynamicClient(admin)
    objects = render_overlay("prod")
    namespaces = [o for o in objects if o["kind"] == "Namespace"]
    assert namespaces, "the prod overlay makes its namespace"
    for obj in namespaces:  # namespaced dry runs need the namespace to exist
        dynamic.resources.get(api_version="v1", kind="Namespace").create(body=obj)
    rejected = []
    for obj in objects:
        if obj["kind"] == "Namespace":
            continue
        resource = dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        try:
            resource.create(body=obj, namespace=obj["metadata"].get("namespace"), dry_run="All")
        except Exception as exc:  # noqa: BLE001 - collected, all reported at once
            rejected.append(f"{obj['kind']}/{obj['metadata']['name']}: {getattr(exc, 'summary', lambda: exc)()}")
    assert not rejected, "\n".join(rejected)


def test_ops_library_reports_an_unreachable_api_server(tmp_path):
    from rdx.ops import OpsError

    config = tmp_path / "kubeconfig"
    config.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "x", "cluster": {"server": "https://127.0.0.1:1", "insecure-skip-tls-verify": True}}],
        "users": [{"name": "x", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "x", "user": "x"}}]}))
    client = api_client(config)
    client.configuration.retries = 0
    with pytest.raises(OpsError, match="cannot read the namespace 'rdx-dev'"):
        Ops(client, NS, request_timeout=2).status()
    result = rdx_ops(config, "status", "--timeout", "2")
    assert result.exit_code == 2
    assert "cannot read the namespace" in result.output
    result = rdx_ops(config, "restart", "gateway", "--timeout", "2")
    assert result.exit_code == 1 and "cannot read deployment/gateway" in result.output
