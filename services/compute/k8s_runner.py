"""The Kubernetes runner (``RDX_RUNNER=kubernetes``): a job's CPU-heavy batches in a Kubernetes
Job pod sized for them, and the batch/v1 Job and Secret client it uses (which ``rdx ops`` re-uses).

What runs where. The protocol stays in the node: it holds the node key, the peer sessions and the
datasets, and nothing of those leaves it. Only ``ctx.compute(fn, *args)`` batches move: a job's
first ``RDX_K8S_MIN_BATCHES`` batches run on the node's local pool (a small job finishes before a
pod could start); when it asks for more, the runner launches one Job for the job run, whose pod
runs ``python -m services.compute.worker`` from the node's own image and dials back (protocol:
services/compute/worker.py). From then on its batches go to the pod's processes. With a threshold
of 0 the Job is launched as the job run starts, so the pod starts while the node loads its data and
meets its peers.

Per job run:

1. The node makes a one-time 32-byte token, creates the Job (one pod, ``backoffLimit: 0``,
   ``activeDeadlineSeconds`` up to the chain's deadline, the restricted security context, no
   service-account token, no service links) and then a Secret owned by that Job holding the token
   and the listener's certificate, which the pod reads through ``secretKeyRef``: the token never
   appears in the Job's spec, the node's logs or the chain.
2. It waits for the worker's first connection, reading the Job's status every ``poll`` seconds:
   a Job the API reports Failed (or deleted, or finished without connecting) fails the job run at
   once with the Job's reason; no connection within ``RDX_K8S_CONNECT_TIMEOUT_S`` fails it too.
3. Each batch takes an idle connection, sends ``(fn, args)``, and gets the result or the
   exception (which the lifecycle reports by type only). A connection that breaks fails the job
   run (a retry of the job is a fresh run with a fresh Job).
4. When the run ends, fails or is cancelled (kill switch, deadline, shutdown), the node closes
   the connections, forgets the token and deletes the Job (its pod with it) and the Secret,
   whatever happened: the delete runs in a thread that a second cancellation does not stop.

Security model. The worker listener (one per node, ``RDX_K8S_WORKER_HOST``, loopback by default)
speaks TLS 1.3 with a self-signed ECDSA P-256 certificate made at node start whose key exists only
in the node's memory; the worker pins that certificate, so it only ever unpickles what the node
sent. The node unpickles only from a connection whose first frame was a live token (looked up by
its SHA-256, so lookup timing reveals nothing of it). multiprocessing.connection is not used: its
Connection reads a raw file descriptor, so it cannot run inside TLS, and its HMAC-MD5 (3.11)
challenge authenticates without encrypting; the framing here is twenty lines of stdlib.

Leakage. The worker pod sees the batches of its job in clear in memory: raw keys and the job's
secret scalars, an HE scoring consumer's features and CKKS secret key (as the node's local worker
processes do). They cross the cluster network only
inside TLS. The Kubernetes API sees the Job (labels: member, job id; resources) and the Secret
(token and certificate, no data value); the chain sees, on failure, the Job's name and
Kubernetes' reason (e.g. ``DeadlineExceeded``), never an API response body. The Secret is
readable by whoever may read Secrets in the namespace, for the life of the run; a token is good
for one run only and only on the node's listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime
import hashlib
import json
import logging
import os
import pickle
import re
import secrets
import ssl
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from services.compute import worker as wire
from services.compute.jobtypes.base import JobContext, JobRefused, JobSpec, JobType, Outcome
from services.compute.runner import LocalRunner, Runner

log = logging.getLogger("rdx.compute.k8s")

NAME_LABEL = "app.kubernetes.io/name"
MEMBER_LABEL = "rdx.io/member"
JOB_ID_LABEL = "rdx.io/job-id"
WORKER_COMPONENT = "compute-worker"
SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
TOKEN_KEY, CERT_KEY = "token", "cert"


class KubeError(RuntimeError):
    """The API server could not be reached, or it refused an operation."""


class RunnerError(JobRefused):
    """The Kubernetes worker of a job run could not do its part. The message becomes the job's
    on-chain failure reason: it names the Job and Kubernetes' reason, never a value."""


# --------------------------------------------------------------------------------------------
# The API client


def api_client(kubeconfig: Path | None = None, context: str | None = None):
    """A client for the cluster: the kubeconfig given, else $KUBECONFIG or ~/.kube/config, else the
    pod's service account (in-cluster). Never touches the kubernetes package's global default."""
    from kubernetes import client, config

    try:
        env = os.environ.get("KUBECONFIG")
        if kubeconfig or env or Path("~/.kube/config").expanduser().exists():
            # The library reads $KUBECONFIG once, at import: a single path is passed as read now.
            single = env if env and os.pathsep not in env else None
            return config.new_client_from_config(config_file=str(kubeconfig) if kubeconfig else single, context=context)
        loader = config.incluster_config.InClusterConfigLoader(
            token_filename=config.incluster_config.SERVICE_TOKEN_FILENAME,
            cert_filename=config.incluster_config.SERVICE_CERT_FILENAME)
        configuration = client.Configuration()
        loader.load_and_set(configuration)
        return client.ApiClient(configuration)
    except config.ConfigException as exc:
        raise KubeError(f"no Kubernetes configuration: {exc} (pass --kubeconfig, set KUBECONFIG, or run in a pod)") from None


def api_error(exc: Exception) -> str:
    """An API exception as one line: status and the API server's message."""
    status = getattr(exc, "status", None)
    body = getattr(exc, "body", None)
    if status is not None:
        try:
            message = json.loads(body).get("message") if body else None
        except (ValueError, AttributeError):
            message = None
        return f"HTTP {status}: {message or (body or '').strip()[:200] or getattr(exc, 'reason', '')}"
    return f"{type(exc).__name__}: {exc}"


def job_name(job_id: str, prefix: str = "rdx-job-", suffix: str = "") -> str:
    """A DNS-1123 label (at most 63 characters) for a job id; a hash keeps it unique when the id
    had to be changed to fit. ``suffix`` (a run's random tag) is kept whole at the end."""
    clean = re.sub(r"[^a-z0-9-]+", "-", job_id.lower()).strip("-")
    tail = f"-{suffix}" if suffix else ""
    room = 63 - len(prefix) - len(tail)
    if clean != job_id or len(clean) > room:
        digest = hashlib.sha256(job_id.encode()).hexdigest()[:10]
        clean = f"{clean[:room - 11].strip('-')}-{digest}"
    return f"{prefix}{clean}{tail}".replace("--", "-")


def label_value(value: str) -> str:
    """A label value (<= 63 of [A-Za-z0-9_.-], alphanumeric at both ends) standing for ``value``."""
    clean = re.sub(r"[^A-Za-z0-9_.-]+", "-", value)[:63].strip("-_.")
    return clean or hashlib.sha256(value.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class JobState:
    name: str
    phase: str  # pending | running | succeeded | failed | missing
    active: int = 0
    succeeded: int = 0
    failed: int = 0
    reason: str = ""
    message: str = ""
    started: str | None = None
    finished: str | None = None


DEFAULT_RESOURCES = {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}}


def job_manifest(name: str, namespace: str, image: str, *, args: Sequence[str] = (), env: Mapping[str, str] = {},
                 command: Sequence[str] | None = None, secret_env: Mapping[str, str] | None = None,
                 secret_name: str | None = None, resources: Mapping[str, Mapping[str, str]] | None = None,
                 labels: Mapping[str, str] | None = None, annotations: Mapping[str, str] | None = None,
                 service_account: str | None = None, active_deadline_seconds: int | None = None,
                 ttl_seconds_after_finished: int | None = 3600, uid: int = 10001):
    """A batch/v1 Job of one pod, never retried (a job of the exchange is either completed and
    attested, or failed and refunded; a retry is a new run), with the restricted security context of
    every rdx pod. ``secret_env`` maps environment variables to keys of the Secret ``secret_name``."""
    from kubernetes import client as c

    res = resources or DEFAULT_RESOURCES
    env_vars = [c.V1EnvVar(name=k, value=str(v)) for k, v in env.items()]
    env_vars += [c.V1EnvVar(name=k, value_from=c.V1EnvVarSource(
        secret_key_ref=c.V1SecretKeySelector(name=secret_name, key=key))) for k, key in (secret_env or {}).items()]
    container = c.V1Container(
        name="job", image=image, command=list(command) if command else None, args=list(args) or None,
        env=env_vars or None,
        resources=c.V1ResourceRequirements(requests=dict(res.get("requests", {})), limits=dict(res.get("limits", {}))),
        security_context=c.V1SecurityContext(
            run_as_non_root=True, read_only_root_filesystem=True, allow_privilege_escalation=False,
            capabilities=c.V1Capabilities(drop=["ALL"])),
        volume_mounts=[c.V1VolumeMount(name="tmp", mount_path="/tmp")])
    pod = c.V1PodSpec(
        restart_policy="Never", automount_service_account_token=False, service_account_name=service_account,
        enable_service_links=False,  # no other Service's address in its environment
        security_context=c.V1PodSecurityContext(
            run_as_non_root=True, run_as_user=uid, run_as_group=uid, fs_group=uid,
            seccomp_profile=c.V1SeccompProfile(type="RuntimeDefault")),
        containers=[container], volumes=[c.V1Volume(name="tmp", empty_dir=c.V1EmptyDirVolumeSource())])
    return c.V1Job(
        api_version="batch/v1", kind="Job",
        metadata=c.V1ObjectMeta(name=name, namespace=namespace, labels=dict(labels or {}),
                                annotations=dict(annotations or {})),
        spec=c.V1JobSpec(backoff_limit=0, ttl_seconds_after_finished=ttl_seconds_after_finished,
                         active_deadline_seconds=active_deadline_seconds,
                         template=c.V1PodTemplateSpec(metadata=c.V1ObjectMeta(labels=dict(labels or {})), spec=pod)))


def secret_manifest(name: str, namespace: str, data: Mapping[str, str], owner, labels: Mapping[str, str] | None = None):
    """An immutable Opaque Secret owned by the Job ``owner`` (a V1Job as created): if the node dies
    before deleting it, the garbage collector removes it with the Job."""
    from kubernetes import client as c

    ref = c.V1OwnerReference(api_version="batch/v1", kind="Job", name=owner.metadata.name, uid=owner.metadata.uid,
                             block_owner_deletion=False)
    return c.V1Secret(api_version="v1", kind="Secret", type="Opaque", immutable=True, string_data=dict(data),
                      metadata=c.V1ObjectMeta(name=name, namespace=namespace, labels=dict(labels or {}),
                                              owner_references=[ref]))


class JobClient:
    """Create, read and delete batch/v1 Jobs and their Secrets in one namespace. ``api`` is a kubernetes
    ``ApiClient`` (default: :func:`api_client`, in-cluster for a compute pod whose service account may
    create, read and delete Jobs and create and delete Secrets there: infra/components/k8s-runner)."""

    def __init__(self, namespace: str, api=None, *, resources: Mapping[str, Mapping[str, str]] | None = None,
                 service_account: str | None = None, labels: Mapping[str, str] | None = None,
                 ttl_seconds_after_finished: int | None = 3600, active_deadline_seconds: int | None = None,
                 uid: int = 10001, request_timeout: float = 10.0):
        from kubernetes import client

        self.namespace = namespace
        api = api or api_client()
        self.batch, self.core = client.BatchV1Api(api), client.CoreV1Api(api)
        self.resources = resources or DEFAULT_RESOURCES
        self.service_account = service_account
        self.labels = dict(labels or {})
        self.ttl = ttl_seconds_after_finished
        self.deadline = active_deadline_seconds
        self.uid = uid
        self.timeout = request_timeout

    def labels_for(self, job_id: str) -> dict[str, str]:
        return {NAME_LABEL: WORKER_COMPONENT, "app.kubernetes.io/part-of": "rdx", JOB_ID_LABEL: label_value(job_id),
                **self.labels}

    def manifest(self, job_id: str, image: str, args: Sequence[str], env: Mapping[str, str], *,
                 name: str | None = None, command: Sequence[str] | None = None,
                 secret_env: Mapping[str, str] | None = None, active_deadline_seconds: int | None = None):
        name = name or job_name(job_id)
        return job_manifest(
            name, self.namespace, image, args=args, env=env, command=command, secret_env=secret_env,
            secret_name=name if secret_env else None, resources=self.resources, labels=self.labels_for(job_id),
            annotations={JOB_ID_LABEL: job_id}, service_account=self.service_account,
            active_deadline_seconds=active_deadline_seconds or self.deadline, ttl_seconds_after_finished=self.ttl,
            uid=self.uid)

    def submit(self, job_id: str, image: str, args: Sequence[str], env: Mapping[str, str], **options) -> str:
        """Create the Job; returns its name. Submitting the same name twice is an error."""
        return self.create(self.manifest(job_id, image, args, env, **options)).metadata.name

    def create(self, job):
        try:
            return self.batch.create_namespaced_job(self.namespace, job, _request_timeout=self.timeout)
        except Exception as exc:  # noqa: BLE001
            raise KubeError(f"cannot create the Job {job.metadata.name}: {api_error(exc)}") from None

    def create_secret(self, name: str, data: Mapping[str, str], owner) -> None:
        body = secret_manifest(name, self.namespace, data, owner, owner.metadata.labels)
        try:
            self.core.create_namespaced_secret(self.namespace, body, _request_timeout=self.timeout)
        except Exception as exc:  # noqa: BLE001
            raise KubeError(f"cannot create the Secret {name}: {api_error(exc)}") from None

    def status(self, name: str) -> JobState:
        from kubernetes.client.exceptions import ApiException

        try:
            job = self.batch.read_namespaced_job_status(name, self.namespace, _request_timeout=self.timeout)
        except ApiException as exc:
            if exc.status == 404:
                return JobState(name, "missing")
            raise KubeError(f"cannot read job {name}: {api_error(exc)}") from None
        except Exception as exc:  # noqa: BLE001 - the API server cannot be reached
            raise KubeError(f"cannot read job {name}: {api_error(exc)}") from None
        st = job.status
        conditions = {c.type: c for c in (st.conditions or []) if c.status == "True"}
        phase, reason, message = "pending", "", ""
        for kind, result in (("Complete", "succeeded"), ("SuccessCriteriaMet", "succeeded"),
                             ("Failed", "failed"), ("FailureTarget", "failed")):
            if kind in conditions:
                phase, reason, message = result, conditions[kind].reason or "", conditions[kind].message or ""
                break
        else:
            if (st.active or 0) > 0:
                phase = "running"
        iso = lambda t: t.isoformat() if t else None  # noqa: E731
        return JobState(name, phase, st.active or 0, st.succeeded or 0, st.failed or 0, reason, message,
                        iso(st.start_time), iso(st.completion_time))

    def _delete(self, what: str, delete: Callable, name: str, **options) -> bool:
        from kubernetes.client.exceptions import ApiException

        try:
            delete(name, self.namespace, _request_timeout=self.timeout, **options)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise KubeError(f"cannot delete {what} {name}: {api_error(exc)}") from None
        except Exception as exc:  # noqa: BLE001
            raise KubeError(f"cannot delete {what} {name}: {api_error(exc)}") from None
        return True

    def cancel(self, name: str) -> bool:
        """Delete the Job and its pods; False if there was no such Job."""
        return self._delete("job", self.batch.delete_namespaced_job, name, propagation_policy="Background")

    def delete_secret(self, name: str) -> bool:
        return self._delete("secret", self.core.delete_namespaced_secret, name)

    def cancel_all(self, selector: str) -> list[str]:
        """Delete every Job matching a label selector (their Secrets go with them, by owner reference)."""
        try:
            jobs = self.batch.list_namespaced_job(self.namespace, label_selector=selector, _request_timeout=self.timeout)
        except Exception as exc:  # noqa: BLE001
            raise KubeError(f"cannot list jobs: {api_error(exc)}") from None
        return [j.metadata.name for j in jobs.items if self.cancel(j.metadata.name)]


# --------------------------------------------------------------------------------------------
# The worker listener: TLS, token-authenticated connections from worker pods


def _self_signed() -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) for the listener, valid for ten years: it is pinned, not chained."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rdx compute worker listener")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _server_context(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    # ssl loads keys from files only: a private 0700 directory, removed as soon as it is loaded.
    with tempfile.TemporaryDirectory(prefix="rdx-worker-tls-") as tmp:
        cert_file, key_file = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        cert_file.write_bytes(cert_pem)
        key_file.touch(0o600)
        key_file.write_bytes(key_pem)
        context.load_cert_chain(cert_file, key_file)
    return context


async def read_frame(reader: asyncio.StreamReader, limit: int = wire.MAX_FRAME) -> bytes:
    (size,) = wire.HEADER.unpack(await reader.readexactly(wire.HEADER.size))
    if size > limit:
        raise ConnectionError(f"frame of {size} bytes is over the limit")
    return await reader.readexactly(size)


async def write_frame(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(wire.HEADER.pack(len(data)) + data)
    await writer.drain()


class WorkerListener:
    """One per node: accepts worker connections and hands each to the job run whose token it sent."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, advertise: str | None = None):
        self.host, self.port, self.advertise = host, port, advertise
        self.cert_pem = ""
        self._server: asyncio.base_events.Server | None = None
        self._runs: dict[bytes, "_JobRun"] = {}

    @property
    def address(self) -> str:
        host = self.advertise or self.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    async def start(self) -> None:
        cert, key = await asyncio.to_thread(_self_signed)
        self.cert_pem = cert.decode()
        self._server = await asyncio.start_server(self._accept, self.host, self.port, ssl=_server_context(cert, key),
                                                  ssl_handshake_timeout=10)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def expect(self, token: bytes, run: "_JobRun") -> None:
        self._runs[hashlib.sha256(token).digest()] = run

    def forget(self, token: bytes) -> None:
        self._runs.pop(hashlib.sha256(token).digest(), None)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            token = await asyncio.wait_for(read_frame(reader, limit=64), 10)
        except (asyncio.TimeoutError, EOFError, ConnectionError, OSError):
            writer.close()
            return
        run = self._runs.get(hashlib.sha256(token).digest())
        if run is None or run.closed:
            log.warning("refused a worker connection from %s: not a live token", peer[0] if peer else "?")
            writer.close()
            return
        try:
            await write_frame(writer, wire.OK)
        except (ConnectionError, OSError):
            writer.close()
            return
        await run.attach(reader, writer)


# --------------------------------------------------------------------------------------------
# The runner


@dataclass(frozen=True)
class KubernetesConfig:
    namespace: str
    image: str
    member: str = ""
    resources: Mapping[str, Mapping[str, str]] | None = None
    service_account: str | None = None
    worker_processes: int = 2
    min_batches: int = 32
    connect_timeout_s: float = 300.0
    poll_s: float = 2.0
    command: tuple[str, ...] = ("python", "-m", "services.compute.worker")


_current: contextvars.ContextVar["_JobRun | None"] = contextvars.ContextVar("rdx_k8s_job_run", default=None)


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class _JobRun:
    """One job run's Kubernetes Job, its Secret and its worker connections."""

    def __init__(self, runner: "KubernetesRunner", spec: JobSpec):
        self.runner, self.spec = runner, spec
        self.name = job_name(spec.job, suffix=secrets.token_hex(3))  # a retry or a restart gets a new Job
        self.token = b""
        self.batches = 0
        self.idle: list[_Conn] = []
        self.live = 0
        self.closed = False
        self.changed = asyncio.Condition()
        self.started: asyncio.Task | None = None
        self._api_lock = threading.Lock()  # the delete waits for a create still in flight
        self._removed = False

    async def compute(self, fn: Callable[..., Any], *args: Any) -> Any:
        self.batches += 1
        if self.started is None:
            if self.batches <= self.runner.config.min_batches:
                return await self.runner.local.compute(fn, *args)
            self.start()
        await asyncio.shield(self.started)  # every waiting batch sees the same failure, if any
        conn = await self._acquire()
        try:
            await write_frame(conn.writer, pickle.dumps((fn, args), protocol=5))
            reply = await read_frame(conn.reader)
        except asyncio.CancelledError:
            await self._lost(conn)  # its answer would come for a batch nobody awaits
            raise
        except (EOFError, ConnectionError, OSError):
            await self._lost(conn)
            raise RunnerError(f"the worker pod of Kubernetes Job {self.name} closed its connection mid-batch"
                              f"{await self._why()}") from None
        self.idle.append(conn)
        async with self.changed:
            self.changed.notify()
        ok, value = pickle.loads(reply)
        if ok:
            return value
        raise value

    def start(self) -> None:
        if self.started is None:
            self.started = asyncio.ensure_future(self._start())

    async def _start(self) -> None:
        cfg = self.runner.config
        self.token = secrets.token_bytes(32)
        self.runner.listener.expect(self.token, self)
        try:
            await asyncio.to_thread(self._launch)
        except KubeError as exc:
            log.error("job %s: %s", self.spec.job, exc)
            raise RunnerError(f"could not create the Kubernetes Job {self.name} for this job (see the node's log)") from None
        log.info("job %s: Kubernetes Job %s launched; waiting for its worker", self.spec.job, self.name)
        deadline = time.monotonic() + cfg.connect_timeout_s
        while not self.live:
            state = await self._state()
            if state is not None and state.phase != "pending" and state.phase != "running":
                why = {"failed": f"failed ({state.reason or 'no reason given'})", "missing": "was deleted",
                       "succeeded": "ended without connecting"}[state.phase]
                raise RunnerError(f"the Kubernetes Job {self.name} {why} before its worker connected")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RunnerError(f"the worker of Kubernetes Job {self.name} did not connect within "
                                  f"{cfg.connect_timeout_s:.0f}s")
            async with self.changed:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.changed.wait_for(lambda: self.live > 0), min(cfg.poll_s, remaining))
        log.info("job %s: worker of Kubernetes Job %s connected", self.spec.job, self.name)

    def manifest(self):
        """The Job: the worker command, the listener's address, the token and certificate from the Secret."""
        cfg = self.runner.config
        env = {wire.ENV_ADDRESS: self.runner.listener.address, wire.ENV_PROCESSES: str(cfg.worker_processes),
               wire.ENV_JOB: self.name}
        # The pod may not outlive the chain's deadline for the job (and so its escrow).
        deadline = max(int(self.spec.deadline - time.time()) + 60, 60)
        return self.runner.jobs.manifest(self.spec.job, cfg.image, [], env, name=self.name, command=cfg.command,
                                         secret_env={wire.ENV_TOKEN: TOKEN_KEY, wire.ENV_CERT: CERT_KEY},
                                         active_deadline_seconds=deadline)

    def _launch(self) -> None:
        with self._api_lock:
            if self._removed:
                return
            job = self.runner.jobs.create(self.manifest())
            self.runner.jobs.create_secret(self.name, {TOKEN_KEY: self.token.hex(),
                                                       CERT_KEY: self.runner.listener.cert_pem}, job)

    def _remove(self) -> None:
        with self._api_lock:
            self._removed = True
            if self.started is None:
                return
            for what, delete in (("Job", self.runner.jobs.cancel), ("Secret", self.runner.jobs.delete_secret)):
                try:
                    delete(self.name)
                except KubeError as exc:  # the Job's deadline and TTL still bound it; say so loudly
                    log.error("job %s: could not delete the %s %s: %s", self.spec.job, what, self.name, exc)

    async def _state(self) -> JobState | None:
        try:
            return await asyncio.to_thread(self.runner.jobs.status, self.name)
        except KubeError as exc:  # a blip of the API server: the connect timeout still bounds the wait
            log.warning("job %s: %s", self.spec.job, exc)
            return None

    async def _why(self) -> str:
        state = await self._state()
        if state is None or state.phase in ("pending", "running"):
            return ""
        return f" (the Job {state.phase}{': ' + state.reason if state.reason else ''})"

    async def attach(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.idle.append(_Conn(reader, writer))
        self.live += 1
        async with self.changed:
            self.changed.notify_all()

    async def _acquire(self) -> _Conn:
        async with self.changed:
            await self.changed.wait_for(lambda: self.idle or not self.live or self.closed)
            if not self.idle:
                raise RunnerError(f"the worker pod of Kubernetes Job {self.name} lost all its connections")
            return self.idle.pop()

    async def _lost(self, conn: _Conn) -> None:
        conn.close()
        self.live -= 1
        async with self.changed:
            self.changed.notify_all()

    async def close(self) -> None:
        self.closed = True
        if self.started is not None:
            if not self.started.done():
                self.started.cancel()
            elif not self.started.cancelled():
                self.started.exception()  # seen: a launch that failed before any batch asked for it
        for conn in self.idle:
            conn.close()  # the worker's processes see the end and exit 0
        self.idle.clear()
        if self.token:
            self.runner.listener.forget(self.token)
        # A thread, shielded: a second cancellation cannot leave the Job and its Secret behind.
        await asyncio.shield(asyncio.to_thread(self._remove))
        if self.started is not None:
            log.info("job %s: Kubernetes Job %s deleted after %d batches", self.spec.job, self.name, self.batches)


class KubernetesRunner(Runner):
    """The protocol in this process; a job's batches beyond ``min_batches`` in its own Job pod."""

    name = "kubernetes"

    def __init__(self, config: KubernetesConfig, local: LocalRunner, jobs: JobClient, listener: WorkerListener):
        self.config, self.local, self.jobs, self.listener = config, local, jobs, listener
        self.workers = config.worker_processes  # sizes the job types' pipelines for the pod

    async def start(self) -> None:
        await self.local.start()
        await self.listener.start()
        if self.config.member:
            # Jobs of this node's previous life have no node to talk to any more.
            selector = f"{NAME_LABEL}={WORKER_COMPONENT},{MEMBER_LABEL}={self.config.member}"
            try:
                gone = await asyncio.to_thread(self.jobs.cancel_all, selector)
            except KubeError as exc:
                log.error("cannot clean up earlier worker Jobs: %s", exc)
            else:
                if gone:
                    log.info("deleted %d worker Jobs left by an earlier run of this node", len(gone))
        log.info("kubernetes runner: namespace %s, worker listener on %s:%d (pods dial %s)",
                 self.config.namespace, self.listener.host, self.listener.port, self.listener.address)

    async def stop(self) -> None:
        await self.listener.stop()
        await self.local.stop()

    async def run(self, job_type: JobType, ctx: JobContext) -> Outcome:
        job_run = _JobRun(self, ctx.spec)
        reset = _current.set(job_run)  # the job's batches (its task and the tasks it starts) find their run
        try:
            if self.config.min_batches == 0:
                job_run.start()
            return await job_type.run(ctx)
        finally:
            _current.reset(reset)
            await job_run.close()

    async def compute(self, fn: Callable[..., Any], *args: Any) -> Any:
        job_run = _current.get()
        if job_run is None:  # not inside a job run (a warm-up, a tool): the local pool
            return await self.local.compute(fn, *args)
        return await job_run.compute(fn, *args)


def build(settings, workers: int) -> KubernetesRunner:
    """The runner from the node's settings (services/compute/settings.py, RDX_K8S_*)."""
    namespace = settings.k8s_namespace
    if not namespace and SA_NAMESPACE_FILE.exists():
        namespace = SA_NAMESPACE_FILE.read_text().strip()
    if not namespace or not settings.k8s_image:
        raise SystemExit("RDX_RUNNER=kubernetes needs RDX_K8S_IMAGE and RDX_K8S_NAMESPACE (or to run in a pod)")
    resources = {"requests": {"cpu": settings.k8s_cpu, "memory": settings.k8s_memory},
                 "limits": {"cpu": settings.k8s_cpu, "memory": settings.k8s_memory}}
    member = settings.member_id or ""
    config = KubernetesConfig(
        namespace=namespace, image=settings.k8s_image, member=member, resources=resources,
        service_account=settings.k8s_service_account, worker_processes=settings.k8s_workers,
        min_batches=settings.k8s_min_batches, connect_timeout_s=settings.k8s_connect_timeout_s)
    labels = {MEMBER_LABEL: member} if member else {}
    jobs = JobClient(namespace, api_client(), resources=resources, service_account=settings.k8s_service_account,
                     labels=labels, ttl_seconds_after_finished=600)
    if settings.k8s_worker_host in ("0.0.0.0", "::", "") and not settings.k8s_worker_advertise:
        raise SystemExit("RDX_K8S_WORKER_HOST listens on every address: set RDX_K8S_WORKER_ADVERTISE to the "
                         "address worker pods dial (the node pod's IP)")
    listener = WorkerListener(settings.k8s_worker_host, settings.k8s_worker_port, settings.k8s_worker_advertise)
    return KubernetesRunner(config, LocalRunner(workers), jobs, listener)
