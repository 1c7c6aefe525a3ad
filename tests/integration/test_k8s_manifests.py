"""Every overlay in infra/overlays/, and who may do what once it is applied, on a real kube-apiserver.

The API server and kubectl are built from the Go module proxy and cached (rdx/k8s_toolchain.py,
`make setup-k8s`); if they are not built yet, the first test builds them or fails saying why.

- Every overlay is rendered (kustomize, as infra/check.py) and sent with `kubectl apply
  --server-side --dry-run=server`: the API server validates every object, defaults it and runs
  admission. Each workload's pod template is sent too, as the Pod its controller would create:
  Pod Security admission (the `restricted` level, which every rendered Namespace enforces)
  judges pods, not templates. A pod that breaks the level is refused here, so the check can fail.
- Then the overlays are applied for real (there is no kubelet or controller: nothing runs) with a
  second member site made as docs/operations.md says (member example's overlay with its name
  replaced), the Secrets each overlay expects are made, and `kubectl auth can-i --as` asks the
  API server's authorizer, as each service account (with the groups its token carries), what it
  may do: no member's account reads another member's Secrets, the association's or a validator's;
  no account of the association's reads a member's; the Kubernetes Job runner's account creates
  Jobs in its own namespace only and reads no Secret anywhere.
- The NetworkPolicies are evaluated, as a CNI plugin would, for the flows a deployment needs
  (allowed) and the ones it must not have (refused).
"""

from __future__ import annotations

import base64
import copy
import ipaddress
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from rdx import k8s_toolchain
from rdx.toolchain import SetupError

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "infra"))
import check  # noqa: E402  infra/check.py: the kustomize `make check-infra` builds
from test_ops_k8s import CRDS  # noqa: E402  Strimzi's and the Prometheus Operator's kinds, fields unchecked

BUILT = all(p.exists() for p in (k8s_toolchain.kube_apiserver_bin(), k8s_toolchain.etcd_bin(),
                                 k8s_toolchain.kubectl_bin()))
pytestmark = [pytest.mark.timeout(300 if BUILT else 3600), pytest.mark.built_tools]

OVERLAYS = sorted(p.name for p in (ROOT / "infra" / "overlays").iterdir() if (p / "kustomization.yaml").exists())
MEMBERS = {"example": "rdx-dev-example", "other": "rdx-dev-other"}  # member -> its site's namespace
ASSOCIATION = ("rdx-dev", "rdx")  # the dev and prod overlays' namespaces
VALIDATOR_KEYS = [f"validator-{n}-key" for n in range(4)]


def render(path: Path) -> list[dict]:
    out = subprocess.run([str(check.ensure_kustomize()), "build", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def other_member_site(tmp: Path) -> Path:
    """A second member's site, made as docs/operations.md says: member example's overlay with its
    name replaced (its paths to infra/ made relative to where the copy lives)."""
    source = ROOT / "infra" / "overlays" / "dev-site-example"
    site = tmp / "dev-site-other"
    site.mkdir()
    infra = os.path.relpath(ROOT / "infra", site)
    for file in source.iterdir():
        text = file.read_text().replace("example", "other").replace("../../", f"{infra}/")
        (site / file.name).write_text(text)
    return site


def pod_from(workload: dict, name: str) -> dict:
    """The Pod a workload's controller would create (StatefulSet claims become volumes)."""
    spec = copy.deepcopy(workload["spec"]["template"])
    if workload["kind"] == "StatefulSet":
        spec["spec"].setdefault("volumes", []).extend(
            {"name": t["metadata"]["name"], "persistentVolumeClaim": {"claimName": f"{t['metadata']['name']}-{name}"}}
            for t in workload["spec"].get("volumeClaimTemplates", []))
    if workload["kind"] == "Job":
        spec["spec"].setdefault("restartPolicy", "Never")
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": workload["metadata"]["namespace"],
                         "labels": spec.get("metadata", {}).get("labels", {})},
            "spec": spec["spec"]}


class Kubectl:
    def __init__(self, binary: Path, kubeconfig: Path):
        self.binary, self.kubeconfig = binary, kubeconfig

    def __call__(self, *args: str, docs: list[dict] | None = None, ok: bool = True) -> subprocess.CompletedProcess:
        stdin = "".join(f"---\n{json.dumps(d)}\n" for d in docs) if docs is not None else None
        result = subprocess.run([str(self.binary), "--kubeconfig", str(self.kubeconfig), *args],
                                input=stdin, capture_output=True, text=True, timeout=120)
        if ok:
            assert result.returncode == 0, f"kubectl {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        return result

    def apply(self, docs: list[dict], dry_run: bool = False, ok: bool = True) -> subprocess.CompletedProcess:
        args = ["apply", "--server-side", "--field-manager=rdx-test", "-f", "-"]
        return self(*args, *(["--dry-run=server"] if dry_run else []), docs=docs, ok=ok)

    def can_i(self, account: str, verb: str, resource: str, namespace: str) -> bool:
        """`kubectl auth can-i` as a service account, with the groups its token carries."""
        ns, name = account.split("/")
        result = self("auth", "can-i", verb, resource, "-n", namespace,
                      f"--as=system:serviceaccount:{ns}:{name}", "--as-group=system:serviceaccounts",
                      f"--as-group=system:serviceaccounts:{ns}", "--as-group=system:authenticated", ok=False)
        answer = result.stdout.strip()
        assert answer in ("yes", "no"), f"kubectl auth can-i: {result.stdout}{result.stderr}"
        return answer == "yes"


@pytest.fixture(scope="module")
def kubectl(tmp_path_factory):
    started = time.monotonic()
    try:
        binary = k8s_toolchain.ensure_kubectl()
        server = k8s_toolchain.LocalAPIServer(tmp_path_factory.mktemp("kube"), pod_network=False)
        server.start()
    except SetupError as exc:
        pytest.fail(f"the Kubernetes API server or kubectl could not be set up: {exc}", pytrace=False)
    try:
        run = Kubectl(binary, server.kubeconfig(server.home / "admin.kubeconfig"))
        run.apply(CRDS)
        run("wait", "--for=condition=Established", "--timeout=60s", *[f"crd/{c['metadata']['name']}" for c in CRDS])
        print(f"API server and kubectl ready in {time.monotonic() - started:.1f}s")
        yield run
    finally:
        server.stop()


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, list[dict]]:
    out = {name: render(ROOT / "infra" / "overlays" / name) for name in OVERLAYS}
    out["dev-site-other"] = render(other_member_site(tmp_path_factory.mktemp("sites")))
    return out


def namespaces(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] == "Namespace"]


def pods_of(docs: list[dict]) -> list[dict]:
    return [pod_from(d, f"{d['metadata']['name']}-0") for d in docs if d["kind"] in check.WORKLOAD_KINDS]


# --------------------------------------------------------------------------------------------
# Server-side dry run, restricted Pod Security


def test_every_overlay_passes_a_server_side_dry_run_with_restricted_pod_security(kubectl, rendered):
    assert {"dev", "prod", "dev-site-example", "prod-validator-keys"} <= set(OVERLAYS)
    made = {}
    for name, docs in rendered.items():
        for ns in namespaces(docs):
            labels = ns["metadata"].get("labels", {})
            assert labels.get("pod-security.kubernetes.io/enforce") == "restricted", (name, ns["metadata"]["name"])
            made[ns["metadata"]["name"]] = ns
    kubectl.apply(list(made.values()))  # namespaced dry runs need their namespace
    for name, docs in rendered.items():
        assert all(d["metadata"].get("namespace") in made for d in docs if d["kind"] != "Namespace"), name
        objects = [d for d in docs if d["kind"] != "Namespace"]
        pods = pods_of(objects)
        assert pods, name
        result = kubectl.apply(objects + pods, dry_run=True)
        applied = [line for line in result.stdout.splitlines() if "serverside-applied (server dry run)" in line]
        assert len(applied) == len(objects) + len(pods), f"{name}:\n{result.stdout}\n{result.stderr}"
        assert "Warning" not in result.stderr, f"{name}: {result.stderr}"


def test_the_dry_run_refuses_a_pod_that_breaks_the_restricted_level(kubectl, rendered):
    """The check above can fail: the same pod with one restricted setting undone is refused."""
    gateway = next(d for d in rendered["dev"] if d["kind"] == "Deployment" and d["metadata"]["name"] == "gateway")
    compute = next(d for d in rendered["dev-site-example"] if d["kind"] == "Deployment")
    for workload in (gateway, compute):
        pod = pod_from(workload, "breaks-restricted")
        pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
        result = kubectl.apply([pod], dry_run=True, ok=False)
        assert result.returncode != 0 and 'violates PodSecurity "restricted:latest"' in result.stderr, result.stderr
        assert "allowPrivilegeEscalation != false" in result.stderr


# --------------------------------------------------------------------------------------------
# Who may read which Secret, as each service account


def rdx(*args: str, cwd: Path) -> str:
    result = subprocess.run([sys.executable, "-m", "rdx", *args], capture_output=True, text=True, cwd=cwd, timeout=120)
    assert result.returncode == 0, f"rdx {' '.join(args)}: {result.stdout}{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def prod_network(kubectl, tmp_path_factory) -> Path:
    """docs/operations.md, "Production, the first time", steps 1 to 5, as written there: the
    validators' keys (cometbft testnet), the association's and the board's keys (rdx keygen), the
    genesis (rdx genesis), its ConfigMap and one Secret per validator's keys."""
    from rdx.toolchain import ensure_cometbft

    net = tmp_path_factory.mktemp("net")
    subprocess.run([str(ensure_cometbft()), "testnet", "--v", "4", "--o", str(net), "--hostname-prefix", "validator-",
                    "--hostname-suffix", ".validators"], check=True, capture_output=True, timeout=60)
    config = (net / "node0" / "config" / "config.toml").read_text()
    peers = next(line for line in config.splitlines() if line.startswith("persistent_peers =")).split("=", 1)[1].strip().strip('"')
    public = {who: rdx("keygen", account, "--out", f"{who}.json", cwd=net).split()[-1] for who, account in (
        ("association", "association"), ("alice", "association.board-alice"), ("bob", "association.board-bob"),
        ("carol", "association.board-carol"))}
    (net / "genesis.yaml").write_text(yaml.safe_dump({
        "chain_id": "rdx-mainnet", "genesis_time": "2026-03-01T09:00:00Z",
        "validators": [{"name": f"validator-{n}", "key_file": f"node{n}/config/priv_validator_key.json"} for n in range(4)],
        "association": {"id": "association", "name": "Regional Data Exchange Association",
                        "public_key": public["association"]},
        "board": {"threshold": 2, "seats": [{"name": s, "public_key": public[s]} for s in ("alice", "bob", "carol")]},
        "members": [], "balances": {}, "params": {}}))
    rdx("genesis", "genesis.yaml", "--out", "genesis.json", cwd=net)
    kubectl("apply", "--server-side", "-f", str(ROOT / "infra" / "overlays" / "prod" / "namespace.yaml"))
    kubectl("-n", "rdx", "create", "configmap", "validator-genesis", f"--from-file=genesis.json={net / 'genesis.json'}",
            f"--from-literal=persistent_peers={peers}")
    for n in range(4):
        kubectl("-n", "rdx", "create", "secret", "generic", f"validator-{n}-key",
                f"--from-file=node_key.json={net / f'node{n}' / 'config' / 'node_key.json'}",
                f"--from-file=priv_validator_key.json={net / f'node{n}' / 'config' / 'priv_validator_key.json'}")
    return net


@pytest.fixture(scope="module")
def applied(kubectl, rendered, prod_network):
    """Every overlay applied for real, and the Secrets the overlays and docs/operations.md name
    (the validators' as the docs make them, the others with a placeholder value)."""
    kubectl.apply([ns for docs in rendered.values() for ns in namespaces(docs)])
    for docs in rendered.values():
        kubectl.apply([d for d in docs if d["kind"] != "Namespace"])
    others = [(ns, name) for ns in ASSOCIATION for name in ("gateway-node-key", "gateway-store", "rdx-relay", "rdx-gateway")]
    for ns in MEMBERS.values():
        others += [(ns, "compute-node-key"), (ns, "kafka-user"), (ns, "kafka-ca")]
    kubectl.apply([{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns},
                    "stringData": {"x": "secret"}} for ns, name in others])
    return [("rdx", name) for name in VALIDATOR_KEYS] + others


def test_the_genesis_and_keys_made_as_the_docs_say_are_what_the_prod_overlays_read(kubectl, rendered, prod_network, applied):
    genesis = json.loads(json.loads(kubectl("-n", "rdx", "get", "configmap", "validator-genesis", "-o", "json").stdout)
                         ["data"]["genesis.json"])
    config = next(d for d in rendered["prod"] if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("rdx-config"))
    assert genesis["chain_id"] == config["data"]["RDX_CHAIN_ID"]
    assert genesis["app_state"], "rdx genesis writes the app state InitChain needs"
    validators = {v["pub_key"]["value"] for v in genesis["validators"]}
    for n in range(4):
        secret = json.loads(kubectl("-n", "rdx", "get", "secret", f"validator-{n}-key", "-o", "json").stdout)
        key = json.loads(base64.b64decode(secret["data"]["priv_validator_key.json"]))
        assert key["pub_key"]["value"] in validators
        validators.discard(key["pub_key"]["value"])
    assert not validators  # each genesis validator's key is in exactly one Secret
    # what the validators and their key Jobs mount is what was made
    sts = next(d for d in rendered["prod"] if d["kind"] == "StatefulSet")
    genesis_volume = next(v for v in sts["spec"]["template"]["spec"]["volumes"] if v["name"] == "genesis")
    assert genesis_volume["configMap"]["name"] == "validator-genesis"
    for job in (d for d in rendered["prod-validator-keys"] if d["kind"] == "Job"):
        n = job["metadata"]["name"].rsplit("-", 1)[1]
        (secret,) = [v["secret"] for v in job["spec"]["template"]["spec"]["volumes"] if "secret" in v]
        assert secret["secretName"] == f"validator-{n}-key"
        assert {i["key"] for i in secret["items"]} == {"node_key.json", "priv_validator_key.json"}


def accounts(rendered) -> list[str]:
    """Every service account pods of the overlays run as: the ones they make, and `default` of
    every namespace (the workloads that name none)."""
    found = {f"{d['metadata']['namespace']}/{d['metadata']['name']}"
             for docs in rendered.values() for d in docs if d["kind"] == "ServiceAccount"}
    found |= {f"{ns['metadata']['name']}/default" for docs in rendered.values() for ns in namespaces(docs)}
    return sorted(found)


def test_no_account_reads_a_secret_of_another_member_the_association_or_a_validator(kubectl, rendered, applied):
    every = accounts(rendered)
    assert {"rdx-dev-example/compute-example", "rdx-dev-other/compute-other", "rdx/default", "rdx-dev/default"} <= set(every)
    questions = [(account, verb, f"secrets/{name}" if verb == "get" else "secrets", ns)
                 for account in every for ns, name in applied for verb in ("get", "list", "watch")
                 if ns != account.split("/")[0]]
    with ThreadPoolExecutor(4) as pool:  # one kubectl each: asked side by side
        answers = list(pool.map(lambda q: kubectl.can_i(*q), questions))
    allowed = [f"{a} may {verb} {target} in {ns}" for (a, verb, target, ns), yes in zip(questions, answers) if yes]
    assert not allowed, "\n".join(allowed)


def test_no_account_reads_even_its_own_namespace_s_secrets(kubectl, rendered, applied):
    """Not asked by the bar, but true: no workload reads a Secret through the API (they are
    mounted), so none may; the runner makes and deletes its Jobs' Secrets without reading one."""
    allowed = [f"{account} may {verb} secrets in its namespace" for account in accounts(rendered)
               for verb in ("get", "list", "watch") if kubectl.can_i(account, verb, "secrets", account.split("/")[0])]
    assert not allowed, "\n".join(allowed)


def test_the_job_runner_creates_jobs_in_its_own_namespace_only(kubectl, rendered, applied):
    every_namespace = sorted({ns["metadata"]["name"] for docs in rendered.values() for ns in namespaces(docs)})
    for member, own in MEMBERS.items():
        runner = f"{own}/compute-{member}"
        assert kubectl.can_i(runner, "create", "jobs.batch", own)
        assert kubectl.can_i(runner, "delete", "jobs.batch", own)
        assert kubectl.can_i(runner, "create", "secrets", own)   # its Jobs' one-time tokens
        for ns in every_namespace:
            if ns != own:
                for verb, resource in (("create", "jobs.batch"), ("get", "jobs.batch"), ("create", "secrets")):
                    assert not kubectl.can_i(runner, verb, resource, ns), f"{runner} may {verb} {resource} in {ns}"
            # A pod it could make could mount any Secret of the namespace; only Jobs it may make.
            for verb, resource in (("create", "pods"), ("create", "deployments.apps"), ("create", "cronjobs.batch"),
                                   ("create", "roles.rbac.authorization.k8s.io"),
                                   ("create", "rolebindings.rbac.authorization.k8s.io"), ("create", "pods/exec")):
                assert not kubectl.can_i(runner, verb, resource, ns), f"{runner} may {verb} {resource} in {ns}"
    # the other accounts make no Job anywhere
    for account in accounts(rendered):
        if account.split("/")[1] == "default":
            for ns in every_namespace:
                assert not kubectl.can_i(account, "create", "jobs.batch", ns), f"{account} may create Jobs in {ns}"


def test_a_real_read_as_a_member_s_account_is_refused(kubectl, applied, tmp_path):
    """What can-i answered, seen from a request: the runner's account reading a validator's key."""
    result = kubectl("get", "secret", VALIDATOR_KEYS[0], "-n", "rdx", "--as=system:serviceaccount:rdx-dev-example:compute-example",
                     "--as-group=system:serviceaccounts", "--as-group=system:serviceaccounts:rdx-dev-example", ok=False)
    assert result.returncode != 0
    assert 'cannot get resource "secrets" in API group "" in the namespace "rdx"' in result.stderr, result.stderr


# --------------------------------------------------------------------------------------------
# Keys: one Secret per validator, mounted by that validator's key Job only


def secret_volumes(docs: list[dict]) -> dict[str, set[str]]:
    """workload -> the Secrets its pods mount (volumes and projected sources)."""
    out = {}
    for d in docs:
        if d["kind"] in check.WORKLOAD_KINDS:
            names = set()
            for volume in check.pod_spec(d).get("volumes", []):
                if "secret" in volume:
                    names.add(volume["secret"]["secretName"])
                for source in volume.get("projected", {}).get("sources", []):
                    if "secret" in source:
                        names.add(source["secret"]["name"])
            out[f"{d['metadata']['namespace']}/{d['kind']}/{d['metadata']['name']}"] = names
    return out


def test_one_secret_per_validator_key_and_no_validator_pod_mounts_one(rendered):
    keys = secret_volumes(rendered["prod-validator-keys"])
    assert sorted(keys.values(), key=sorted) == [{name} for name in VALIDATOR_KEYS], keys
    for name in ("dev", "prod"):
        for workload, mounted in secret_volumes(rendered[name]).items():
            assert not [m for m in mounted if "validator" in m], (workload, mounted)
            if "/gateway" not in workload:  # the association's node key, for the audit anchors
                assert not [m for m in mounted if m.endswith("-key")], (workload, mounted)
    # the claim each Job writes is the one the StatefulSet's pod of the same ordinal uses
    sts = next(d for d in rendered["prod"] if d["kind"] == "StatefulSet")
    claims = {d["metadata"]["name"] for d in rendered["prod-validator-keys"] if d["kind"] == "PersistentVolumeClaim"}
    template = sts["spec"]["volumeClaimTemplates"][0]
    assert template["metadata"]["name"] == "chain"
    assert claims == {f"chain-{sts['metadata']['name']}-{n}" for n in range(sts["spec"]["replicas"])}


def test_a_member_s_site_holds_only_its_own_node_keys_and_data(rendered):
    for member, ns in MEMBERS.items():
        docs = rendered[f"dev-site-{member}"]
        assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {ns}
        assert [n["metadata"]["name"] for n in namespaces(docs)] == [ns]
        assert {d["kind"] for d in docs if d["kind"] in check.WORKLOAD_KINDS} == {"Deployment"}
        assert secret_volumes(docs) == {f"{ns}/Deployment/compute-{member}": {"compute-node-key", "kafka-user", "kafka-ca"}}
    for name in ("dev", "prod"):
        assert not [d for d in rendered[name] if d["kind"] == "Deployment" and "compute" in d["metadata"]["name"]]


# --------------------------------------------------------------------------------------------
# NetworkPolicies, evaluated as the API documents them (a CNI plugin enforces the same rules)


class Pod:
    def __init__(self, name: str, namespace: str, labels: dict, ports: dict[str, int] | None = None,
                 ip: str = "10.244.1.10"):
        self.name, self.namespace, self.labels, self.ports, self.ip = name, namespace, labels, ports or {}, ip


EXTERNAL = Pod("a host on the internet", "", {}, ip="203.0.113.5")  # matches no pod or namespace selector
APISERVER = Pod("the API server", "", {}, ip="10.0.0.1")  # dev-site-example's address for it


def selects(selector: dict | None, labels: dict) -> bool:
    selector = selector or {}
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        value, present = labels.get(e["key"]), e["key"] in labels
        if not {"In": present and value in e.get("values", []), "NotIn": not present or value not in e.get("values", []),
                "Exists": present, "DoesNotExist": not present}[e["operator"]]:
            return False
    return True


class Network:
    def __init__(self, policies: list[dict], namespace_labels: dict[str, dict]):
        self.policies, self.namespace_labels = policies, namespace_labels

    def _peer(self, peer: dict, other: Pod, policy_ns: str) -> bool:
        if "ipBlock" in peer:
            address, block = ipaddress.ip_address(other.ip), peer["ipBlock"]
            return address in ipaddress.ip_network(block["cidr"]) and not any(
                address in ipaddress.ip_network(e) for e in block.get("except", []))
        if not other.namespace:  # outside the cluster: no pod or namespace selector names it
            return False
        if "namespaceSelector" in peer:
            if not selects(peer["namespaceSelector"], self.namespace_labels[other.namespace]):
                return False
        elif other.namespace != policy_ns:
            return False
        return selects(peer.get("podSelector"), other.labels)

    def _allows(self, pod: Pod, other: Pod, port: int, direction: str, port_owner: Pod) -> bool:
        key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
        if not pod.namespace:  # outside the cluster: not the policies' business
            return True
        chosen = [p for p in self.policies if p["metadata"]["namespace"] == pod.namespace
                  and direction in p["spec"].get("policyTypes", ["Ingress"]) and selects(p["spec"]["podSelector"], pod.labels)]
        if not chosen:
            return True
        for policy in chosen:
            for rule in policy["spec"].get(key) or []:
                peers = rule.get(peers_key)
                if peers and not any(self._peer(peer, other, pod.namespace) for peer in peers):
                    continue
                ports = rule.get("ports")
                if not ports or any(port_owner.ports.get(p["port"], p["port"]) == port for p in ports):
                    return True
        return False

    def allowed(self, src: Pod, dst: Pod, port: int) -> bool:
        return self._allows(src, dst, port, "Egress", dst) and self._allows(dst, src, port, "Ingress", dst)


@pytest.fixture(scope="module")
def network(rendered) -> tuple[Network, dict[str, Pod]]:
    docs = rendered["dev"] + rendered["dev-site-example"] + rendered["dev-site-other"]
    ns_labels = {ns["metadata"]["name"]: {**ns["metadata"].get("labels", {}), "kubernetes.io/metadata.name": ns["metadata"]["name"]}
                 for ns in namespaces(docs)}
    for name in ("kube-system", "ingress-nginx", "monitoring"):
        ns_labels[name] = {"kubernetes.io/metadata.name": name}
    pods = {}
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet"):
            spec = check.pod_spec(d)
            ports = {p["name"]: p["containerPort"] for c in spec["containers"] + spec.get("initContainers", [])
                     for p in c.get("ports", []) if "name" in p}
            pods[d["metadata"]["name"]] = Pod(d["metadata"]["name"], d["metadata"]["namespace"],
                                              d["spec"]["template"]["metadata"]["labels"], ports)
    for member, ns in MEMBERS.items():
        pods[f"worker-{member}"] = Pod(f"worker-{member}", ns, {"app.kubernetes.io/name": "compute-worker",
                                                                 "rdx.io/member": member})
    pods["kafka"] = Pod("kafka", "rdx-dev", {"strimzi.io/cluster": "rdx-kafka", "strimzi.io/name": "rdx-kafka-kafka"},
                        {"tls": 9093})
    pods["dns"] = Pod("dns", "kube-system", {"k8s-app": "kube-dns"})
    pods["ingress"] = Pod("ingress", "ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"})
    pods["prometheus"] = Pod("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"})
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    # The policy Strimzi writes for the listener from its networkPolicyPeers (the Kafka resource).
    kafka = next(d for d in docs if d["kind"] == "Kafka")
    (listener,) = kafka["spec"]["kafka"]["listeners"]
    policies.append({"metadata": {"name": "strimzi-listener", "namespace": kafka["metadata"]["namespace"]},
                     "spec": {"podSelector": {"matchLabels": {"strimzi.io/name": "rdx-kafka-kafka"}},
                              "policyTypes": ["Ingress"],
                              "ingress": [{"from": listener["networkPolicyPeers"], "ports": [{"port": listener["port"]}]}]}})
    return Network(policies, ns_labels), pods


NEEDED = [  # (from, to, port): the flows of the table in infra/base/networkpolicies.yaml and infra/site/
    ("ingress", "gateway", 8000), ("gateway", "catalog", 8001), ("gateway", "billing", 8003),
    ("gateway", "validator", 26657), ("catalog", "validator", 26657), ("billing", "validator", 26657),
    ("compute-example", "validator", 26657), ("compute-other", "validator", 26657),
    ("validator", "kafka", 9093), ("gateway", "kafka", 9093), ("catalog", "kafka", 9093), ("billing", "kafka", 9093),
    ("compute-example", "kafka", 9093), ("compute-other", "kafka", 9093),
    ("compute-example", "compute-other", 50051), ("compute-other", "compute-example", 50051),
    ("EXTERNAL", "validator", 26656), ("validator", "EXTERNAL", 26656), ("gateway", "EXTERNAL", 443),
    ("gateway", "EXTERNAL", 5432), ("gateway", "EXTERNAL", 6379),
    ("worker-example", "compute-example", 50052), ("compute-example", "APISERVER", 6443),
    ("prometheus", "gateway", 8000), ("prometheus", "billing", 8003), ("prometheus", "compute-example", 8002),
    ("prometheus", "validator", 8004), ("prometheus", "validator", 26660),
] + [(p, "dns", 53) for p in ("gateway", "catalog", "billing", "validator", "compute-example", "compute-other")]

REFUSED = [  # what a hostile pod or site must not reach
    ("EXTERNAL", "gateway", 8000),          # only through the Ingress
    ("EXTERNAL", "billing", 8003), ("compute-example", "billing", 8003), ("catalog", "billing", 8003),
    ("EXTERNAL", "catalog", 8001), ("compute-example", "catalog", 8001),
    ("EXTERNAL", "validator", 26657),       # RPC: in the cluster, to the rdx services only
    ("EXTERNAL", "validator", 26658), ("gateway", "validator", 26658), ("compute-example", "validator", 8004),
    ("EXTERNAL", "kafka", 9093), ("worker-example", "kafka", 9093), ("ingress", "kafka", 9093),
    ("EXTERNAL", "compute-example", 50051), ("gateway", "compute-example", 8002), ("validator", "compute-example", 50051),
    ("worker-example", "compute-other", 50052),   # a member's worker reaches its own node only
    ("worker-other", "compute-example", 50052), ("worker-example", "EXTERNAL", 443),
    ("compute-example", "EXTERNAL", 443), ("compute-example", "EXTERNAL", 6443), ("compute-other", "APISERVER", 443),
    ("compute-example", "worker-other", 50052), ("gateway", "APISERVER", 6443), ("gateway", "catalog", 50051),
    ("catalog", "EXTERNAL", 443), ("billing", "EXTERNAL", 443), ("validator", "EXTERNAL", 443),
    ("gateway", "compute-example", 50051),
]


def pod(pods: dict[str, Pod], name: str) -> Pod:
    return {"EXTERNAL": EXTERNAL, "APISERVER": APISERVER}.get(name) or pods[name]


@pytest.mark.parametrize("src,dst,port", NEEDED)
def test_a_flow_the_deployment_needs_is_allowed(network, src, dst, port):
    net, pods = network
    assert net.allowed(pod(pods, src), pod(pods, dst), port), f"{src} -> {dst}:{port} refused"


@pytest.mark.parametrize("src,dst,port", REFUSED)
def test_a_flow_nobody_needs_is_refused(network, src, dst, port):
    net, pods = network
    assert not net.allowed(pod(pods, src), pod(pods, dst), port), f"{src} -> {dst}:{port} allowed"


def test_every_rdx_pod_is_selected_by_a_policy_with_egress(network):
    net, pods = network
    for name, pod in pods.items():
        if pod.namespace in ("rdx-dev", *MEMBERS.values()) and name != "kafka":
            assert any(p["metadata"]["namespace"] == pod.namespace and "Egress" in p["spec"].get("policyTypes", [])
                       and selects(p["spec"]["podSelector"], pod.labels) for p in net.policies), name


# --------------------------------------------------------------------------------------------
# Settings: every variable a pod gets is one its service reads, and what it needs is there


def settings_of(image: str) -> set[str]:
    """The RDX_* variables the service of an image reads (its settings and the chassis')."""
    from services.common.settings import KafkaSecurity
    from services.common.verified import TrustSettings

    service = image.rsplit("/", 1)[-1].split(":")[0].removeprefix("rdx-")
    cls = {"gateway": lambda: __import__("services.gateway.settings", fromlist=["x"]).GatewaySettings,
           "catalog": lambda: __import__("services.catalog.app", fromlist=["x"]).CatalogSettings,
           "billing": lambda: __import__("services.billing.__main__", fromlist=["x"]).BillingSettings,
           "compute": lambda: __import__("services.compute.settings", fromlist=["x"]).ComputeSettings,
           "consensus": lambda: __import__("services.consensus.__main__", fromlist=["x"]).ConsensusSettings}[service]()
    names = {f"RDX_{f.upper()}" for f in cls.model_fields}
    names |= {f"RDX_KAFKA_{f.upper()}" for f in KafkaSecurity.model_fields}
    names |= {f"RDX_{f.upper()}" for f in TrustSettings.model_fields}
    return names


def environment(container: dict, docs: list[dict]) -> dict[str, str]:
    env = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name)
        env.update(config["data"])
    env.update({e["name"]: e.get("value", "<from a reference>") for e in container.get("env", [])})
    return env


def rdx_containers(docs: list[dict]):
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet"):
            spec = check.pod_spec(d)
            for c in spec["containers"] + spec.get("initContainers", []):
                if c.get("restartPolicy") == "Always" or c in spec["containers"]:
                    if "/cometbft" not in c["image"]:
                        yield d["metadata"]["name"], c, spec


@pytest.mark.parametrize("overlay", ["dev", "prod", "dev-site-example"])
def test_every_variable_a_pod_gets_is_one_its_service_reads(rendered, overlay):
    unknown = []
    for workload, container, _ in rdx_containers(rendered[overlay]):
        known = settings_of(container["image"])
        unknown += [f"{workload}: {name}" for name in environment(container, rendered[overlay])
                    if name.startswith("RDX_") and name not in known]
    assert not unknown, unknown


def test_each_service_gets_what_it_needs(rendered):
    def env_of(overlay: str, name: str) -> dict[str, str]:
        for workload, container, _ in rdx_containers(rendered[overlay]):
            if workload == name:
                return environment(container, rendered[overlay])
        raise AssertionError(f"{overlay}: no {name}")

    for overlay in ("dev", "prod"):
        gateway = env_of(overlay, "gateway")
        assert gateway["RDX_CATALOG_URL"] == "http://catalog:8001" and gateway["RDX_BILLING_URL"] == "http://billing:8003"
        assert gateway["FORWARDED_ALLOW_IPS"]  # uvicorn's trusted proxies: the Ingress' X-Forwarded-Proto
        validator = env_of(overlay, "validator")
        assert validator["RDX_COMETBFT_RPC"] == "http://127.0.0.1:26657"  # its own node
    prod = env_of("prod", "gateway")
    for name in ("RDX_KEY_FILE", "RDX_GATEWAY_DATABASE_URL", "RDX_GATEWAY_REDIS_URL", "RDX_TRUSTED_GENESIS"):
        assert name in prod, name
    # dev: one gateway, on SQLite, and no PostgreSQL or key it could not have
    dev = env_of("dev", "gateway")
    assert not {"RDX_KEY_FILE", "RDX_GATEWAY_DATABASE_URL", "RDX_GATEWAY_REDIS_URL"} & set(dev)
    assert not [d for d in rendered["dev"] if d["kind"] == "HorizontalPodAutoscaler" and d["metadata"]["name"] == "gateway"]
    assert next(d for d in rendered["dev"] if d["kind"] == "Deployment" and d["metadata"]["name"] == "gateway")["spec"]["replicas"] == 1
    compute = env_of("dev-site-example", "compute-example")
    assert compute["RDX_MEMBER_ID"] == "example" and compute["RDX_DATASETS"].startswith("/var/lib/rdx")
    assert compute["RDX_KAFKA_BOOTSTRAP"] == "rdx-kafka-kafka-bootstrap.rdx-dev.svc:9093"
    assert compute["RDX_COMETBFT_RPC"] == "http://consensus.rdx-dev.svc:26657"
    assert compute["RDX_CHAIN_ID"] == env_of("dev", "gateway")["RDX_CHAIN_ID"] == "rdx-dev"


def test_every_kafka_client_is_a_kafka_user_of_the_association(rendered):
    users = {d["metadata"]["name"] for d in rendered["dev"] if d["kind"] == "KafkaUser"}
    for overlay in ("dev", "dev-site-example"):
        for workload, container, spec in rdx_containers(rendered[overlay]):
            env = environment(container, rendered[overlay])
            assert env["RDX_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL", workload
            user = env["RDX_KAFKA_SASL_USERNAME"].replace("$(RDX_MEMBER_ID)", env.get("RDX_MEMBER_ID", ""))
            assert user in users, (workload, user)
            mounted = {v["name"]: v for v in spec["volumes"]}["kafka-user"]["secret"]["secretName"]
            # the association's pods mount Strimzi's Secret of their own user; a site, its copy of it
            assert mounted == (user if overlay == "dev" else "kafka-user"), (workload, mounted)


def test_the_validators_readiness_does_not_depend_on_kafka(rendered):
    sts = next(d for d in rendered["prod"] if d["kind"] == "StatefulSet")
    for container in sts["spec"]["template"]["spec"]["initContainers"] + sts["spec"]["template"]["spec"]["containers"]:
        probe = container.get("readinessProbe")
        if probe:  # /readyz of the consensus service includes the relay's Kafka connection
            assert probe["httpGet"]["path"] in ("/healthz", "/health"), container["name"]
