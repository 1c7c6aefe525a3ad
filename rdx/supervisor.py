"""``rdx up``: the whole exchange on one machine, on loopback, with its data in one directory.

Start order follows the dependencies: Kafka, then the consensus service (it serves ABCI, so it
must listen before CometBFT dials it), then CometBFT, then the other services, then the local
members' compute nodes. Stop order is the reverse. A second ``rdx up`` on the same state
directory resumes where the first stopped.

Members' compute nodes (``member-nodes.json`` in the state directory, written by ``rdx demo``):
in a deployment each member runs its own node on its own premises; on one machine the supervisor
runs them, so they outlive the command that asked for them (a job submitted after the demo has
nodes to run it) and ``rdx down`` stops them with the rest. The supervisor reads the file when it
changes (every half second) and starts, restarts or stops nodes to match it; a file it cannot
accept (not a regular file, such as a FIFO or a link to a device, refused at once; over 1 MiB; not
valid) is reported in its log and the running nodes are left as they are.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rdx import toolchain
from rdx.components import (LOOPBACK, CometNode, KafkaBroker, ServiceProcess, comet_healthy, compute_node, http_ok,
                            kafka_healthy)
from rdx.toolchain import SetupError
from services.common.events import TOPICS
from services.common.files import FileRefused, load_identity, read_regular, reason
from services.common.identity import Identity

STATE_VERSION = 1


@dataclass(frozen=True)
class Ports:
    kafka: int = 9092
    kafka_controller: int = 9093
    cometbft_rpc: int = 26657
    cometbft_p2p: int = 26656
    abci: int = 26658
    gateway: int = 8000
    catalog: int = 8001
    compute: int = 8002
    billing: int = 8003
    consensus: int = 8004

    def shifted(self, offset: int) -> "Ports":
        """Every port moved by ``offset``: a second exchange (or a test) beside the first."""
        return Ports(**{name: port + offset for name, port in self.__dict__.items()})


SERVICES_AFTER_CHAIN = ("catalog", "compute", "billing", "gateway")
MEMBER_NODES = "member-nodes.json"
MAX_MEMBER_NODES = 16


class NodeSpec(BaseModel):
    """One member's compute node as ``member-nodes.json`` asks for it; paths inside the state directory."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    member: str = Field(pattern=r"^[a-z0-9][a-z0-9\-]{0,39}$")
    http_port: int = Field(ge=1024, le=65535)
    grpc_port: int = Field(ge=1024, le=65535)
    key_file: str = Field(max_length=4096)
    datasets: str = Field(max_length=4096)
    workers: int = Field(1, ge=1, le=8)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"


class NodesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    nodes: list[NodeSpec] = Field(max_length=MAX_MEMBER_NODES)


class BadNodesFile(ValueError):
    """``member-nodes.json`` cannot be accepted; the message says why, without its content."""


def read_member_nodes(state: Path) -> dict[str, NodeSpec]:
    """The nodes ``member-nodes.json`` asks for, by member ({} when there is no file)."""
    path = state / MEMBER_NODES
    try:  # a FIFO would hold the supervisor's loop forever, /dev/zero fill its memory
        raw = read_regular(path, 1 << 20)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise BadNodesFile(f"{path} {reason(exc)}") from None
    try:
        parsed = NodesFile.model_validate_json(raw)
    except ValidationError as exc:
        where = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in exc.errors()[:5])
        raise BadNodesFile(f"{path}: {where}") from None
    nodes: dict[str, NodeSpec] = {}
    root = state.resolve()
    for spec in parsed.nodes:
        if spec.member in nodes:
            raise BadNodesFile(f"{path}: member {spec.member} is named twice")
        for name in ("key_file", "datasets"):
            target = (root / getattr(spec, name)).resolve()
            if not target.is_relative_to(root) or not target.is_file():
                raise BadNodesFile(f"{path}: {spec.member}'s {name} is not a file in the state directory")
        nodes[spec.member] = spec
    ports = [p for spec in nodes.values() for p in (spec.http_port, spec.grpc_port)]
    if len(ports) != len(set(ports)):
        raise BadNodesFile(f"{path}: two nodes ask for the same port")
    return nodes


def write_member_nodes(state: Path, nodes: list[NodeSpec]) -> None:
    """Ask the running supervisor for these nodes (atomically: it never reads half a file)."""
    _replace_text(state / MEMBER_NODES, NodesFile(nodes=nodes).model_dump_json(indent=2))


def _replace_text(path: Path, text: str) -> None:
    """Write ``path`` atomically, replacing whatever is there: a reader never sees half a file, and a
    FIFO left at the path (or at its temporary name) cannot hold the writer until a reader comes."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _state_json(path: Path) -> dict:
    """A JSON object the supervisor wrote in its state directory (endpoints, pids), or SetupError
    saying what is wrong with the file (not a regular file, over 1 MiB, not a JSON object)."""
    try:
        doc = json.loads(read_regular(path, 1 << 20))
    except OSError as exc:
        raise SetupError(f"{path} {reason(exc)}") from None
    except (ValueError, RecursionError):
        doc = None
    if not isinstance(doc, dict):
        raise SetupError(f"{path} is corrupt (not a JSON object)")
    return doc


def check_state_dir(state: Path) -> None:
    """Refuse a state directory that another rdx version wrote, or whose marker is unreadable."""
    marker = state / "rdx-state.json"
    if not marker.exists():
        if state.exists() and any(p.name != "logs" for p in state.iterdir()):
            raise SetupError(f"{state} is not empty and has no rdx-state.json: it is not an rdx state directory "
                             "(or it is corrupt); choose another --state-dir or delete it")
        state.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"version": STATE_VERSION}))
        return
    try:
        version = json.loads(read_regular(marker, 4096))["version"]
    except OSError as exc:  # a FIFO, a directory, a device: refused at once
        raise SetupError(f"{marker} {reason(exc)}; delete the state directory to start afresh") from None
    except (ValueError, KeyError, TypeError, RecursionError):
        version = None
    if not isinstance(version, int) or isinstance(version, bool):  # named in the message below: a number only
        raise SetupError(f"{marker} is corrupt; delete the state directory to start afresh")
    if version != STATE_VERSION:
        raise SetupError(f"{state} was written by state version {version}; this rdx reads version {STATE_VERSION}")


# The local exchange's block timing (docs/compute.md, "Where a job waits on the chain"): a consortium
# chain of a few known validators, near each other, makes a block when there is a transaction to put
# in it (and the proof block after it, which CometBFT makes at once when the app hash changed). After a
# block it waits ``timeout_commit`` for the precommits beyond the two thirds that decided it (a late
# precommit has several round trips between sites of one region to arrive), unless every validator's
# is in already (``skip_timeout_commit``: one validator's at once, a healthy consortium's after a
# round trip), when there is nothing left to wait for. And it makes one block a second at least, so
# that the chain's clock (deadlines, expiries) moves, the freshest header stays well within a
# verified reader's 60 s limit, and a transaction CometBFT did not propose at once waits a second at
# most (with 10 s, one bench round waited 10 s).
BLOCK_TIMING = {"timeout_commit": "100ms", "skip_timeout_commit": True, "create_empty_blocks": False, "empty_blocks_interval": "1s"}


class Exchange:
    def __init__(self, state: Path, ports: Ports = Ports(), log=print, overrides: dict[str, dict[str, str]] | None = None):
        """``overrides``: extra RDX_* settings per service name (benchmarks raise the rate limits)."""
        self.state, self.ports, self.log = state.resolve(), ports, log
        self.overrides = overrides or {}
        tc = toolchain.installed()
        self.kafka = KafkaBroker(self.state / "kafka", tc, port=ports.kafka, controller_port=ports.kafka_controller)
        self.comet = CometNode(self.state / "cometbft", tc, rpc_port=ports.cometbft_rpc, p2p_port=ports.cometbft_p2p,
                               abci_port=ports.abci, **BLOCK_TIMING)
        self.keys = self.state / "keys"
        # Every service trusts the chain's genesis, not its node: reads and chain events are proven.
        self.trusted_genesis = self.comet.home / "config" / "genesis.json"
        common = {
            "RDX_KAFKA_BOOTSTRAP": self.kafka.bootstrap,
            "RDX_COMETBFT_RPC": self.comet.rpc_url,
            "RDX_CHAIN_ID": self.comet.chain_id,
            "RDX_STATE_ROOT": str(self.state),
            "RDX_TRUSTED_GENESIS": str(self.trusted_genesis),
        }
        logs = self.state / "logs"
        self.consensus = ServiceProcess("consensus", ports.consensus, {**common, "RDX_ABCI_PORT": str(ports.abci)}, logs)
        self.services = [ServiceProcess(name, getattr(ports, name), dict(common), logs) for name in SERVICES_AFTER_CHAIN]
        self.nodes: dict[str, tuple[NodeSpec, ServiceProcess]] = {}
        self._nodes_seen: tuple[int, int] | None = None

    def _extra_env(self, name: str) -> dict[str, str]:
        p = self.ports
        if name == "gateway":
            self.keys.mkdir(parents=True, exist_ok=True)
            token = admin_token(self.keys)
            return {"RDX_KEY_FILE": str(self.keys / "association.node.json"),
                    "RDX_BOOTSTRAP_KEY_SHA256": hashlib.sha256(token.encode()).hexdigest(),
                    "RDX_CATALOG_URL": f"http://{LOOPBACK}:{p.catalog}",
                    "RDX_BILLING_URL": f"http://{LOOPBACK}:{p.billing}"}
        return {}

    def endpoints(self) -> dict[str, str]:
        eps = {"kafka": self.kafka.bootstrap, "cometbft": self.comet.rpc_url, "consensus": self.consensus.url}
        eps.update({s.name: s.url for s in self.services})
        eps.update({f"node:{member}": node.url for member, (_, node) in sorted(self.nodes.items())})
        return eps

    def _write_state_files(self) -> None:
        _replace_text(self.state / "endpoints.json", json.dumps(self.endpoints(), indent=2))
        _replace_text(self.state / "pids.json", json.dumps({name: p.pid for name, p in self.processes() if p}, indent=2))

    def sync_member_nodes(self) -> bool:
        """Start, restart or stop members' nodes to match ``member-nodes.json`` if it changed since
        the last look; True if anything changed. A file that cannot be accepted changes nothing."""
        path = self.state / MEMBER_NODES
        try:
            st = path.stat()
            seen = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            seen = None
        if seen == self._nodes_seen:
            return False
        self._nodes_seen = seen
        try:
            wanted = read_member_nodes(self.state)
        except (BadNodesFile, OSError) as exc:
            self.log(f"rdx: member nodes unchanged: {exc}")
            return False
        changed = False
        for member in sorted(self.nodes):
            spec, node = self.nodes[member]
            if wanted.get(member) != spec or not (node.process and node.process.alive()):
                node.stop()
                del self.nodes[member]
                changed = True
        for member, spec in sorted(wanted.items()):
            if member in self.nodes:
                continue
            node = compute_node(member, kafka=self.kafka.bootstrap, rpc_url=self.comet.rpc_url,
                                chain_id=self.comet.chain_id, state_root=self.state / "member-nodes",
                                key_file=self.state / spec.key_file, grpc_port=spec.grpc_port,
                                datasets=self.state / spec.datasets, log_dir=self.state / "logs" / "members" / member,
                                http_port=spec.http_port, workers=spec.workers, log_level=spec.log_level,
                                trusted_genesis=self.trusted_genesis)
            try:
                node.start(wait=False)
            except (SetupError, OSError) as exc:  # its port is taken: say so, keep the others
                self.log(f"rdx: {member}'s compute node not started: {exc}")
                continue
            self.nodes[member] = (spec, node)
            self.log(f"rdx: {member}'s compute node started on {node.url} (peer gRPC {LOOPBACK}:{spec.grpc_port})")
            changed = True
        if changed:
            self._write_state_files()
        return changed

    def start(self) -> None:
        check_state_dir(self.state)
        started = time.monotonic()
        self.log("starting Kafka ...")
        self.kafka.prepare()
        self.kafka.start()
        self.kafka.create_topics(TOPICS)
        self.log("starting the consensus service (ABCI) ...")
        self.consensus.start()
        self.log("starting CometBFT ...")
        association = local_identity(self.keys, "association")
        self.comet.app_state = genesis_app_state(association, local_identity(self.keys, "association.node"))
        save_local_seat(self.keys, association)
        self.comet.prepare()
        self.comet.start()
        for svc in self.services:
            self.log(f"starting {svc.name} ...")
            svc.env.update({**self._extra_env(svc.name), **self.overrides.get(svc.name, {})})
            svc.start(wait=False)
        for svc in self.services:
            svc.wait_ready()
        self._write_state_files()
        self.sync_member_nodes()  # a resumed exchange runs the nodes its members had
        for member, (_, node) in sorted(self.nodes.items()):
            try:
                node.wait_ready(60)
            except SetupError as exc:  # the exchange itself is up; `rdx status` names the node
                self.log(f"rdx: {member}'s compute node is not ready: {exc}")
        self.log(f"rdx is up in {time.monotonic() - started:.1f}s")
        self.log(endpoints_text(self.state))

    def stop(self) -> None:
        for member in sorted(self.nodes):
            self.nodes[member][1].stop()
        for svc in reversed(self.services):
            svc.stop()
        self.comet.stop()
        self.consensus.stop()
        self.kafka.stop()

    def processes(self):
        yield "kafka", self.kafka.process
        yield "consensus", self.consensus.process
        yield "cometbft", self.comet.process
        for svc in self.services:
            yield svc.name, svc.process
        for member, (_, node) in sorted(self.nodes.items()):
            yield f"node:{member}", node.process


def local_identity(keys: Path, account: str) -> Identity:
    """A signing key of this local exchange (the association's, its gateway's), made on first start (0600)."""
    path = keys / f"{account}.json"
    if path.exists():
        try:
            identity = load_identity(path)
        except OSError as exc:
            raise SetupError(f"{path} {reason(exc)}") from None
        if identity.account != account:
            raise SetupError(f"{path} is the key of {identity.account}, not of {account}")
        return identity
    identity = Identity.generate(account)
    identity.save(path)
    return identity


def save_local_seat(keys: Path, association: Identity) -> Path:
    """The local board seat's key (derived from the association's, rdx/genesis.py ``local_seat``) as a
    key file beside it, for ``rdx board --key-file``."""
    from rdx.genesis import local_seat

    seat = local_seat(association)
    path = keys / f"{seat.account}.json"
    if not path.exists():
        seat.save(path)
    return path


def association_identity(keys: Path) -> Identity:
    return local_identity(keys, "association")


def genesis_app_state(association: Identity, gateway: Identity | None = None, params: dict | None = None) -> dict:
    """The rdx part of a local chain's genesis spec (rdx/genesis.py, which CometNode turns into
    genesis.json): the association, its node account (the key the gateway signs audit anchors with),
    a board of one seat derived from the association's key with the officer holding every power it
    may, and chain parameters where they differ from the defaults (services/consensus/params.py)."""
    from rdx.genesis import local_app_spec

    return local_app_spec(association, gateway=gateway, params=params)


def admin_token(keys: Path) -> str:
    """The association admin's first API key for this local exchange (0600; the gateway gets its hash)."""
    import os
    import secrets

    path = keys / "admin.token"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"rdx_bootstrap.{secrets.token_urlsafe(32)}")
    try:
        return read_regular(path, 4096).decode("ascii").strip()
    except OSError as exc:
        raise SetupError(f"{path} {reason(exc)}") from None
    except UnicodeDecodeError:  # never quoted: it is a secret
        raise SetupError(f"{path} is not an API key (not ASCII)") from None


def run_foreground(state: Path, ports: Ports = Ports()) -> int:
    """Start everything, then wait for Ctrl-C / SIGTERM (`rdx down`) and stop everything."""
    exchange = Exchange(state, ports)
    pid_file = state.resolve() / "supervisor.pid"
    stopping = False

    def on_signal(signum, _frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        exchange.start()
        me = _stat(os.getpid())
        _replace_text(pid_file, f"{os.getpid()} {me[19]}" if me else str(os.getpid()))
        reported: set[str] = set()
        while not stopping:
            exchange.sync_member_nodes()
            for name, proc in exchange.processes():
                if proc is not None and not proc.alive() and name not in reported:
                    reported.add(name)  # once; `rdx status` keeps showing it as down
                    print(f"rdx: {name} exited with code {proc.popen.returncode}; see {proc.log_path}", file=sys.stderr)
            time.sleep(0.5)
        return 0
    finally:
        print("rdx: stopping ...", flush=True)
        exchange.stop()
        pid_file.unlink(missing_ok=True)
        print("rdx: stopped", flush=True)


def status(state: Path) -> list[tuple[str, str, bool]]:
    """Each component with its endpoint and whether it answers its health check."""
    path = state / "endpoints.json"
    if not path.exists():
        raise SetupError(f"no exchange has been started with state directory {state} (run `make up`)")
    eps = _endpoints(state)
    rows = []
    for name, url in eps.items():
        if name == "kafka":
            ok = kafka_healthy(url)
        elif name == "cometbft":
            ok = comet_healthy(url)
        else:
            ok = http_ok(f"{url}/readyz")
        rows.append((name, url, ok))
    return rows


def _endpoints(state: Path) -> dict[str, str]:
    path = state / "endpoints.json"
    eps = _state_json(path)
    if not all(isinstance(url, str) and (name == "kafka" or url.startswith(("http://", "https://")))
               for name, url in eps.items()):  # each is fetched (no file: URL) and shown
        raise SetupError(f"{path} is corrupt (an endpoint that is not an http URL)")
    return eps


def endpoints_text(state: Path) -> str:
    eps = _endpoints(state)
    lines = [f"state directory: {state.resolve()}"] + [f"  {name:<10} {url}" for name, url in eps.items()]
    return "\n".join(lines)


def leftover_processes(state: Path) -> list[int]:
    """Processes of this exchange still running: those in ``pids.json`` that are alive and whose
    command line or environment names this state directory (a pid reused by another program is
    left alone)."""
    try:
        pids = _state_json(state / "pids.json")
    except SetupError:  # none, or not one the supervisor wrote: nothing to stop
        return []
    marker = str(state.resolve()).encode()
    alive = []
    for pid in pids.values():
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1:
            continue
        try:
            seen = Path(f"/proc/{pid}/cmdline").read_bytes() + Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:  # gone, or not ours to read
            continue
        if marker in seen:
            alive.append(pid)
    return alive


def stop_leftovers(state: Path, timeout: float = 15.0) -> list[int]:
    """SIGTERM, then SIGKILL after ``timeout``, every :func:`leftover_processes` (a supervisor that
    was killed cannot stop its children); the pids it stopped."""
    pids = leftover_processes(state)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in leftover_processes(state)):
        time.sleep(0.2)
    for pid in leftover_processes(state):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat's fields after the command name (state first, start time at [19]: clock
    ticks since boot), or None (gone, no /proc)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def supervisor_pid(state: Path) -> int | None:
    """The running supervisor's pid, from ``supervisor.pid`` (``<pid> <start time>``: a pid alone
    names any program once it is reused, after a reboot or a killed supervisor, and `rdx down` would
    SIGTERM it). A killed supervisor that nobody has reaped yet (a zombie: a detached one's parent
    is init, which may reap late) is not running."""
    try:
        fields = read_regular(state / "supervisor.pid", 64).split()
        pid = int(fields[0])
        if pid <= 1:  # 0, -1 would make `rdx down` signal its own group or every process it may
            return None
        os.kill(pid, 0)
    except (FileNotFoundError, FileRefused, ValueError, OverflowError, ProcessLookupError, IndexError):
        return None
    stat = _stat(pid)
    if stat is None:
        return pid  # no /proc: trust the signal check
    if stat[0] == "Z" or fields[1:] != [stat[19].encode()]:
        return None
    return pid
