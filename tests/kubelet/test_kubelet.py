"""`make test-kubelet` (not part of `make test`): rdx's catalog, from its image built here, on a real
kubelet of a one-node cluster (rdx/k8s_node.py), in a namespace enforcing Pod Security `restricted`.

The catalog is ready only once its Kafka consumer has caught up, so Kafka runs beside it: the
rdx-kafka image as a plain Deployment (Strimzi is not available here, see infra/README.md), its
advertised address the pod's IP. kube-proxy (iptables mode) serves the Services and CoreDNS
(on the node) their names, so the catalog is given Kafka as `kafka:9092`, as the manifests name
Services. The test reaches the catalog at its pod IP (the host routes to the pod bridge) and at
its Service's ClusterIP, which CoreDNS gives for its name.

NetworkPolicies are enforced (kube-router's network policy controller, on the node): the second
test applies the project's own `catalog` policy (infra/base/networkpolicies.yaml) and checks, from
inside the pods, which connections it lets through, then that deleting it opens them again.

Needs root (containerd, CNI, cgroups); it apt-installs containerd, runc and the CNI plugins when
missing and starts Debian's dockerd when it is not running (and stops it after).
"""

from __future__ import annotations

import copy
import json
import os
import secrets
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from rdx import images
from rdx.components import create_topics, kafka_healthy
from rdx.k8s_node import POD_GATEWAY, OneNodeCluster, dns_query, ensure_packages, left_on_host, logs_dir, pause_image
from services.common.events import TOPICS

pytestmark = pytest.mark.timeout(1800)  # cold: builds the node's programs and images first

ROOT = Path(__file__).resolve().parents[2]
NS = "rdx-kubelet"

if os.geteuid() != 0:
    pytest.skip("needs root: a private containerd, the CNI bridge and the kubelet's cgroups", allow_module_level=True)
if not Path("/sys/fs/cgroup").is_dir():
    pytest.skip("no /sys/fs/cgroup on this machine: a kubelet cannot run pods here", allow_module_level=True)


@pytest.fixture(scope="module")
def engine():
    """The Docker engine holding rdx's images (started here if it was not running) and the images, built (cached)."""
    proc = images.start_engine()
    try:
        built = images.build_all()
        # The manifests give no command: the catalog's image must carry its own.
        assert json.loads(images.run([images.DOCKER, "image", "inspect", "--format", "{{json .Config.Cmd}}", built["catalog"]],
                                     "inspect")) == ["services.catalog"]
        yield [built["catalog"], built["kafka"], pause_image(images.env(), images.DOCKER)]
    finally:
        images.stop_engine(proc)


@pytest.fixture(scope="module")
def cluster(engine):
    ensure_packages()
    node = OneNodeCluster()
    try:
        node.start()
        node.load_images(engine, images.DOCKER, images.env())
        yield node
    finally:
        if node.kubeconfig is not None and node.processes.get("kubelet"):
            # Pods stopped by the kubelet (CNI DEL, volumes unmounted), not only killed at stop().
            node.kubectl("delete", "namespace", NS, "--ignore-not-found", "--wait=true", "--timeout=90s", check=False)
        problems = node.stop()
        left = left_on_host(node)
        assert not problems and not left, f"left on the host: {problems} {left} (logs: {logs_dir()})"


def apply(cluster: OneNodeCluster, *docs: dict) -> None:
    cluster.kubectl("apply", "--server-side", "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs))


def wait_ready_pod(cluster: OneNodeCluster, app: str, timeout: float = 300.0) -> dict:
    deadline = time.monotonic() + timeout
    pods: list = []
    while time.monotonic() < deadline:
        pods = cluster.get("pods", "-n", NS, "-l", f"app.kubernetes.io/name={app}")["items"]
        for pod in pods:
            if any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", [])):
                return pod
        time.sleep(1)
    events = cluster.kubectl("get", "events", "-n", NS, "--sort-by=.lastTimestamp", check=False)
    raise AssertionError(f"no Ready {app} pod within {timeout:.0f}s: {json.dumps([p['status'] for p in pods])[:3000]}\n"
                         f"events:\n{events[-3000:]}\nkubelet:\n{cluster.log_tail('kubelet')}")


RESTRICTED = {"runAsNonRoot": True, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
              "capabilities": {"drop": ["ALL"]}}


def kafka_docs(image: str) -> list[dict]:
    """One KRaft node (docker/kafka-entrypoint.sh) whose advertised listener is its pod IP: the
    entrypoint reads /etc/kafka, an emptyDir filled from the ConfigMap with the IP put in."""
    props = {"process.roles": "broker,controller", "node.id": "1", "controller.quorum.voters": "1@127.0.0.1:9093",
             "listeners": "PLAINTEXT://0.0.0.0:9092,CONTROLLER://127.0.0.1:9093",
             "advertised.listeners": "PLAINTEXT://POD_IP:9092", "controller.listener.names": "CONTROLLER",
             "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
             "log.dirs": "/var/lib/kafka/data", "offsets.topic.replication.factor": "1",
             "transaction.state.log.replication.factor": "1", "transaction.state.log.min.isr": "1",
             "group.initial.rebalance.delay.ms": "0", "auto.create.topics.enable": "false"}
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kafka", "namespace": NS},
              "data": {"server.properties": "".join(f"{k}={v}\n" for k, v in props.items()),
                       "cluster-id": "cmR4LWt1YmVsZXQtdGVzdA"}}
    labels = {"app.kubernetes.io/name": "kafka"}
    start = ("sed \"s/POD_IP/$POD_IP/\" /etc/kafka-template/server.properties > /etc/kafka/server.properties && "
             "cp /etc/kafka-template/cluster-id /etc/kafka/cluster-id && exec /usr/local/bin/kafka-entrypoint")
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "kafka", "namespace": NS, "labels": labels},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {"metadata": {"labels": labels}, "spec": {
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "kafka", "image": image, "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", start],
                "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                        {"name": "KAFKA_HEAP", "value": "384m"}],
                "ports": [{"name": "kafka", "containerPort": 9092}],
                "readinessProbe": {"tcpSocket": {"port": "kafka"}, "periodSeconds": 2},
                "resources": {"requests": {"cpu": "100m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
                "securityContext": RESTRICTED,
                "volumeMounts": [{"name": "config", "mountPath": "/etc/kafka"},
                                 {"name": "template", "mountPath": "/etc/kafka-template", "readOnly": True},
                                 {"name": "data", "mountPath": "/var/lib/kafka"}, {"name": "tmp", "mountPath": "/tmp"}]}],
            "volumes": [{"name": "config", "emptyDir": {}}, {"name": "template", "configMap": {"name": "kafka"}},
                        {"name": "data", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}]}}}}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kafka", "namespace": NS, "labels": labels},
               "spec": {"selector": labels, "ports": [{"name": "kafka", "port": 9092, "targetPort": "kafka"}]}}
    return [config, deployment, service]


def catalog_docs(image: str, kafka: str) -> list[dict]:
    """infra/base/catalog.yaml's Deployment, changed only where this cluster differs from production:
    the image's tag (the `rdx-catalog:dev` `make images` builds, loaded, never pulled; its command is
    the image's own), one replica, and Kafka in plaintext (no Strimzi: no KafkaUser Secret, no cluster
    CA to mount)."""
    docs = list(yaml.safe_load_all((ROOT / "infra/base/catalog.yaml").read_text()))
    deployment = copy.deepcopy([d for d in docs if d["kind"] == "Deployment"][0])
    service = [d for d in docs if d["kind"] == "Service"][0]
    service["metadata"]["namespace"] = NS
    deployment["metadata"]["namespace"] = NS
    deployment["spec"]["replicas"] = 1
    spec = deployment["spec"]["template"]["spec"]
    container = spec["containers"][0]
    container.update(image=image, imagePullPolicy="Never")
    container["env"] = [e for e in container["env"] if e["name"] != "RDX_KAFKA_SASL_USERNAME"]
    container["volumeMounts"] = [m for m in container["volumeMounts"] if not m["mountPath"].startswith("/etc/rdx/kafka")]
    # The machine is shared: the production request (250m) fits, the limit is left as it is.
    spec["volumes"] = [v for v in spec["volumes"] if "secret" not in v]
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "rdx-config", "namespace": NS},
              "data": {"RDX_HTTP_HOST": "0.0.0.0", "RDX_KAFKA_BOOTSTRAP": kafka, "RDX_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
                       "RDX_CHAIN_ID": "rdx-kubelet-test", "RDX_STATE_ROOT": "/var/lib/rdx", "RDX_LOG_LEVEL": "INFO",
                       "RDX_COMETBFT_RPC": "http://127.0.0.1:26657"}}
    return [config, deployment, service]


def get_until(url: str, timeout: float = 30.0) -> httpx.Response:
    """GET ``url`` until it answers (a Service's endpoints reach kube-proxy's rules a moment after Ready)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return httpx.get(url, timeout=5)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_the_catalog_runs_and_is_ready_on_a_real_kubelet(cluster, engine):
    catalog_image, kafka_image = engine[0], engine[1]
    apply(cluster, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS, "labels": {
        "pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"}}})
    # The namespace enforces `restricted`: a pod that runs as root is refused by the API server.
    refused = cluster.run_kubectl("run", "root", "-n", NS, f"--image={catalog_image}", "--image-pull-policy=Never",
                                  "--restart=Never", "--dry-run=server")
    assert refused.returncode != 0 and 'violates PodSecurity "restricted:latest"' in refused.stderr, refused.stderr

    started = time.monotonic()
    apply(cluster, *kafka_docs(kafka_image))
    kafka = wait_ready_pod(cluster, "kafka")
    kafka_ready = time.monotonic() - started
    # The host reaches Kafka through its Service's ClusterIP (kube-proxy's rules), the catalog by its
    # name (CoreDNS); Kafka advertises its pod IP.
    bootstrap = f"{cluster.get('service', '-n', NS, 'kafka')['spec']['clusterIP']}:9092"
    deadline = time.monotonic() + 60
    while not kafka_healthy(bootstrap):
        assert time.monotonic() < deadline, f"Kafka did not answer at its Service {bootstrap} within 60s"
        time.sleep(1)
    create_topics(bootstrap, TOPICS)

    started = time.monotonic()
    apply(cluster, *catalog_docs(catalog_image, "kafka:9092"))
    pod = wait_ready_pod(cluster, "catalog")
    catalog_ready = time.monotonic() - started
    print(f"\nkafka Ready in {kafka_ready:.1f}s, catalog Ready in {catalog_ready:.1f}s, "
          f"cluster up in {cluster.timings['cluster_ready_s']:.1f}s, images loaded in {cluster.timings['images_loaded_s']:.1f}s")

    # Made by the controller manager (Deployment -> ReplicaSet -> Pod), placed by the scheduler.
    owner = pod["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "ReplicaSet" and owner["name"].startswith("catalog-")
    assert pod["spec"]["nodeName"] == cluster.node_name
    events = cluster.get("events", "-n", NS, "--field-selector", f"involvedObject.name={pod['metadata']['name']}")["items"]
    scheduled = [e for e in events if e["reason"] == "Scheduled"]
    assert scheduled and (scheduled[0].get("reportingComponent") or scheduled[0]["source"].get("component")) == "default-scheduler"
    status = pod["status"]["containerStatuses"][0]
    assert status["ready"] and "running" in status["state"] and status["restartCount"] == 0
    assert pod["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/readyz"

    # From the test: at the pod's IP (through the bridge) and at the Service's ClusterIP (kube-proxy).
    cluster_ip = cluster.get("service", "-n", NS, "catalog")["spec"]["clusterIP"]
    assert dns_query(POD_GATEWAY, f"catalog.{NS}.svc.cluster.local") == cluster_ip
    for address in (pod["status"]["podIP"], cluster_ip):
        ready = get_until(f"http://{address}:8001/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready", (address, ready.text)
        listings = httpx.get(f"http://{address}:8001/v1/listings", timeout=10)
        assert listings.status_code == 200, (address, listings.text)


def catalog_policy() -> dict:
    """infra/base/networkpolicies.yaml's `catalog` policy, changed only where this cluster differs:
    Kafka is plain pods (app.kubernetes.io/name=kafka) in plaintext on 9092, not Strimzi's on 9093,
    and the cluster's DNS is CoreDNS on the node (the bridge's address), not kube-dns pods."""
    docs = yaml.safe_load_all((ROOT / "infra/base/networkpolicies.yaml").read_text())
    policy = [d for d in docs if d and d["metadata"]["name"] == "catalog"][0]
    policy["metadata"]["namespace"] = NS
    changed = 0
    for rule in policy["spec"]["egress"]:
        peer = rule["to"][0]
        if peer.get("podSelector", {}).get("matchLabels") == {"strimzi.io/cluster": "rdx-kafka"}:
            rule.update(to=[{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "kafka"}}}],
                        ports=[{"port": 9092, "protocol": "TCP"}])
            changed += 1
        elif peer.get("podSelector", {}).get("matchLabels") == {"k8s-app": "kube-dns"}:
            rule["to"] = [{"ipBlock": {"cidr": f"{POD_GATEWAY}/32"}}]
            changed += 1
    assert changed == 2, policy  # the project's policy changed shape: this adaptation must follow
    return policy


def gateway_pod(image: str) -> dict:
    """A pod labelled as the gateway (the peer the catalog's policy lets in): rdx's image serving http on
    8080, a port the catalog's policy does not let the catalog reach."""
    labels = {"app.kubernetes.io/name": "gateway"}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "gateway", "namespace": NS, "labels": labels},
            "spec": {"automountServiceAccountToken": False,
                     "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                                         "seccompProfile": {"type": "RuntimeDefault"}},
                     "containers": [{"name": "gateway", "image": image, "imagePullPolicy": "Never",
                                     "command": ["python", "-m", "http.server", "8080"], "workingDir": "/tmp",
                                     "ports": [{"containerPort": 8080}],
                                     "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
                                     "securityContext": RESTRICTED,
                                     "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]}],
                     "volumes": [{"name": "tmp", "emptyDir": {}}]}}


def connect(cluster: OneNodeCluster, pod: dict, address: str, port: int) -> str:
    """A TCP connection from inside ``pod`` (containerd's exec into its container, bash's /dev/tcp):
    "ok", or why not (kube-router rejects what no policy allows, so a refusal, not a timeout)."""
    container = pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
    result = subprocess.run(cluster.ctr("tasks", "exec", "--exec-id", f"probe-{secrets.token_hex(4)}", container,
                                        "timeout", "3", "bash", "-c", f"exec 3<>/dev/tcp/{address}/{port}"),
                            capture_output=True, text=True, timeout=30)
    if result.returncode == 0:
        return "ok"
    return f"exit {result.returncode}: {result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ''}"


def test_network_policies_are_enforced(cluster, engine):
    """The project's `catalog` policy, enforced: only the gateway gets in, and the catalog gets out only
    to Kafka (and DNS); deleting the policy opens both again. Every port is first shown open, so a
    refused connection afterwards is the policy's doing."""
    apply(cluster, gateway_pod(engine[0]))
    pods = {app: wait_ready_pod(cluster, app) for app in ("kafka", "catalog", "gateway")}
    ip = {app: pod["status"]["podIP"] for app, pod in pods.items()}
    flows = {  # (from, to, port): allowed by the policy
        ("gateway", "catalog", 8001): True, ("kafka", "catalog", 8001): False,
        ("catalog", "kafka", 9092): True, ("catalog", "gateway", 8080): False,
    }

    def outcomes() -> dict:
        return {flow: connect(cluster, pods[flow[0]], ip[flow[1]], flow[2]) == "ok" for flow in flows}

    def detail() -> dict:  # what each connection answered, for a failure's message
        return {f"{a}->{b}:{p}": connect(cluster, pods[a], ip[b], p) for a, b, p in flows}

    def wait_for(expected: dict, what: str) -> float:
        started = time.monotonic()
        while (got := outcomes()) != expected:
            if time.monotonic() - started > 60:
                raise AssertionError(f"{what}: connected {got}, expected {expected}; {detail()}")
            time.sleep(0.5)
        return time.monotonic() - started

    everything = {flow: True for flow in flows}
    assert outcomes() == everything, detail()
    apply(cluster, catalog_policy())
    enforced = wait_for(dict(flows), "with the catalog's policy")
    refused = connect(cluster, pods["kafka"], ip["catalog"], 8001)
    # Still allowed and still refused a few seconds on (not a moment of a sync in progress).
    time.sleep(3)
    assert outcomes() == dict(flows)
    catalog = wait_ready_pod(cluster, "catalog", timeout=10)  # its probe (from the node) still gets in
    assert catalog["status"]["containerStatuses"][0]["restartCount"] == 0
    cluster.kubectl("delete", "networkpolicy", "-n", NS, "catalog")
    opened = wait_for(everything, "after deleting the policy")
    print(f"\npolicy enforced {enforced:.1f}s after its apply (kafka->catalog:8001 {refused}), "
          f"lifted {opened:.1f}s after its deletion")
