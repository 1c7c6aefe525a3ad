"""``rdx ops``: the SRE's commands for an rdx deployment on Kubernetes, through the official
``kubernetes`` client (its API client comes from services/compute/k8s_runner.py, which also holds
the compute node's Kubernetes Job runner).

    rdx ops status  --namespace rdx            every component, healthy or not (exit 1 if not)
    rdx ops restart gateway --namespace rdx    a safe rolling restart of one workload

What ``status`` reads (the labels are those of infra/, see infra/README.md):

- every Deployment and StatefulSet labelled ``app.kubernetes.io/name`` and its pods (selected by
  the workload's own selector): ready or not, and why not (a container's waiting reason);
- for every validator pod (StatefulSet ``validator``): the chain height and ``catching_up`` from
  its CometBFT RPC (``/status`` on the port named ``rpc``), and the relay position
  ``rdx_relay_published_height`` from the consensus sidecar's ``/metrics`` (port ``http``);
- for every other pod with a port named ``http``: ``rdx_kafka_consumer_lag_events`` and
  ``rdx_service_up`` from its ``/metrics``;
- the Strimzi ``Kafka`` resources' ``Ready`` condition, when the cluster serves that API.

Pods are reached through the API server's pod proxy (``/api/v1/namespaces/NS/pods/NAME:PORT/
proxy/PATH``), one pod at a time, so nothing has to be port-forwarded and the SRE needs only the
RBAC of infra/rbac/ops.yaml. The thresholds are those of the alerts in
infra/base/monitoring/alerts.yaml, so the command and the alerts agree on what "unhealthy" is.

``restart`` does what ``kubectl rollout restart`` does (it sets the pod template annotation
``kubectl.kubernetes.io/restartedAt``) and then waits for the rollout the way ``kubectl rollout
status`` does. It refuses to restart the validators when taking one of them down would leave
2/3 or less of them ready: CometBFT needs more than 2/3 of the voting power to commit a block.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import typer

# The API client, and the Job client the compute node's Kubernetes runner uses, live with the
# compute service (a service cannot import rdx/); rdx ops re-uses them from there.
from services.compute.k8s_runner import KubeError, api_client, api_error

NAME_LABEL = "app.kubernetes.io/name"
MEMBER_LABEL = "rdx.io/member"
VALIDATOR = "validator"
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"

# The alerts' thresholds (infra/base/monitoring/alerts.yaml).
MAX_CONSUMER_LAG = 1000     # RdxConsumerLagHigh
MAX_RELAY_BEHIND = 20       # RdxRelayBehind
MAX_HEIGHT_LAG = 10         # a validator this far behind the highest one is not keeping up


class OpsError(KubeError):
    """The API server could not be reached, or an operation was refused or did not finish."""


# --------------------------------------------------------------------------------------------
# Status


@dataclass
class PodState:
    name: str
    ready: bool
    phase: str
    restarts: int = 0
    reason: str = ""  # why it is not ready, as the kubelet reports it


@dataclass
class ValidatorState:
    pod: str
    height: int | None = None
    catching_up: bool | None = None
    relay_height: int | None = None
    error: str = ""


@dataclass
class WorkloadState:
    kind: str
    name: str
    component: str
    member: str | None
    desired: int
    ready: int
    updated: int
    pods: list[PodState] = field(default_factory=list)
    validators: list[ValidatorState] = field(default_factory=list)
    lag: dict[str, int] = field(default_factory=dict)  # topic -> events, the largest over the pods
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass
class KafkaState:
    name: str
    ready: bool | None
    message: str = ""


@dataclass
class Report:
    namespace: str
    server_version: str
    workloads: list[WorkloadState]
    kafka: list[KafkaState]
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # namespace-wide ones

    @property
    def unhealthy(self) -> list[str]:
        found = [f"{w.name}: {p}" for w in self.workloads for p in w.problems]
        found += [f"kafka {k.name}: {k.message or 'not ready'}" for k in self.kafka if k.ready is False]
        return found + self.problems

    @property
    def healthy(self) -> bool:
        return not self.unhealthy

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "healthy": self.healthy, "unhealthy": self.unhealthy}


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text format -> {sample name: [(labels, value)]}."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def _named_port(pod, name: str) -> int | None:
    """The number of the pod's container port called ``name`` (init containers: native sidecars)."""
    containers = list(pod.spec.containers or []) + list(pod.spec.init_containers or [])
    for container in containers:
        for port in container.ports or []:
            if port.name == name:
                return port.container_port
    return None


def _pod_state(pod) -> PodState:
    """Ready or not, and why not: the waiting or terminated reason of its containers and native
    sidecars (init containers that ran to completion are not counted)."""
    conditions = {c.type: c.status for c in (pod.status.conditions or [])}
    sidecars = {c.name for c in (pod.spec.init_containers or []) if c.restart_policy == "Always"}
    statuses = [cs for cs in (pod.status.init_container_statuses or []) if cs.name in sidecars]
    statuses += list(pod.status.container_statuses or [])
    reasons = []
    for cs in statuses:
        state = cs.state
        if cs.ready or state is None:
            continue
        if state.waiting and state.waiting.reason:
            reasons.append(f"{cs.name}: {state.waiting.reason}")
        elif state.terminated:
            reasons.append(f"{cs.name}: {state.terminated.reason or 'terminated'}")
        elif state.running:
            reasons.append(f"{cs.name}: running, not ready")
    ready = conditions.get("Ready") == "True"
    if pod.metadata.deletion_timestamp is not None:
        reasons.insert(0, "terminating")
    if not ready and not reasons:
        reasons.append(pod.status.reason or pod.status.phase or "not ready")
    return PodState(name=pod.metadata.name, ready=ready, phase=pod.status.phase or "Unknown",
                    restarts=sum(cs.restart_count or 0 for cs in statuses), reason=", ".join(reasons))


class Ops:
    """The operations on one namespace. ``api`` is a kubernetes ``ApiClient``."""

    def __init__(self, api, namespace: str, request_timeout: float = 5.0):
        from kubernetes import client

        self.api, self.namespace, self.timeout = api, namespace, request_timeout
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.version = client.VersionApi(api)

    # -- reaching pods through the API server ---------------------------------------------

    def pod_get(self, pod: str, port: int, path: str) -> str:
        """GET http://POD:PORT/PATH through the API server's pod proxy."""
        response = self.core.connect_get_namespaced_pod_proxy_with_path(
            f"{pod}:{port}", self.namespace, path.lstrip("/"), _preload_content=False, _request_timeout=self.timeout)
        return response.data.decode("utf-8", "replace")

    def pod_metrics(self, pod: str, port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
        return parse_metrics(self.pod_get(pod, port, "metrics"))

    # -- status --------------------------------------------------------------------------------

    def workloads(self) -> list[tuple[str, Any]]:
        found = [("Deployment", d) for d in self.apps.list_namespaced_deployment(
            self.namespace, label_selector=NAME_LABEL, _request_timeout=self.timeout).items]
        found += [("StatefulSet", s) for s in self.apps.list_namespaced_stateful_set(
            self.namespace, label_selector=NAME_LABEL, _request_timeout=self.timeout).items]
        return sorted(found, key=lambda kw: (kw[1].metadata.labels.get(NAME_LABEL) != VALIDATOR, kw[1].metadata.name))

    def pods_of(self, workload) -> list:
        selector = ",".join(f"{k}={v}" for k, v in (workload.spec.selector.match_labels or {}).items())
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=selector, _request_timeout=self.timeout).items
        return sorted(pods, key=lambda p: p.metadata.name)

    def status(self, max_lag: int = MAX_CONSUMER_LAG, max_relay_behind: int = MAX_RELAY_BEHIND,
               max_height_lag: int = MAX_HEIGHT_LAG) -> Report:
        try:
            server = self.version.get_code(_request_timeout=self.timeout).git_version
            workloads = self.workloads()
        except Exception as exc:  # noqa: BLE001 - any failure here means the cluster is unreachable
            raise OpsError(f"cannot read the namespace {self.namespace!r} from the Kubernetes API server: "
                           f"{api_error(exc)}") from None
        report = Report(self.namespace, server, [], self.kafka_states())
        if not workloads:
            report.problems.append(f"no rdx workloads (Deployments or StatefulSets labelled {NAME_LABEL}) in "
                                   f"namespace {self.namespace!r}")
        for kind, obj in workloads:
            report.workloads.append(self._workload_state(kind, obj, max_lag, max_relay_behind))
        validators = [v for w in report.workloads for v in w.validators if v.height is not None]
        if validators:
            top = max(v.height for v in validators)
            for w in report.workloads:
                for v in w.validators:
                    if v.height is not None and top - v.height > max_height_lag:
                        w.problems.append(f"{v.pod} is at height {v.height}, {top - v.height} blocks behind the "
                                          f"highest validator ({top})")
        return report

    def _workload_state(self, kind: str, obj, max_lag: int, max_relay_behind: int) -> WorkloadState:
        labels = obj.metadata.labels or {}
        desired = obj.spec.replicas if obj.spec.replicas is not None else 1
        st = obj.status
        state = WorkloadState(kind=kind, name=obj.metadata.name, component=labels.get(NAME_LABEL, "?"),
                              member=labels.get(MEMBER_LABEL), desired=desired, ready=st.ready_replicas or 0,
                              updated=st.updated_replicas or 0)
        pods = self.pods_of(obj)
        state.pods = [_pod_state(p) for p in pods]
        if desired == 0:
            state.notes.append("scaled to 0")
        elif state.ready < desired:
            state.problems.append(f"{state.ready}/{desired} ready")
        if (obj.status.observed_generation or 0) < (obj.metadata.generation or 0) or state.updated < desired:
            state.notes.append(f"rollout in progress: {state.updated}/{desired} updated")
        for pod in state.pods:
            if not pod.ready:
                state.problems.append(f"pod {pod.name} not ready ({pod.reason})")
        if state.component == VALIDATOR:
            for pod in pods:
                state.validators.append(self._validator_state(pod, state, max_relay_behind))
        else:
            for pod in pods:
                self._service_metrics(pod, state, max_lag)
        return state

    def _validator_state(self, pod, state: WorkloadState, max_relay_behind: int) -> ValidatorState:
        name = pod.metadata.name
        v = ValidatorState(pod=name)
        if not pod.status.pod_ip:
            v.error = "no pod IP yet"
            state.problems.append(f"{name}: {v.error}")
            return v
        rpc = _named_port(pod, "rpc")
        try:
            if rpc is None:
                raise OpsError("no container port named 'rpc'")
            info = json.loads(self.pod_get(name, rpc, "status"))
            sync = (info.get("result") or info)["sync_info"]  # JSON-RPC envelope, or the bare result
            v.height, v.catching_up = int(sync["latest_block_height"]), bool(sync["catching_up"])
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            v.error = f"CometBFT RPC: {api_error(exc) if not isinstance(exc, OpsError) else exc}"
            state.problems.append(f"{name}: {v.error}")
            return v
        if v.catching_up:
            state.problems.append(f"{name} is catching up (block sync) at height {v.height}")
        http = _named_port(pod, "http")
        try:
            if http is None:
                raise OpsError("no container port named 'http' (the consensus sidecar)")
            samples = self.pod_metrics(name, http)
        except Exception as exc:  # noqa: BLE001
            message = api_error(exc) if not isinstance(exc, OpsError) else str(exc)
            state.problems.append(f"{name}: consensus metrics unreachable: {message}")
            return v
        relay = samples.get("rdx_relay_published_height")
        if not relay:
            state.problems.append(f"{name}: the consensus sidecar exports no rdx_relay_published_height")
            return v
        v.relay_height = int(max(value for _, value in relay))
        chain = samples.get("rdx_chain_height")
        chain_height = int(max(value for _, value in chain)) if chain else v.height
        if chain_height - v.relay_height > max_relay_behind:
            state.problems.append(f"{name}: relay at height {v.relay_height}, {chain_height - v.relay_height} blocks "
                                  f"behind the chain ({chain_height}); more than {max_relay_behind}")
        return v

    def _service_metrics(self, pod, state: WorkloadState, max_lag: int) -> None:
        name = pod.metadata.name
        http = _named_port(pod, "http")
        if http is None or not pod.status.pod_ip:
            return
        try:
            samples = self.pod_metrics(name, http)
        except Exception as exc:  # noqa: BLE001
            state.problems.append(f"{name}: metrics unreachable: {api_error(exc)}")
            return
        for labels, value in samples.get("rdx_service_up", []):
            if value < 1:
                state.problems.append(f"{name}: rdx_service_up is 0 (the service reports itself not ready)")
        for labels, value in samples.get("rdx_kafka_consumer_lag_events", []):
            topic = labels.get("topic", "?")
            state.lag[topic] = max(state.lag.get(topic, 0), int(value))
            if value > max_lag:
                state.problems.append(f"{name}: consumer lag on {topic} is {int(value)} events (more than {max_lag})")

    def kafka_states(self) -> list[KafkaState]:
        from kubernetes.client.exceptions import ApiException

        try:
            found = self.custom.list_namespaced_custom_object("kafka.strimzi.io", "v1beta2", self.namespace, "kafkas",
                                                              _request_timeout=self.timeout)
        except ApiException as exc:
            if exc.status == 404:
                return []  # this cluster has no Strimzi: reported as a note by the caller
            return [KafkaState("?", False, f"cannot read Strimzi Kafka resources: {api_error(exc)}")]
        states = []
        for item in found.get("items", []):
            conditions = {c.get("type"): c for c in (item.get("status") or {}).get("conditions", [])}
            ready = conditions.get("Ready", {})
            ok = ready.get("status") == "True"
            message = "" if ok else (ready.get("message") or ready.get("reason") or "no Ready condition yet")
            states.append(KafkaState(item["metadata"]["name"], ok, message))
        return states

    # -- restart -------------------------------------------------------------------------------

    def find_workload(self, service: str) -> tuple[str, Any]:
        from kubernetes.client.exceptions import ApiException

        for kind, read in (("Deployment", self.apps.read_namespaced_deployment),
                           ("StatefulSet", self.apps.read_namespaced_stateful_set)):
            try:
                return kind, read(service, self.namespace, _request_timeout=self.timeout)
            except ApiException as exc:
                if exc.status != 404:
                    raise OpsError(f"cannot read {kind.lower()}/{service}: {api_error(exc)}") from None
            except Exception as exc:  # noqa: BLE001 - the API server cannot be reached
                raise OpsError(f"cannot read {kind.lower()}/{service}: {api_error(exc)}") from None
        try:
            workloads = self.workloads()
        except Exception as exc:  # noqa: BLE001
            raise OpsError(f"cannot list the workloads of namespace {self.namespace!r}: {api_error(exc)}") from None
        matches = [(k, w) for k, w in workloads if (w.metadata.labels or {}).get(NAME_LABEL) == service]
        if len(matches) == 1:
            return matches[0]
        if matches:
            names = ", ".join(w.metadata.name for _, w in matches)
            raise OpsError(f"{service!r} names {len(matches)} workloads ({names}): restart one of them by name")
        raise OpsError(f"no Deployment or StatefulSet {service!r} in namespace {self.namespace!r}")

    def check_quorum(self, sts) -> str | None:
        """Why restarting this validator StatefulSet would halt the chain, or None when it is safe.

        The rolling update takes one validator down at a time; CometBFT commits only with more
        than 2/3 of the voting power (n = 3f + 1), counted here as pods, every validator having
        the same power in an rdx network."""
        total = sts.spec.replicas if sts.spec.replicas is not None else 1
        ready = sum(1 for p in self.pods_of(sts) if _pod_state(p).ready)
        remaining = ready - 1 if ready else 0
        if total and 3 * remaining <= 2 * total:
            return (f"{ready} of {total} validators are ready; restarting them one at a time leaves {remaining} "
                    f"while one is down, not more than 2/3 of {total}: the chain would halt. Bring the others back "
                    f"first (`rdx ops status`), or pass --force to accept a halt")
        return None

    def restart(self, service: str, timeout: float = 600.0, poll: float = 1.0, force: bool = False,
                log: Callable[[str], None] = print) -> str:
        """Roll every pod of one workload, one at a time, and wait until the rollout is done."""
        kind, obj = self.find_workload(service)
        name = obj.metadata.name
        if kind == "StatefulSet" and (obj.metadata.labels or {}).get(NAME_LABEL) == VALIDATOR and not force:
            reason = self.check_quorum(obj)
            if reason:
                raise OpsError(f"refusing to restart statefulset/{name}: {reason}")
        if kind == "Deployment" and obj.spec.paused:
            raise OpsError(f"deployment/{name} is paused: its rollout would never progress (kubectl rollout resume)")
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: now}}}}}
        patch = self.apps.patch_namespaced_deployment if kind == "Deployment" else self.apps.patch_namespaced_stateful_set
        try:
            patched = patch(name, self.namespace, body, _request_timeout=self.timeout)
        except Exception as exc:  # noqa: BLE001
            raise OpsError(f"cannot patch {kind.lower()}/{name}: {api_error(exc)}") from None
        log(f"{kind.lower()}/{name}: restart requested at {now} (generation {patched.metadata.generation})")
        self.wait_rollout(kind, name, patched.metadata.generation, timeout, poll, log)
        return name

    def wait_rollout(self, kind: str, name: str, generation: int, timeout: float, poll: float = 1.0,
                     log: Callable[[str], None] = print) -> None:
        """Like `kubectl rollout status`: done when the controller has seen the new template and
        every replica is updated and ready (and, for a Deployment, no old one is left)."""
        read = self.apps.read_namespaced_deployment_status if kind == "Deployment" \
            else self.apps.read_namespaced_stateful_set_status
        deadline = time.monotonic() + timeout
        last = None
        while True:
            try:
                obj = read(name, self.namespace, _request_timeout=self.timeout)
            except Exception as exc:  # noqa: BLE001 - a blip of the API server: try again until the deadline
                if time.monotonic() > deadline:
                    raise OpsError(f"cannot read {kind.lower()}/{name}: {api_error(exc)}") from None
                time.sleep(poll)
                continue
            done, progress = rollout_progress(kind, obj, generation)
            if progress != last:
                log(f"{kind.lower()}/{name}: {progress}")
                last = progress
            if done:
                return
            if time.monotonic() > deadline:
                raise OpsError(f"the rollout of {kind.lower()}/{name} did not finish within {timeout:.0f}s: {progress}")
            time.sleep(poll)


def rollout_progress(kind: str, obj, generation: int) -> tuple[bool, str]:
    """(done, what it is waiting for), following kubectl's rollout status for each kind."""
    spec, st = obj.spec, obj.status
    desired = spec.replicas if spec.replicas is not None else 1
    if (st.observed_generation or 0) < generation:
        return False, "waiting for the controller to see the new pod template"
    if kind == "Deployment":
        for condition in st.conditions or []:
            if condition.type == "Progressing" and condition.reason == "ProgressDeadlineExceeded":
                raise OpsError(f"deployment/{obj.metadata.name} exceeded its progress deadline: {condition.message}")
        updated, replicas, available = st.updated_replicas or 0, st.replicas or 0, st.available_replicas or 0
        if updated < desired:
            return False, f"{updated} of {desired} replicas updated"
        if replicas > updated:
            return False, f"{replicas - updated} old replicas pending termination"
        if available < updated:
            return False, f"{available} of {updated} updated replicas available"
        return True, f"rolled out: {updated}/{desired} updated and available"
    partition = 0
    if spec.update_strategy and spec.update_strategy.rolling_update:
        partition = spec.update_strategy.rolling_update.partition or 0
    updated, ready = st.updated_replicas or 0, st.ready_replicas or 0
    if updated < desired - partition:
        return False, f"{updated} of {desired - partition} pods updated"
    if ready < desired:
        return False, f"{ready} of {desired} pods ready"
    if partition == 0 and st.update_revision and st.current_revision != st.update_revision:
        return False, f"waiting for revision {st.update_revision} to become current"
    return True, f"rolled out: {updated}/{desired} updated, {ready} ready"


# --------------------------------------------------------------------------------------------
# The commands

ops = typer.Typer(name="ops", no_args_is_help=True,
                  help="Operate an rdx deployment on Kubernetes (status, safe restarts).")

NamespaceOpt = typer.Option("rdx", "--namespace", "-n", help="the namespace rdx is deployed in")
KubeconfigOpt = typer.Option(None, "--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster)")
ContextOpt = typer.Option(None, "--context", help="the kubeconfig context to use")


def _fail(message: str, code: int = 2):
    typer.secho(f"rdx ops: {message}", err=True, fg="red")
    raise typer.Exit(code)


def _connect(namespace: str, kubeconfig: Path | None, context: str | None, timeout: float) -> Ops:
    try:
        return Ops(api_client(kubeconfig, context), namespace, timeout)
    except KubeError as exc:
        _fail(str(exc))


def render_report(report: Report) -> str:
    lines = [f"namespace {report.namespace} (Kubernetes {report.server_version})",
             f"    {'COMPONENT':<18}{'KIND':<13}{'READY':<8}DETAILS"]
    for w in report.workloads:
        details = []
        for v in w.validators:
            if v.height is not None:
                relay = f", relay {v.relay_height}" if v.relay_height is not None else ""
                details.append(f"{v.pod} height {v.height}{' (catching up)' if v.catching_up else ''}{relay}")
        if w.lag:
            details.append("lag " + ", ".join(f"{t}={n}" for t, n in sorted(w.lag.items())))
        details += w.notes
        mark = "ok " if not w.problems else "BAD"
        lines.append(f"{mark} {w.name:<18}{w.kind:<13}{f'{w.ready}/{w.desired}':<8}{'; '.join(details)}")
    for k in report.kafka:
        mark = "ok " if k.ready else "BAD"
        lines.append(f"{mark} {'kafka ' + k.name:<18}{'Kafka':<13}{'Ready' if k.ready else 'no':<8}{k.message}")
    for note in report.notes:
        lines.append(f"note: {note}")
    if report.unhealthy:
        lines.append("unhealthy:")
        lines += [f"  - {p}" for p in report.unhealthy]
    else:
        lines.append("healthy: every component is ready")
    return "\n".join(lines)


@ops.command()
def status(namespace: str = NamespaceOpt, kubeconfig: Optional[Path] = KubeconfigOpt,
           context: Optional[str] = ContextOpt,
           max_lag: int = typer.Option(MAX_CONSUMER_LAG, help="consumer lag (events) above which a service is unhealthy"),
           max_relay_behind: int = typer.Option(MAX_RELAY_BEHIND, help="blocks the relay may be behind its chain"),
           max_height_lag: int = typer.Option(MAX_HEIGHT_LAG, help="blocks a validator may be behind the highest"),
           timeout: float = typer.Option(5.0, help="seconds for each request"),
           output: str = typer.Option("text", "--output", "-o", help="text or json")) -> None:
    """Every component's health: pods, chain heights, relay, consumer lag, Kafka.

    Exits 1 naming what is unhealthy, 2 if the cluster cannot be read."""
    client = _connect(namespace, kubeconfig, context, timeout)
    try:
        report = client.status(max_lag, max_relay_behind, max_height_lag)
    except OpsError as exc:
        _fail(str(exc))
    if not report.kafka:
        report.notes.append("no Strimzi Kafka resource found in this namespace: Kafka not checked")
    if output == "json":
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        typer.echo(render_report(report))
    if not report.healthy:
        raise typer.Exit(1)


@ops.command()
def restart(service: str = typer.Argument(..., help="a Deployment or StatefulSet name (gateway, catalog, billing, "
                                                    "compute-<member>, validator) or a component label"),
            namespace: str = NamespaceOpt, kubeconfig: Optional[Path] = KubeconfigOpt,
            context: Optional[str] = ContextOpt,
            timeout: float = typer.Option(600.0, help="seconds to wait for the rollout"),
            force: bool = typer.Option(False, help="restart the validators even if the chain would halt meanwhile")) -> None:
    """Safe rolling restart of one workload, waiting for the rollout.

    As `kubectl rollout restart` then `kubectl rollout status`. Refuses the validators when one
    of them down would leave 2/3 or fewer ready (the chain would halt)."""
    client = _connect(namespace, kubeconfig, context, 10.0)
    try:
        name = client.restart(service, timeout=timeout, force=force, log=typer.echo)
    except OpsError as exc:
        _fail(str(exc), 1)
    typer.echo(f"{name}: restarted")


def install(app: typer.Typer) -> None:
    """Register ``rdx ops`` on the main command (rdx/cli.py)."""
    app.add_typer(ops, name="ops")
