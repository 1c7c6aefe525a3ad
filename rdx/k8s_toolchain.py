"""A real Kubernetes API server for tests: etcd and kube-apiserver built from the Go module proxy.

Cached like CometBFT (rdx/toolchain.py): under ``$RDX_CACHE`` (default ``~/.cache/rdx``) in
``kube-apiserver-<version>/bin``, ``kubectl-<version>/bin`` and ``etcd-<version>/bin``, built once
per version.

Neither program can be ``go install``-ed directly: ``k8s.io/kubernetes`` requires its staging
modules (``k8s.io/api``, ``k8s.io/apimachinery``, ...) at ``v0.0.0`` and points them at
``./staging/src/...`` with ``replace`` lines, which a dependent module does not inherit; etcd's
server module has replace lines of its own. So each is built from a small wrapper module that
is generated at setup time in the cache directory (never committed): it requires the program's
module at the pinned version and, for Kubernetes, replaces every staging module with the
published module of the same version (``v1.35.4`` -> ``v0.35.4``), the list read from the
pinned ``k8s.io/kubernetes`` go.mod itself so it cannot drift.

:class:`LocalAPIServer` starts etcd and kube-apiserver on loopback free ports with a temporary
data directory, serving certificates made here (``cryptography``), a static bearer token in
``system:masters``, RBAC authorization, and without the admission plugins that need a
controller manager (``ServiceAccount``). There is no kubelet, scheduler or controller
manager: tests play their part by creating pods and patching status subresources.

Optionally (``pod_network=True``) the API server runs in a network namespace of its own
(``unshare --net``, needs root or unprivileged user namespaces), where test "pods" get
addresses from 198.18.0.0/15 on that namespace's loopback interface. That is what lets the
API server's pod and service proxy reach them: it refuses to proxy to 127.0.0.0/8 (an SSRF
guard), so loopback pod IPs cannot be used. Nothing leaves the machine; the test client
reaches the API server through a forwarder whose listening socket is on 127.0.0.1.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import ipaddress
import json
import os
import re
import secrets
import socket
import ssl
import subprocess
import sys
import textwrap
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from rdx.toolchain import SetupError, _go_module_dir, build_lock, cache_root, require

# The oldest Kubernetes minor upstream still supports (1.35 to 1.37), the same that
# infra/check.py validates the manifests against, so the ops tests exercise the API the
# manifests are written for. The staging modules are published as v0.<minor>.<patch>.
KUBERNETES_VERSION = "v1.35.4"
# The etcd line Kubernetes 1.35 is released and tested with (its go.mod requires the v3.6
# client); the newest v3.6 patch the module proxy serves.
ETCD_VERSION = "v3.6.16"

GO_HINT = "Install Go 1.25+ (https://go.dev/doc/install or Debian's golang package)."


def kube_apiserver_bin() -> Path:
    return cache_root() / f"kube-apiserver-{KUBERNETES_VERSION}" / "bin" / "kube-apiserver"


def kubectl_bin() -> Path:
    return cache_root() / f"kubectl-{KUBERNETES_VERSION}" / "bin" / "kubectl"


def etcd_bin() -> Path:
    return cache_root() / f"etcd-{ETCD_VERSION}" / "bin" / "etcd"


def staging_version(kubernetes_version: str = KUBERNETES_VERSION) -> str:
    """v1.35.4 -> v0.35.4: the published version of the k8s.io staging modules."""
    match = re.fullmatch(r"v1\.(\d+)\.(\d+)", kubernetes_version)
    if not match:
        raise SetupError(f"unexpected Kubernetes version {kubernetes_version!r}: expected v1.<minor>.<patch>")
    return f"v0.{match.group(1)}.{match.group(2)}"


def _go_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    # Go's own parallelism (one package per CPU): `make test` builds before any test starts, so
    # nothing else wants the CPUs then. RDX_GO_BUILD_FLAGS adds flags (e.g. "-p=1" to build
    # beside other work).
    flags = os.environ.get("GOFLAGS", "")
    build_flags = os.environ.get("RDX_GO_BUILD_FLAGS", "")
    env = dict(os.environ, CGO_ENABLED="0", GOTOOLCHAIN="local", GOFLAGS=f"{flags} -mod=mod {build_flags}".strip())
    env.update(extra or {})
    return env


def _run(cmd: list[str], what: str, cwd: Path, env: dict[str, str], log) -> None:
    started = time.monotonic()
    log(f"  $ {' '.join(cmd)}")
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-25:])
        raise SetupError(f"{what} failed (exit {result.returncode}, after {time.monotonic() - started:.0f}s, "
                         f"in {cwd}):\n$ {' '.join(cmd)}\n{tail}")


def _module_gomod(module: str, version: str) -> str:
    """The go.mod of module@version, from the module proxy (through the go command)."""
    return (_go_module_dir(module, version, _go_env()) / "go.mod").read_text()


def staging_modules(kubernetes_gomod: str) -> list[str]:
    """The modules k8s.io/kubernetes' go.mod points at ./staging/src/..."""
    return sorted(set(re.findall(r"^\s*(?:replace\s+)?(k8s\.io/[\w.\-/]+)\s+=>\s+\./staging/src/", kubernetes_gomod,
                                 flags=re.MULTILINE)))


def _go_directive(gomod: str) -> str:
    match = re.search(r"^go\s+(\S+)", gomod, flags=re.MULTILINE)
    return match.group(1) if match else "1.25"


def _build(tool: str, version: str, binary: Path, gomod: str, package: str, ldflags: str, log,
           main: str | None = None) -> Path:
    """Write the wrapper module into the cache, resolve it and build `package` into `binary`. With
    ``main`` (a Go main package's source) the wrapper is that program, and ``package`` is "."."""
    go = require("go", f"once, to build {tool} {version} for the Kubernetes ops tests", GO_HINT)
    src = binary.parent.parent / "src"
    src.mkdir(parents=True, exist_ok=True)
    (src / "go.mod").write_text(gomod)
    if main is not None:
        (src / "main.go").write_text(main)
    else:
        (src / "tools.go").write_text(textwrap.dedent(f"""\
            //go:build tools

            // Generated by rdx/k8s_toolchain.py: pins {package} into this module's build list.
            package tools

            import _ "{package}"
            """))
    env = _go_env()
    started = time.monotonic()
    _run([go, "mod", "tidy"], f"resolving the {tool} {version} wrapper module", src, env, log)
    staging = binary.parent / f".{binary.name}.partial"
    _run([go, "build", "-trimpath", "-ldflags", ldflags, "-o", str(staging), package],
         f"building {tool} {version}", src, env, log)
    staging.rename(binary)
    (binary.parent.parent / "build-seconds").write_text(f"{time.monotonic() - started:.0f}\n")
    return binary


def _once(binary: Path, build) -> Path:
    """``binary`` if it is cached; else ``build()`` it, once, under a lock two test runs share."""
    if binary.exists():
        return binary
    with build_lock(binary.parent.parent):
        if binary.exists():
            return binary
        binary.parent.mkdir(parents=True, exist_ok=True)
        return build()


def ensure_etcd(log=print) -> Path:
    def build() -> Path:
        log(f"building etcd {ETCD_VERSION} from the Go module proxy (once) ...")
        require("go", "to build etcd", GO_HINT)
        gomod = _go_directive(_module_gomod("go.etcd.io/etcd/server/v3", ETCD_VERSION))
        wrapper = textwrap.dedent(f"""\
            // Generated by rdx/k8s_toolchain.py: builds etcd {ETCD_VERSION}'s server (go.etcd.io/etcd/server/v3 is
            // package main) without its repository's replace lines.
            module rdx.local/etcd

            go {gomod}

            require go.etcd.io/etcd/server/v3 {ETCD_VERSION}
            """)
        return _build("etcd", ETCD_VERSION, etcd_bin(), wrapper, "go.etcd.io/etcd/server/v3", "-s -w", log)

    return _once(etcd_bin(), build)


def _kubernetes_program(program: str, binary: Path, log) -> Path:
    """Build ``k8s.io/kubernetes/cmd/<program>`` at KUBERNETES_VERSION into ``binary``."""
    require("go", f"to build {program}", GO_HINT)
    upstream = _module_gomod("k8s.io/kubernetes", KUBERNETES_VERSION)
    modules = staging_modules(upstream)
    if not modules:
        raise SetupError(f"k8s.io/kubernetes {KUBERNETES_VERSION}'s go.mod names no staging modules; "
                         "the wrapper module cannot be generated")
    published = staging_version()
    replaces = "\n".join(f"\t{m} => {m} {published}" for m in modules)
    wrapper = (
        f"// Generated by rdx/k8s_toolchain.py: builds {program} {KUBERNETES_VERSION}. k8s.io/kubernetes\n"
        f"// requires its staging modules at v0.0.0 with replace lines to ./staging/src, which a dependent\n"
        f"// module does not inherit; these point them at the published modules of the same version.\n"
        f"module rdx.local/{program}\n\ngo {_go_directive(upstream)}\n\n"
        f"require k8s.io/kubernetes {KUBERNETES_VERSION}\n\nreplace (\n{replaces}\n)\n"
    )
    minor = KUBERNETES_VERSION.split(".")[1]
    ldflags = " ".join([
        "-s", "-w",
        f"-X k8s.io/component-base/version.gitVersion={KUBERNETES_VERSION}",
        "-X k8s.io/component-base/version.gitMajor=1",
        f"-X k8s.io/component-base/version.gitMinor={minor}",
        "-X k8s.io/component-base/version.gitTreeState=clean",
        "-X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z",
        # kubectl reports its client version from client-go's copy of these
        f"-X k8s.io/client-go/pkg/version.gitVersion={KUBERNETES_VERSION}",
        "-X k8s.io/client-go/pkg/version.gitMajor=1",
        f"-X k8s.io/client-go/pkg/version.gitMinor={minor}",
    ])
    return _build(program, KUBERNETES_VERSION, binary, wrapper, f"k8s.io/kubernetes/cmd/{program}", ldflags, log)


def ensure_kube_apiserver(log=print) -> Path:
    def build() -> Path:
        log(f"building kube-apiserver {KUBERNETES_VERSION} from the Go module proxy (once; several minutes) ...")
        return _kubernetes_program("kube-apiserver", kube_apiserver_bin(), log)

    return _once(kube_apiserver_bin(), build)


def ensure_kubectl(log=print) -> Path:
    """kubectl of the same Kubernetes module, for ``kubectl auth can-i`` in the manifests' tests.

    Built after kube-apiserver it reuses most of that build's compiled packages (client-go,
    apimachinery, the API types) from Go's build cache: 1 min 53 s here, against ~17 min for the
    API server itself."""
    def build() -> Path:
        log(f"building kubectl {KUBERNETES_VERSION} from the Go module proxy (once) ...")
        return _kubernetes_program("kubectl", kubectl_bin(), log)

    return _once(kubectl_bin(), build)


def _node_program(program: str):
    """The path and ``ensure_<program>`` of one more k8s.io/kubernetes command, cached like the
    API server; for tests/kubelet (a one-node cluster), not built by ``make test``."""
    def path() -> Path:
        return cache_root() / f"{program}-{KUBERNETES_VERSION}" / "bin" / program

    def ensure(log=print) -> Path:
        def build() -> Path:
            log(f"building {program} {KUBERNETES_VERSION} from the Go module proxy (once) ...")
            return _kubernetes_program(program, path(), log)

        return _once(path(), build)

    return path, ensure


kubelet_bin, ensure_kubelet = _node_program("kubelet")
kube_scheduler_bin, ensure_kube_scheduler = _node_program("kube-scheduler")
kube_controller_manager_bin, ensure_kube_controller_manager = _node_program("kube-controller-manager")
kube_proxy_bin, ensure_kube_proxy = _node_program("kube-proxy")


# kube-router's network policy controller (iptables + ipset), the NetworkPolicy enforcer of
# tests/kubelet's throwaway loopback cluster only. v2.1.0 is the only version the module proxy
# serves here, and security flaws are reported against it; kube-network-policies, the other
# enforcer tried, needs nftables' queue expression, which this kernel lacks (infra/README.md).
KUBE_ROUTER_VERSION = "v2.1.0"


def kube_router_bin() -> Path:
    return cache_root() / f"kube-router-{KUBE_ROUTER_VERSION}" / "bin" / "kube-router"


def ensure_kube_router(log=print) -> Path:
    """kube-router's cmd (its go.mod has no replace lines, so the wrapper module only requires it),
    built once like the programs above."""
    def build() -> Path:
        log(f"building kube-router {KUBE_ROUTER_VERSION} from the Go module proxy (once) ...")
        module = "github.com/cloudnativelabs/kube-router/v2"
        wrapper = (f"// Generated by rdx/k8s_toolchain.py: builds {module}/cmd/kube-router {KUBE_ROUTER_VERSION}.\n"
                   f"module rdx.local/kube-router\n\n"
                   f"go {_go_directive(_module_gomod(module, KUBE_ROUTER_VERSION))}\n\n"
                   f"require {module} {KUBE_ROUTER_VERSION}\n")
        return _build("kube-router", KUBE_ROUTER_VERSION, kube_router_bin(), wrapper, f"{module}/cmd/kube-router",
                      f"-s -w -X {module}/pkg/version.Version={KUBE_ROUTER_VERSION}", log)

    return _once(kube_router_bin(), build)


# --------------------------------------------------------------------------------------------
# Running them


POD_NETWORK = ipaddress.ip_network("198.18.0.0/16")  # RFC 2544 benchmarking range, never routed
APISERVER_POD_IP = "198.18.0.1"                     # the API server's advertised address
SERVICE_CIDR = "10.96.0.0/24"                       # ClusterIPs are only allocated, never dialled
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """preexec_fn: the child gets SIGKILL if the test process dies without stopping it."""
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class NetNamespace:
    """A network namespace of its own (``unshare --net``) where test "pods" get routable-looking
    addresses (198.18.0.0/16 on its loopback interface), so the API server's proxy, which refuses
    127.0.0.0/8, can reach them. Nothing in it reaches or is reachable from any other host.

    Programs join it with :meth:`argv` (``nsenter``); sockets of this process are created in it
    with :meth:`call` (a thread that ``setns``-ed into it), which needs root.
    """

    def __init__(self):
        if os.geteuid() != 0:
            raise SetupError("the Kubernetes ops tests need root (to make a network namespace for the test pods, "
                             "so that the API server's proxy can reach them; it refuses loopback addresses)")
        for tool in ("unshare", "nsenter", "ip"):
            require(tool, "to make the test pods' network namespace", "Install util-linux and iproute2.")
        import queue
        import threading

        self.holder = subprocess.Popen(["unshare", "--net", "--", sys.executable, "-c", "import sys; sys.stdin.read()"],
                                       stdin=subprocess.PIPE, preexec_fn=_die_with_parent)
        self.path = f"/proc/{self.holder.pid}/ns/net"
        deadline = time.monotonic() + 10
        while True:  # unshare has exec-ed python once the namespace differs from ours
            try:
                if os.readlink(self.path) != os.readlink("/proc/self/ns/net"):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or self.holder.poll() is not None:
                self.close()
                raise SetupError("`unshare --net` did not make a network namespace (is this a container without "
                                 "CAP_SYS_ADMIN?)")
            time.sleep(0.02)
        for cmd in (["ip", "link", "set", "lo", "up"], ["ip", "addr", "add", f"{APISERVER_POD_IP}/{POD_NETWORK.prefixlen}", "dev", "lo"]):
            result = subprocess.run(self.argv(cmd), capture_output=True, text=True)
            if result.returncode != 0:
                self.close()
                raise SetupError(f"{' '.join(cmd)} in the test network namespace failed: {result.stderr.strip()}")
        self._fd = os.open(self.path, os.O_RDONLY)
        self._calls: queue.Queue = queue.Queue()
        ready: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._serve, args=(ready,), name="netns", daemon=True)
        self._thread.start()
        error = ready.get()
        if error:
            self.close()
            raise SetupError(f"setns into the test network namespace failed: {error}")

    def _serve(self, ready) -> None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(self._fd, CLONE_NEWNET) != 0:
            ready.put(os.strerror(ctypes.get_errno()))
            return
        ready.put(None)
        while True:
            item = self._calls.get()
            if item is None:
                return
            fn, reply = item
            try:
                reply.put((True, fn()))
            except BaseException as exc:  # noqa: BLE001 - handed back to the caller
                reply.put((False, exc))

    def call(self, fn):
        """Run ``fn`` (which makes sockets) inside the namespace; returns its result."""
        import queue

        reply: queue.Queue = queue.Queue()
        self._calls.put((fn, reply))
        ok, value = reply.get()
        if not ok:
            raise value
        return value

    def argv(self, cmd: list[str]) -> list[str]:
        return ["nsenter", f"--net={self.path}", "--", *cmd]

    def pod_ip(self, index: int) -> str:
        """The index-th pod address (from 198.18.1.0); any address of the range is local here."""
        return str(POD_NETWORK.network_address + 256 + index)

    def forward(self, target: tuple[str, int]) -> tuple["socket.socket", int]:
        """Listen on 127.0.0.1:<free port> of this (the host's) namespace and pipe every connection
        to ``target`` inside the namespace. Returns the listening socket and its port."""
        import threading

        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)

        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)

        def accept() -> None:
            while True:
                try:
                    client, _ = listener.accept()
                except OSError:
                    return
                try:
                    upstream = self.call(lambda: socket.create_connection(target, timeout=10))
                    upstream.settimeout(None)
                except OSError:
                    client.close()
                    continue
                threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
                threading.Thread(target=pump, args=(upstream, client), daemon=True).start()

        threading.Thread(target=accept, name=f"forward-{target[1]}", daemon=True).start()
        return listener, listener.getsockname()[1]

    def close(self) -> None:
        if getattr(self, "_calls", None) is not None:
            self._calls.put(None)
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None
        if self.holder.poll() is None:
            self.holder.kill()
        self.holder.wait()


def _pem_key(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_pki(directory: Path, hosts: list[str], ips: list[str]) -> dict[str, Path]:
    """A throwaway CA, the API server's serving certificate and the service-account key pair."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rdx-test-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName(h) for h in hosts] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    sa_key = ec.generate_private_key(ec.SECP256R1())
    files = {
        "ca": directory / "ca.crt", "cert": directory / "apiserver.crt", "key": directory / "apiserver.key",
        "sa_key": directory / "sa.key", "sa_pub": directory / "sa.pub",
    }
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(_pem_key(key))
    files["sa_key"].write_bytes(_pem_key(sa_key))
    files["sa_pub"].write_bytes(sa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                                 serialization.PublicFormat.SubjectPublicKeyInfo))
    for name in ("key", "sa_key"):
        files[name].chmod(0o600)
    return files


@dataclass
class LocalAPIServer:
    """etcd + kube-apiserver for tests, in ``home`` (a temporary directory).

    ``tokens`` maps bearer tokens to (user, groups); the default has one admin in
    ``system:masters``. With ``pod_network`` the two run in a :class:`NetNamespace`, reached
    through a forwarder on 127.0.0.1, and the API server can proxy to pods of that namespace.
    """

    home: Path
    pod_network: bool = True
    tokens: dict[str, tuple[str, list[str]]] = field(default_factory=dict)
    log: object = print
    netns: NetNamespace | None = field(default=None, init=False)
    processes: list[subprocess.Popen] = field(default_factory=list, init=False)
    port: int = field(default=0, init=False)
    admin_token: str = field(default="", init=False)
    ca_file: Path | None = field(default=None, init=False)
    _listener: object = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> "LocalAPIServer":
        from rdx.components import free_port

        etcd, apiserver = ensure_etcd(self.log), ensure_kube_apiserver(self.log)
        started = time.monotonic()
        self.home.mkdir(parents=True, exist_ok=True)
        try:
            if self.pod_network:
                self.netns = NetNamespace()
                # Inside the namespace nothing else listens: fixed ports cannot collide.
                etcd_client, etcd_peer, secure_port = 2379, 2380, 6443
            else:
                etcd_client, etcd_peer, secure_port = free_port(), free_port(), free_port()
            pki = make_pki(self.home / "pki", ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"],
                           ["127.0.0.1", APISERVER_POD_IP, str(ipaddress.ip_network(SERVICE_CIDR).network_address + 1)])
            self.ca_file = pki["ca"]
            self.admin_token = secrets.token_urlsafe(24)
            tokens = {self.admin_token: ("rdx-test-admin", ["system:masters"]), **self.tokens}
            token_file = self.home / "tokens.csv"
            token_file.write_text("".join(f'{t},{user},{user},"{",".join(groups)}"\n' for t, (user, groups) in tokens.items()))
            token_file.chmod(0o600)
            etcd_url = f"http://127.0.0.1:{etcd_client}"
            self._spawn("etcd", [
                str(etcd), "--name", "rdx-test", "--data-dir", str(self.home / "etcd"),
                "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
                "--listen-peer-urls", f"http://127.0.0.1:{etcd_peer}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{etcd_peer}",
                "--initial-cluster", f"rdx-test=http://127.0.0.1:{etcd_peer}",
                "--log-level", "warn", "--unsafe-no-fsync", "--quota-backend-bytes", str(512 << 20),
            ])
            self._spawn("kube-apiserver", [
                str(apiserver),
                "--etcd-servers", etcd_url,
                "--bind-address", "127.0.0.1", "--secure-port", str(secure_port),
                "--advertise-address", APISERVER_POD_IP,
                "--endpoint-reconciler-type", "none",
                "--tls-cert-file", str(pki["cert"]), "--tls-private-key-file", str(pki["key"]),
                "--client-ca-file", str(pki["ca"]),
                "--token-auth-file", str(token_file),
                "--authorization-mode", "RBAC",
                # ServiceAccount admission waits for the token controller (a controller manager).
                "--disable-admission-plugins", "ServiceAccount",
                "--service-account-issuer", "https://kubernetes.default.svc",
                "--service-account-key-file", str(pki["sa_pub"]),
                "--service-account-signing-key-file", str(pki["sa_key"]),
                "--service-cluster-ip-range", SERVICE_CIDR,
                "--allow-privileged=false", "--profiling=false",
                "--enable-priority-and-fairness=false",
                "--shutdown-delay-duration=0s",
                "--v=0",
            ])
            if self.netns is not None:
                self._listener, self.port = self.netns.forward(("127.0.0.1", secure_port))
            else:
                self.port = secure_port
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        self.log(f"kube-apiserver {KUBERNETES_VERSION} (etcd {ETCD_VERSION}) ready at {self.url} "
                 f"in {time.monotonic() - started:.1f}s")
        return self

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.home / f"{name}.log", "ab")
        if self.netns is not None:
            argv = self.netns.argv(argv)
        try:
            self.processes.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                   cwd=self.home, preexec_fn=_die_with_parent))
        finally:
            log.close()

    def _log_tail(self, name: str, lines: int = 25) -> str:
        try:
            return "\n".join((self.home / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _wait_ready(self, timeout: float) -> None:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for proc, name in zip(self.processes, ("etcd", "kube-apiserver")):
                if proc.poll() is not None:
                    raise SetupError(f"{name} exited with code {proc.returncode}; its log is {self.home / (name + '.log')}:\n"
                                     f"{self._log_tail(name)}")
            request = urllib.request.Request(f"{self.url}/readyz", headers={"Authorization": f"Bearer {self.admin_token}"})
            try:
                with urllib.request.urlopen(request, timeout=5, context=context) as response:
                    if response.status == 200:
                        return
            except Exception as exc:  # noqa: BLE001 - not ready yet
                last = str(exc)
            time.sleep(0.3)
        raise SetupError(f"kube-apiserver did not become ready within {timeout:.0f}s (last: {last}); its log is "
                         f"{self.home / 'kube-apiserver.log'}:\n{self._log_tail('kube-apiserver')}")

    def kubeconfig(self, path: Path, token: str | None = None, user: str = "rdx-test-admin") -> Path:
        """A kubeconfig for this server (the admin by default), as `rdx ops --kubeconfig` reads it."""
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "rdx-test", "preferences": {},
            "clusters": [{"name": "rdx-test", "cluster": {
                "server": self.url,
                "certificate-authority-data": base64.b64encode(self.ca_file.read_bytes()).decode()}}],
            "users": [{"name": user, "user": {"token": token or self.admin_token}}],
            "contexts": [{"name": "rdx-test", "context": {"cluster": "rdx-test", "user": user}}],
        }
        path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        path.chmod(0o600)
        return path

    def stop(self) -> None:
        for proc in reversed(self.processes):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.processes.clear()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
            self._listener = None
        if self.netns is not None:
            self.netns.close()
            self.netns = None

    def __enter__(self) -> "LocalAPIServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def ensure_all(log=print) -> tuple[Path, Path, Path]:
    return ensure_etcd(log), ensure_kube_apiserver(log), ensure_kubectl(log)


if __name__ == "__main__":
    try:
        started = time.monotonic()
        for path in ensure_all():
            print(path)
        print(f"ready in {time.monotonic() - started:.0f}s")
    except SetupError as exc:
        print(f"rdx k8s setup: {exc}", file=sys.stderr)
        sys.exit(2)
