"""A one-node Kubernetes cluster of real components, for tests/kubelet (``make test-kubelet``).

etcd and kube-apiserver (:class:`rdx.k8s_toolchain.LocalAPIServer`), kube-controller-manager,
kube-scheduler, a kubelet and kube-proxy (iptables mode), all v1.35.4 built from the Go module
proxy, CoreDNS (on the node, at the pod bridge's address: the kubelet's clusterDNS) and kube-router
v2.1.0's network policy controller (on the node: NetworkPolicies enforced with iptables and ipset); Debian's
containerd 1.6
as a private instance (config, root, state, socket and runc's state under ``home``) with its CRI
plugin and Debian's CNI plugins (``bridge`` + ``host-local``, a bridge of its own). No registry
is reachable here, so images come from the local Docker engine (``docker save | ctr import``)
and the sandbox ("pause") image is a small Go program built here.

What this host needs and why (all verified on the project's machines, see infra/README.md):
- ``failCgroupV1: false``: the host has cgroup v1, which Kubernetes 1.35 refuses by default;
- ``restrict_oom_score_adj``: there is no CAP_SYS_RESOURCE, so containerd must not ask runc for
  a negative ``oom_score_adj`` (the sandbox would fail with "can't get final child's PID");
- pods' cgroups under a cgroup root of their own (``/rdx-node-<id>``), removed at the end.

Nothing stays on the host after :meth:`OneNodeCluster.stop`: the kubelet sets kernel sysctls
(vm.overcommit_memory, kernel.panic, ...) and the CNI bridge plugin ip_forward; their values are
read first and written back. The bridge, its FORWARD rule, kube-proxy's chains (``--cleanup``,
then the KUBE-FIREWALL it leaves), kube-router's chains and ipsets, network namespaces, mounts, cgroups, /var/log/containers links,
CNI result files and the host directories the programs make are removed; ``left_on_host`` checks.
If the test process is killed outright, the programs die with it (PR_SET_PDEATHSIG) but the pods'
containers and shims do not, and nothing is undone.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

from rdx import k8s_toolchain as kt
from rdx.toolchain import SetupError, apt_install, cache_root

CONTAINERD = "/usr/bin/containerd"
CTR = "/usr/bin/ctr"
CNI_BIN = Path("/usr/lib/cni")
DEBIAN_PACKAGES = {CONTAINERD: "containerd", "/usr/sbin/runc": "runc", str(CNI_BIN / "bridge"): "containernetworking-plugins",
                   "/usr/sbin/iptables": "iptables", "/usr/sbin/ipset": "ipset"}
PAUSE_TAG = "rdx-pause:1"
PAUSE_REF = f"docker.io/library/{PAUSE_TAG}"  # how containerd names an image `docker save` named rdx-pause:1
POD_SUBNET = "10.244.7.0/24"  # fixed: one such cluster at a time on a machine
POD_GATEWAY = "10.244.7.1"  # the bridge's address on the host: the pods' route out, and their DNS server
CLUSTER_DOMAIN = "cluster.local"
# What the kubelet writes when protectKernelDefaults is false (kubelet/cm/container_manager_linux.go),
# and what the bridge plugin sets as a gateway: read before, written back after.
# kube-proxy's (route_localnet, conntrack) are turned off in its configuration, and watched all the same.
SYSCTLS = ["vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
           "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes", "net/ipv4/ip_forward",
           "net/ipv4/conf/all/route_localnet", "net/netfilter/nf_conntrack_max",
           "net/netfilter/nf_conntrack_tcp_timeout_established", "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
           "net/bridge/bridge-nf-call-iptables"]
CONTAINER_LOGS = Path("/var/log/containers")  # the kubelet's links there are not configurable
NETNS_DIR = Path("/var/run/netns")
# Host directories these programs make whatever their configuration says (the kubelet's device
# plugin socket, its flexvolume probe, the CNI result cache, the CRI plugin's netns mounts): each
# one that did not exist before the start is removed at the stop.
HOST_DIRS = [Path("/var/lib/kubelet"), Path("/usr/libexec/kubernetes"), Path("/var/lib/cni"), NETNS_DIR,
             CONTAINER_LOGS, Path("/run/xtables.lock")]
IPTABLES = ["iptables", "ip6tables"]
TABLES = ["filter", "nat", "mangle"]
# kube-router's network policy controller (the NetworkPolicy enforcer): its filter chains and ipsets.
KUBE_ROUTER_CHAINS = ("KUBE-ROUTER-", "KUBE-POD-FW-", "KUBE-NWPLCY-")
KUBE_ROUTER_IPSETS = ("KUBE-SRC-", "KUBE-DST-")
KUBE_ROUTER_USER = "rdx-kube-router"
# What v2.1.0's informers read (its main starts them all, whichever controllers run), and nothing more.
KUBE_ROUTER_RBAC = [
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": KUBE_ROUTER_USER}, "rules": [
        {"apiGroups": [""], "resources": ["pods", "namespaces", "nodes", "services", "endpoints"],
         "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
        {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["list", "watch"]}]},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": KUBE_ROUTER_USER},
     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": KUBE_ROUTER_USER},
     "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": KUBE_ROUTER_USER}]},
]

PAUSE_GO = """\
// The pod sandbox's process: holds the pod's namespaces until it is told to stop.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		for {
			var status syscall.WaitStatus
			syscall.Wait4(-1, &status, 0, nil) // reap what the pod's other processes leave
		}
	}()
	<-stop
}
"""


def ensure_packages(log=print) -> None:
    apt_install(sorted({pkg for path, pkg in DEBIAN_PACKAGES.items() if not Path(path).exists()}), "kubelet", log)


def ensure_binaries(log=print) -> dict[str, Path]:
    return {"etcd": kt.ensure_etcd(log), "kube-apiserver": kt.ensure_kube_apiserver(log),
            "kube-controller-manager": kt.ensure_kube_controller_manager(log),
            "kube-scheduler": kt.ensure_kube_scheduler(log), "kubelet": kt.ensure_kubelet(log),
            "kube-proxy": kt.ensure_kube_proxy(log)}


def ensure_pause(log=print) -> Path:
    """The pause program, a static Go binary, built once into the cache."""
    binary = cache_root() / "pause-1" / "bin" / "pause"

    return kt._once(binary, lambda: kt._build("pause", "1", binary, "module rdx.local/pause\n\ngo 1.22\n", ".",
                                              "-s -w", log, main=PAUSE_GO))


COREDNS_VERSION = "v1.15.0"
# CoreDNS with only the plugins the cluster's DNS uses (its own main, as CoreDNS documents for
# custom builds): the full set would build AWS, Azure and GCP clients too.
COREDNS_MAIN = """\
// Generated by rdx/k8s_node.py: CoreDNS with the bind, errors, cache and kubernetes plugins.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/kubernetes"
)

func init() {
	dnsserver.Directives = []string{"bind", "errors", "cache", "kubernetes"} // plugin.cfg's order
}

func main() {
	coremain.Run()
}
"""


def coredns_bin() -> Path:
    return cache_root() / f"coredns-{COREDNS_VERSION}" / "bin" / "coredns"


def ensure_coredns(log=print) -> Path:
    """CoreDNS built once from the Go module proxy (the cluster's DNS, run on the node)."""
    def build() -> Path:
        log(f"building CoreDNS {COREDNS_VERSION} from the Go module proxy (once) ...")
        gomod = kt._module_gomod("github.com/coredns/coredns", COREDNS_VERSION)
        wrapper = (f"module rdx.local/coredns\n\ngo {kt._go_directive(gomod)}\n\n"
                   f"require github.com/coredns/coredns {COREDNS_VERSION}\n")
        return kt._build("CoreDNS", COREDNS_VERSION, coredns_bin(), wrapper, ".", "-s -w", log, main=COREDNS_MAIN)

    return kt._once(coredns_bin(), build)


def pause_image(docker_env: dict[str, str], docker: str, log=print) -> str:
    """``rdx-pause:1`` in the Docker engine: the pause binary alone (``docker import`` of a tarball)."""
    if subprocess.run([docker, "image", "inspect", PAUSE_TAG], env=docker_env, capture_output=True).returncode == 0:
        return PAUSE_TAG
    binary = ensure_pause(log)
    with tempfile.TemporaryDirectory() as tmp:
        tarball = Path(tmp) / "pause.tar"
        subprocess.run(["tar", "--owner=0", "--group=0", "-C", str(binary.parent), "-cf", str(tarball), "pause"], check=True)
        _check([docker, "import", "--change", 'ENTRYPOINT ["/pause"]', "--change", "USER 65535:65535", str(tarball),
                PAUSE_TAG], "docker import the pause image", env=docker_env)
    return PAUSE_TAG


def _check(cmd: list[str], what: str, **kwargs) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise SetupError(f"{what} failed (exit {result.returncode}): {' '.join(cmd[:4])} ...\n"
                         f"{(result.stdout + result.stderr).strip()[-2000:]}")
    return result.stdout


def _read_sysctl(name: str) -> str | None:
    try:
        return Path("/proc/sys", name).read_text().strip()
    except OSError:
        return None


def _cgroup_hierarchies() -> list[Path]:
    """Every mounted cgroup hierarchy, v1 and (on a hybrid host, where runc makes the pods' cgroups
    there too) v2; cpu and cpuacct may be one directory under two names."""
    seen, out = set(), []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        parts = line.split()
        fstype = parts[parts.index("-") + 1]
        if fstype in ("cgroup", "cgroup2"):
            path = Path(parts[4])
            if path.resolve() not in seen:
                seen.add(path.resolve())
                out.append(path)
    return out


class OneNodeCluster:
    """Start with :meth:`start`, always :meth:`stop` (also when start fails half way)."""

    def __init__(self, log=print, kube_proxy: bool = True, dns: bool = True, network_policies: bool = True):
        self.log = log
        self.with_kube_proxy = kube_proxy
        self.with_network_policies = network_policies
        self.with_dns = dns
        self.id = secrets.token_hex(3)
        # Short: unix socket paths must stay under 108 bytes.
        self.home = Path(tempfile.mkdtemp(prefix=f"rdx-node-{self.id}-", dir="/tmp"))
        self.bridge = f"rdxnode{self.id}"[:15]
        self.cgroup_root = f"/rdx-node-{self.id}"
        self.socket = self.home / "containerd.sock"
        self.node_name = f"rdx-node-{self.id}"
        self.api: kt.LocalAPIServer | None = None
        self.processes: dict[str, subprocess.Popen] = {}
        self.kubeconfig: Path | None = None
        self._sysctls: dict[str, str] = {}
        self._forward_rule: list[str] | None = None
        self._netns_before: set[str] = set()
        self._logs_before: set[str] | None = None
        self._cgroups_made: list[Path] = []
        self._host_dirs_made: list[Path] = []
        self._kube_chains_before: set[str] = set()
        self._kube_proxy_config: Path | None = None
        self.timings: dict[str, float] = {}

    # -- start -----------------------------------------------------------------------------------
    def start(self) -> "OneNodeCluster":
        started = time.monotonic()
        binaries = ensure_binaries(self.log)
        self._sysctls = {name: value for name in SYSCTLS if (value := _read_sysctl(name)) is not None}
        self._netns_before = set(os.listdir(NETNS_DIR)) if NETNS_DIR.is_dir() else set()
        self._logs_before = set(os.listdir(CONTAINER_LOGS)) if CONTAINER_LOGS.is_dir() else None
        self._host_dirs_made = [d for d in HOST_DIRS if not d.exists()]
        router_token = secrets.token_urlsafe(24) if self.with_network_policies else ""
        if self.with_network_policies:
            if left := kube_router_state():
                raise SetupError(f"kube-router's chains or ipsets are already on this host (another enforcer?): {left[:5]}")
            binaries["kube-router"] = kt.ensure_kube_router(self.log)
        self.api = kt.LocalAPIServer(self.home / "api", pod_network=False, log=self.log,
                                     tokens={router_token: (KUBE_ROUTER_USER, [])} if router_token else {}).start()
        self.kubeconfig = self.api.kubeconfig(self.home / "admin.kubeconfig")
        self._bridge()
        if self.with_dns:
            self._coredns()
        self._containerd()
        self._spawn("kube-controller-manager", [
            str(binaries["kube-controller-manager"]), "--kubeconfig", str(self.kubeconfig),
            "--leader-elect=false", "--secure-port=0", "--use-service-account-credentials=false",
            "--service-cluster-ip-range", kt.SERVICE_CIDR, "--root-ca-file", str(self.api.ca_file),
            "--node-monitor-grace-period=20s", "--flex-volume-plugin-dir", str(self.home / "volume-plugins"),
            "--v=1"])
        self._spawn("kube-scheduler", [
            str(binaries["kube-scheduler"]), "--kubeconfig", str(self.kubeconfig), "--leader-elect=false",
            "--secure-port=0", "--v=1"])
        self._kubelet(binaries["kubelet"])
        self.wait_node_ready()
        if self.with_kube_proxy:
            self._kube_proxy()
        if self.with_network_policies:
            self._kube_router(binaries["kube-router"], router_token)
        self.timings["cluster_ready_s"] = time.monotonic() - started
        self.log(f"one-node cluster ready in {self.timings['cluster_ready_s']:.1f}s ({self.home})")
        return self

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        with open(self.home / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.home,
                                    env=env, preexec_fn=kt._die_with_parent)
        self.processes[name] = proc
        return proc

    def _wait(self, name: str, ready, what: str, timeout: float = 30.0, pause: float = 0.5) -> None:
        """Until ``ready()``; a SetupError with ``name``'s log if its process exits or time runs out."""
        deadline = time.monotonic() + timeout
        while not ready():
            if self.processes[name].poll() is not None or time.monotonic() > deadline:
                raise SetupError(f"{what}:\n{self.log_tail(name)}")
            time.sleep(pause)

    def log_tail(self, name: str, lines: int = 30) -> str:
        try:
            return "\n".join((self.home / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _bridge(self) -> None:
        """The pods' bridge, made before the first pod (the CNI bridge plugin takes it as it is) so that
        CoreDNS can listen on its address from the start."""
        for cmd in (["ip", "link", "add", "name", self.bridge, "type", "bridge"],
                    ["ip", "addr", "add", f"{POD_GATEWAY}/{POD_SUBNET.split('/')[1]}", "dev", self.bridge],
                    ["ip", "link", "set", self.bridge, "up"]):
            _check(cmd, " ".join(cmd))

    def _coredns(self) -> None:
        """CoreDNS on the bridge's address, answering for the cluster's Services from the API (the
        admin kubeconfig: the API server listens on the host's loopback, which pods cannot reach, so
        it runs on the node rather than as a pod)."""
        corefile = self.home / "Corefile"
        corefile.write_text(textwrap.dedent(f"""\
            .:53 {{
                bind {POD_GATEWAY}
                errors
                cache 5
                kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
                    kubeconfig {self.kubeconfig} rdx-test
                    fallthrough in-addr.arpa ip6.arpa
                }}
            }}
            """))
        self._spawn("coredns", [str(ensure_coredns(self.log)), "-conf", str(corefile)])
        self._wait("coredns", lambda: dns_query(POD_GATEWAY, f"kubernetes.default.svc.{CLUSTER_DOMAIN}") is not None,
                   f"CoreDNS did not answer on {POD_GATEWAY}:53")

    def _containerd(self) -> None:
        cni = self.home / "cni"
        (cni / "net.d").mkdir(parents=True)
        (cni / "net.d" / "10-rdx.conflist").write_text(json.dumps({
            "cniVersion": "0.4.0", "name": f"rdx-node-{self.id}",
            "plugins": [{"type": "bridge", "bridge": self.bridge, "isGateway": True, "ipMasq": False,
                         "hairpinMode": True,
                         "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_SUBNET}]],
                                  "dataDir": str(cni / "ipam"), "routes": [{"dst": "0.0.0.0/0"}]}}]}))
        root = self.home / "containerd"
        config = root / "config.toml"
        root.mkdir()
        config.write_text(textwrap.dedent(f"""\
            version = 2
            root = "{root / 'root'}"
            state = "{root / 'state'}"
            [grpc]
              address = "{self.socket}"
            [ttrpc]
              address = "{self.socket}.ttrpc"
            [plugins."io.containerd.internal.v1.opt"]
              path = "{root / 'opt'}"
            [plugins."io.containerd.grpc.v1.cri"]
              sandbox_image = "{PAUSE_REF}"
              # no CAP_SYS_RESOURCE here: a negative oom_score_adj for the sandbox would fail runc
              restrict_oom_score_adj = true
              stream_server_address = "127.0.0.1"
              [plugins."io.containerd.grpc.v1.cri".containerd]
                snapshotter = "overlayfs"
                default_runtime_name = "runc"
                [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
                  runtime_type = "io.containerd.runc.v2"
                  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
                    Root = "{root / 'runc'}"
                    SystemdCgroup = false
              [plugins."io.containerd.grpc.v1.cri".cni]
                bin_dir = "{CNI_BIN}"
                conf_dir = "{cni / 'net.d'}"
            """))
        self._spawn("containerd", [CONTAINERD, "--config", str(config)])
        self._wait("containerd", lambda: subprocess.run(self.ctr("version"), capture_output=True).returncode == 0,
                   "containerd did not start", pause=0.3)
        # Pod-to-pod traffic crosses the bridge; with br_netfilter loaded (the Docker engine loads
        # it) it goes through FORWARD, whose policy Docker sets to DROP.
        self._forward_rule = ["FORWARD", "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"]
        _check(["iptables", "-I", *self._forward_rule], "iptables -I FORWARD (the pod bridge)")

    def ctr(self, *args: str) -> list[str]:
        return [CTR, "--address", str(self.socket), "--namespace", "k8s.io", *args]

    def load_images(self, tags: list[str], docker: str, docker_env: dict[str, str]) -> None:
        """``docker save`` the tags and import them into this containerd (unpacked for overlayfs)."""
        started = time.monotonic()
        save = subprocess.Popen([docker, "save", *tags], stdout=subprocess.PIPE, env=docker_env)
        result = subprocess.run(self.ctr("images", "import", "-"), stdin=save.stdout, capture_output=True, text=True)
        save.stdout.close()
        if save.wait() != 0 or result.returncode != 0:
            raise SetupError(f"docker save {tags} | ctr images import failed (save exit {save.returncode}, "
                             f"import exit {result.returncode}): {result.stderr.strip()[-1500:]}")
        self.timings["images_loaded_s"] = time.monotonic() - started

    def _kubelet(self, kubelet: Path) -> None:
        from rdx.components import free_port

        for hierarchy in _cgroup_hierarchies():
            path = hierarchy / self.cgroup_root.lstrip("/")
            path.mkdir()
            self._cgroups_made.append(path)
            for name in ("cpuset.cpus", "cpuset.mems"):  # a new cpuset is empty until given its parent's
                if (hierarchy / name).exists():
                    (path / name).write_text((hierarchy / name).read_text())
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "failCgroupV1": False, "cgroupDriver": "cgroupfs", "cgroupRoot": self.cgroup_root, "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "address": "127.0.0.1", "port": free_port(), "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": free_port(),
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            "podLogsDir": str(self.home / "pod-logs"),
            "makeIPTablesUtilChains": False, "serializeImagePulls": False,
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            "resolvConf": "/etc/resolv.conf",
        }
        if self.with_dns:
            config.update(clusterDNS=[POD_GATEWAY], clusterDomain=CLUSTER_DOMAIN)
        path = self.home / "kubelet.yaml"
        path.write_text(json.dumps(config, indent=2))
        self._spawn("kubelet", [str(kubelet), "--config", str(path), "--kubeconfig", str(self.kubeconfig),
                                "--root-dir", str(self.home / "kubelet"), "--hostname-override", self.node_name,
                                "--cert-dir", str(self.home / "kubelet-pki"),
                                "--volume-plugin-dir", str(self.home / "volume-plugins"),
                                "--v=1"])

    def _kube_proxy(self) -> None:
        """kube-proxy in iptables mode: Services' ClusterIPs reach their pods. Every service connection is
        masqueraded, so a pod's reply to another pod on the bridge comes back through the NAT."""
        from rdx.components import free_port

        self._kube_chains_before = kube_chains()
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self.kubeconfig)}, "hostnameOverride": self.node_name,
            "mode": "iptables", "clusterCIDR": POD_SUBNET,
            "healthzBindAddress": f"127.0.0.1:{free_port()}", "metricsBindAddress": f"127.0.0.1:{free_port()}",
            "iptables": {"masqueradeAll": True, "localhostNodePorts": False, "syncPeriod": "10s", "minSyncPeriod": "0s"},
            # 0: leave the host's conntrack limits and timeouts as they are
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        }
        path = self.home / "kube-proxy.yaml"
        path.write_text(json.dumps(config, indent=2))
        self._kube_proxy_config = path
        self._spawn("kube-proxy", [str(kt.kube_proxy_bin()), "--config", str(path), "--v=1"])

    def _kube_router(self, binary: Path, token: str) -> None:
        """kube-router's network policy controller on the node (like kube-proxy; its router and service
        proxy off): per-pod iptables chains matching ipsets of the allowed peers, hooked into FORWARD
        (bridged pod-to-pod traffic, through br_netfilter and physdev) and OUTPUT; what no policy allows
        is rejected. It reads the API as a user with KUBE_ROUTER_RBAC's rights only."""
        from rdx.components import free_port

        self.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": KUBE_ROUTER_RBAC}))
        kubeconfig = self.api.kubeconfig(self.home / "kube-router.kubeconfig", token=token, user=KUBE_ROUTER_USER)
        self._spawn("kube-router", [
            str(binary), "--kubeconfig", str(kubeconfig), "--hostname-override", self.node_name,
            "--run-firewall=true", "--run-router=false", "--run-service-proxy=false",
            "--service-cluster-ip-range", kt.SERVICE_CIDR,
            # v2.1.0 serves its health check on every interface (":<port>"), so it is off here.
            "--health-port=0", "--metrics-addr=127.0.0.1", f"--metrics-port={free_port()}", "--v=1"])
        self._wait("kube-router", lambda: {"KUBE-ROUTER-FORWARD", "KUBE-NWPLCY-DEFAULT"} <= set(_chains("iptables", "filter")),
                   "kube-router made no chain within 30s")

    # -- the API ---------------------------------------------------------------------------------
    def run_kubectl(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([str(kt.ensure_kubectl(self.log)), "--kubeconfig", str(self.kubeconfig), *args],
                              input=input, capture_output=True, text=True, timeout=120)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        result = self.run_kubectl(*args, input=input)
        if check and result.returncode != 0:
            raise SetupError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def get(self, *args: str) -> dict:
        return json.loads(self.kubectl("get", "-o", "json", *args))

    def wait_node_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.processes.items():
                if proc.poll() is not None:
                    raise SetupError(f"{name} exited with code {proc.returncode}:\n{self.log_tail(name)}")
            nodes = self.get("nodes")["items"]
            if nodes and any(c["type"] == "Ready" and c["status"] == "True"
                             for c in nodes[0]["status"].get("conditions", [])):
                return
            time.sleep(1)
        raise SetupError(f"the node was not Ready within {timeout:.0f}s; kubelet's log:\n{self.log_tail('kubelet')}")

    # -- stop ------------------------------------------------------------------------------------
    def stop(self) -> list[str]:
        """Stop everything and undo what was changed on the host; returns what could not be undone."""
        problems: list[str] = []
        kubelet = self.processes.pop("kubelet", None)
        if "kube-router" in self.processes:
            problems += self._kube_router_cleanup()
        if "kube-proxy" in self.processes:
            _terminate(self.processes.pop("kube-proxy"))
            problems += self._kube_proxy_cleanup()
        for name in ("kube-scheduler", "kube-controller-manager", "coredns"):
            _terminate(self.processes.pop(name, None))
        _terminate(kubelet)
        if "containerd" in self.processes:
            problems += self._remove_containers()
        _terminate(self.processes.pop("containerd", None))
        self._kill_shims()
        if self.api is not None:
            self.api.stop()
        problems += self._undo_host_changes()
        self._keep_logs()
        shutil.rmtree(self.home, ignore_errors=True)
        if self.home.exists():
            problems.append(f"{self.home} could not be removed")
        return problems

    def _kube_router_cleanup(self) -> list[str]:
        """kube-router removes nothing when it stops. Its own ``--cleanup-config`` is not run: in v2.1.0
        it runs the network policy cleanup on an empty controller (no iptables or ipset handlers: it
        removes none of the firewall's chains or sets), then its service proxy cleanup tries to load
        ip_vs and flush every IPVS service on the host, and panics on a nil iptables handler
        (network_services_controller.go:1436; seen here, 2026-12-03). So its
        chains (their jumps first) and ipsets are removed here, and checked."""
        _terminate(self.processes.pop("kube-router"))
        for tool in IPTABLES:
            for chain in _chains(tool, "filter"):
                if chain.startswith(KUBE_ROUTER_CHAINS):
                    subprocess.run([tool, "-t", "filter", "-F", chain], capture_output=True)  # drops its jumps to others
            for chain in _chains(tool, "filter"):
                if chain.startswith(KUBE_ROUTER_CHAINS):
                    _remove_chain(tool, "filter", chain)
        for name in _ipsets():
            if name.startswith(KUBE_ROUTER_IPSETS):
                subprocess.run(["ipset", "destroy", name], capture_output=True)
        return [f"{item} (kube-router's) is left" for item in kube_router_state()]

    def _kube_proxy_cleanup(self) -> list[str]:
        """``kube-proxy --cleanup`` removes its chains and the jumps to them; then checked."""
        with open(self.home / "kube-proxy-cleanup.log", "ab") as log:
            code = subprocess.run([str(kt.kube_proxy_bin()), "--config", str(self._kube_proxy_config), "--cleanup"],
                                  stdout=log, stderr=subprocess.STDOUT).returncode
        # It leaves KUBE-FIREWALL (empty, jumped to from INPUT and OUTPUT), which the kubelet used to
        # own: removed here with every other KUBE-* chain that was not there before the start.
        for chain in sorted(kube_chains() - self._kube_chains_before):
            _remove_chain(*chain.split("/"))
        left = kube_chains() - self._kube_chains_before
        return ([f"kube-proxy --cleanup exited {code}"] if code else []) + [f"{c} (kube-proxy's) is left" for c in sorted(left)]

    def _keep_logs(self) -> None:
        """The components' logs of the last run, kept where a failure can be read after the stop."""
        keep = logs_dir()
        shutil.rmtree(keep, ignore_errors=True)
        keep.mkdir(parents=True)
        for log in [*self.home.glob("*.log"), *self.home.glob("api/*.log")]:
            shutil.copy2(log, keep / log.name)

    def _remove_containers(self) -> list[str]:
        """Every pod's containers and sandboxes stopped through containerd (the kubelet is gone), so the
        CNI DEL of each sandbox never runs: its netns and veth are removed in _undo_host_changes."""
        problems = []
        if self.processes["containerd"].poll() is not None:
            return ["containerd had exited before the stop"]
        tasks = subprocess.run(self.ctr("tasks", "ls", "-q"), capture_output=True, text=True).stdout.split()
        for task in tasks:
            subprocess.run(self.ctr("tasks", "kill", "-s", "SIGKILL", task), capture_output=True)
        deadline = time.monotonic() + 20
        for task in tasks:
            while subprocess.run(self.ctr("tasks", "delete", task), capture_output=True).returncode != 0:
                if time.monotonic() > deadline:
                    problems.append(f"containerd task {task} could not be deleted")
                    break
                time.sleep(0.5)
        for container in subprocess.run(self.ctr("containers", "ls", "-q"), capture_output=True, text=True).stdout.split():
            subprocess.run(self.ctr("containers", "delete", container), capture_output=True)
        return problems

    def _kill_shims(self) -> None:
        """containerd's shims outlive it; this instance's name its socket on their command line."""
        killed = []
        for pid in _pids_mentioning(str(self.socket)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        if killed:
            self.log(f"killed {len(killed)} containerd shim(s) left after containerd stopped: {killed}")

    def _undo_host_changes(self) -> list[str]:
        problems = []
        # mounts under home (containers' rootfs, sandboxes' shm, kubelet's volumes), deepest first
        for mount in sorted(_mounts_under(self.home), key=len, reverse=True):
            if subprocess.run(["umount", "-l", mount], capture_output=True).returncode != 0:
                problems.append(f"umount {mount} failed")
        if NETNS_DIR.is_dir():
            for name in set(os.listdir(NETNS_DIR)) - self._netns_before:
                if name.startswith("cni-"):  # the CRI plugin's, for this cluster's sandboxes
                    subprocess.run(["umount", str(NETNS_DIR / name)], capture_output=True)
                    with contextlib.suppress(OSError):
                        (NETNS_DIR / name).unlink()
        if Path(f"/sys/class/net/{self.bridge}").exists():
            subprocess.run(["ip", "link", "delete", self.bridge], capture_output=True)
        if self._forward_rule:
            if subprocess.run(["iptables", "-D", *self._forward_rule], capture_output=True).returncode != 0:
                problems.append(f"iptables -D {' '.join(self._forward_rule)} failed")
            self._forward_rule = None
        for name, value in self._sysctls.items():
            if (now := _read_sysctl(name)) != value:
                self.log(f"setting {name} back from {now} to {value}")
                try:
                    Path("/proc/sys", name).write_text(value)
                except OSError as exc:
                    problems.append(f"sysctl {name} could not be set back to {value}: {exc}")
        results = Path("/var/lib/cni/results")
        if results.is_dir():
            for f in results.glob(f"rdx-node-{self.id}-*"):
                f.unlink()
        if CONTAINER_LOGS.is_dir():
            for name in os.listdir(CONTAINER_LOGS):
                link = CONTAINER_LOGS / name
                if self._logs_before is not None and name in self._logs_before:
                    continue
                if link.is_symlink() and os.readlink(link).startswith(str(self.home)):
                    link.unlink()
        for path in self._host_dirs_made:
            if path.is_file():
                path.unlink()
            elif path == NETNS_DIR or path == CONTAINER_LOGS:
                with contextlib.suppress(OSError):
                    path.rmdir()  # only if empty: what is left in it is reported below
            else:
                shutil.rmtree(path, ignore_errors=True)
            if path.exists():
                problems.append(f"{path} (made by this cluster) is not empty: {sorted(os.listdir(path))[:5]}")
        for path in reversed(self._cgroups_made):  # children (kubepods/...) first
            for child in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    child.rmdir()
            try:
                path.rmdir()
            except OSError as exc:
                problems.append(f"cgroup {path} could not be removed: {exc}")
        self._cgroups_made = []
        return problems


def left_on_host(cluster: OneNodeCluster) -> list[str]:
    """What of ``cluster`` is still on the host after its stop (checked, not assumed)."""
    left = [f"process {pid}" for pid in _pids_mentioning(str(cluster.home))]
    left += [f"mount {m}" for m in _mounts_under(cluster.home)]
    if Path(f"/sys/class/net/{cluster.bridge}").exists():
        left.append(f"link {cluster.bridge}")
    rules = subprocess.run(["iptables", "-S"], capture_output=True, text=True).stdout
    left += [f"iptables {r}" for r in rules.splitlines() if cluster.bridge in r]
    for hierarchy in _cgroup_hierarchies():
        if (hierarchy / cluster.cgroup_root.lstrip("/")).exists():
            left.append(f"cgroup {hierarchy / cluster.cgroup_root.lstrip('/')}")
    left += [f"{d} (made by it)" for d in cluster._host_dirs_made if d.exists()]
    left += [f"sysctl {n}" for n, v in cluster._sysctls.items() if _read_sysctl(n) != v]
    if cluster.with_kube_proxy:
        left += sorted(kube_chains() - cluster._kube_chains_before)
    if cluster.with_network_policies:
        left += kube_router_state()
    return left


def kube_router_state() -> list[str]:
    """kube-router's chains, rules (its jumps carry a "kube-router" comment) and ipsets on the host."""
    left = []
    for tool in IPTABLES:
        out = subprocess.run([tool, "-t", "filter", "-S"], capture_output=True, text=True).stdout
        left += [f"{tool} {line}" for line in out.splitlines()
                 if (line.startswith("-N ") and line.split()[1].startswith(KUBE_ROUTER_CHAINS)) or "kube-router" in line]
    return left + [f"ipset {name}" for name in _ipsets() if name.startswith(KUBE_ROUTER_IPSETS)]


def _chains(tool: str, table: str) -> list[str]:
    out = subprocess.run([tool, "-t", table, "-S"], capture_output=True, text=True).stdout
    return [line.split()[1] for line in out.splitlines() if line.startswith("-N ")]


def _ipsets() -> list[str]:
    if shutil.which("ipset") is None:
        return []
    return subprocess.run(["ipset", "list", "-n"], capture_output=True, text=True).stdout.split()


def kube_chains() -> set[str]:
    """Every KUBE-* chain in the host's iptables and ip6tables tables, as "iptables/nat/KUBE-..."."""
    chains = set()
    for tool in IPTABLES:
        for table in TABLES:
            out = subprocess.run([tool, "-t", table, "-S"], capture_output=True, text=True).stdout
            chains |= {f"{tool}/{table}/{line.split()[1]}" for line in out.splitlines()
                       if line.startswith("-N KUBE-")}
    return chains


def _remove_chain(tool: str, table: str, chain: str) -> None:
    """Delete every rule jumping to ``chain`` in ``table``, then the chain."""
    for line in subprocess.run([tool, "-t", table, "-S"], capture_output=True, text=True).stdout.splitlines():
        parts = shlex.split(line)  # comments with spaces are quoted
        if parts[:1] == ["-A"] and parts[-2:] == ["-j", chain]:
            subprocess.run([tool, "-t", table, "-D", *parts[1:]], capture_output=True)
    subprocess.run([tool, "-t", table, "-F", chain], capture_output=True)
    subprocess.run([tool, "-t", table, "-X", chain], capture_output=True)


def logs_dir() -> Path:
    return cache_root() / "node-logs"


def dns_query(server: str, name: str, timeout: float = 2.0, port: int = 53) -> str | None:
    """The first A record the DNS server at ``server`` gives for ``name`` (one UDP query), or None:
    no answer, an error code, or a reply that is not a well-formed answer to this query (dnspython
    checks its id, question and flags)."""
    import dns.exception
    import dns.message
    import dns.query
    import dns.rdatatype

    try:
        reply = dns.query.udp(dns.message.make_query(name, dns.rdatatype.A), server, timeout=timeout,
                              port=port)
    except (dns.exception.DNSException, OSError):
        return None
    for rrset in reply.answer:
        if rrset.rdtype == dns.rdatatype.A:
            return next(iter(rrset)).address
    return None


def _terminate(proc: subprocess.Popen | None, timeout: float = 20.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _pids_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path) + "/"
    return [fields[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if (fields := line.split()) and fields[4].startswith(prefix)]
