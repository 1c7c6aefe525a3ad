"""The real components as local processes: an Apache Kafka broker (KRaft), a CometBFT node and
the rdx services. The supervisor (``rdx up``) and the test harness start them the same way.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import tomlkit

from rdx.toolchain import SetupError, Toolchain
from services.common.tx import MAX_TX_BYTES

LOOPBACK = "127.0.0.1"


_HANDED_OUT: set[int] = set()  # this process's picks (a fixture picks ports for servers it starts later)


# A one-broker KRaft cluster's topic settings (every internal topic with one replica), shared by the
# local supervisor's broker and the containerised exchange's (rdx/deploy.py).
SINGLE_BROKER = {
    "num.partitions": "1",
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "3",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "group.initial.rebalance.delay.ms": "0",
}


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range. A port the kernel hands out for
    bind(0) is in that range, and any outgoing connection may take it as its local port between
    the pick and the server's own bind: a testnet's validator lost its P2P port that way, most
    likely to its own app's Kafka clients. Below the range only an explicit bind can take it."""
    low = ephemeral_low()
    for _ in range(100):
        port = random.randint(max(1024, low - 10_000), low - 1)
        if port in _HANDED_OUT:  # picked before and perhaps not bound yet by its server: free, but promised
            continue
        with socket.socket() as s:
            try:
                s.bind((LOOPBACK, port))
            except OSError:
                continue
            _HANDED_OUT.add(port)
            return port
    with socket.socket() as s:  # everything tried was taken: the kernel's pick, as before
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def ensure_port_free(port: int, owner: str) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            raise SetupError(
                f"port {port} on {LOOPBACK}, wanted by {owner}, is already in use by another process; "
                f"stop that process (`ss -ltnp 'sport = :{port}'` shows it) or choose other ports"
            ) from None


def wait_until(check, timeout: float, what: str, proc: "Process | None" = None) -> None:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise SetupError(f"{what} exited with code {proc.popen.returncode}; its log is {proc.log_path}:\n{proc.log_tail()}")
        try:
            if check():
                return
        except Exception as exc:  # noqa: BLE001 - any failure just means "not yet"
            last_error = exc
        time.sleep(0.2)
    detail = f" (last error: {last_error})" if last_error else ""
    raise SetupError(f"{what} did not become ready within {timeout:.0f}s{detail}")


class Process:
    """A child process in its own session, logging to a file, stopped with SIGTERM then SIGKILL."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None, cwd: Path | None = None):
        self.name, self.argv, self.log_path = name, argv, log_path
        self.env, self.cwd = env, cwd
        self.popen: subprocess.Popen | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(self.env or {})}, cwd=self.cwd, start_new_session=True,
        )
        log.close()

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def stop(self, timeout: float = 15.0) -> None:
        if not self.alive():
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.alive():
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


class Managed:
    """A component that runs as one child ``process``: stopped gracefully, or killed (-9)."""

    process: "Process | None"
    stop_timeout = 15.0

    def stop(self) -> None:
        if self.process:
            self.process.stop(self.stop_timeout)

    def kill(self) -> None:
        if self.process:
            self.process.kill()


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


# --------------------------------------------------------------------------------------------
# Kafka

KAFKA_LOG4J = """status = error
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.out.ref = OUT
"""


@dataclass
class KafkaBroker(Managed):
    """A single combined broker+controller in KRaft mode, for local use and tests."""

    stop_timeout = 30.0  # a clean broker shutdown flushes its logs

    home: Path
    toolchain: Toolchain
    port: int = 9092
    controller_port: int = 9093
    log_level: str = "WARN"
    heap: str = "512m"
    # A seam for tests of authentication and ACLs (tests/integration/test_kafka_auth.py): server
    # properties that replace or add to those below, and arguments for the storage format (--add-scram).
    extra_config: dict[str, str] = field(default_factory=dict)
    format_args: tuple[str, ...] = ()
    process: Process | None = field(default=None, init=False)

    @property
    def bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    def prepare(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{LOOPBACK}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{LOOPBACK}:{self.port},CONTROLLER://{LOOPBACK}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{LOOPBACK}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            **SINGLE_BROKER,
            # A developer machine: keep a week of events, at most 1 GiB a partition.
            "log.retention.hours": "168",
            "log.retention.bytes": str(1 << 30),
            **self.extra_config,
        }
        (self.home / "server.properties").write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.home / "log4j2.properties").write_text(KAFKA_LOG4J.format(level=self.log_level))
        meta = self.data_dir / "meta.properties"
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            if not meta.exists() or "cluster.id" not in meta.read_text(errors="replace"):
                raise SetupError(
                    f"Kafka's data directory {self.data_dir} is corrupt (meta.properties is missing or unreadable); "
                    "move it away or delete the state directory to start afresh"
                )
            return
        cluster_id = self._java("kafka.tools.StorageTool", "random-uuid").strip().splitlines()[-1]
        self._java("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(self.home / "server.properties"),
                   *self.format_args)

    def _jvm(self) -> list[str]:
        return [
            "java", f"-Xmx{self.heap}", "-Xms128m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.home / 'log4j2.properties'}",
            "-cp", self.toolchain.kafka_classpath,
        ]

    def _java(self, main: str, *args: str) -> str:
        result = subprocess.run([*self._jvm(), main, *args], capture_output=True, text=True)
        if result.returncode != 0:
            raise SetupError(f"{main} {' '.join(args[:1])} failed: {(result.stdout + result.stderr).strip()[-800:]}")
        return result.stdout

    def start(self, timeout: float = 60.0) -> None:
        ensure_port_free(self.port, "Kafka")
        ensure_port_free(self.controller_port, "Kafka's controller")
        self.process = Process("kafka", [*self._jvm(), "kafka.Kafka", str(self.home / "server.properties")], self.home / "kafka.log")
        self.process.start()
        wait_until(self.healthy, timeout, "Kafka", self.process)

    def healthy(self) -> bool:
        return kafka_healthy(self.bootstrap)

    def create_topics(self, names: list[str], partitions: int = 1) -> None:
        """Create rdx's topics up front (idempotent), rather than on first use by a producer."""
        create_topics(self.bootstrap, names, partitions)



def kafka_healthy(bootstrap: str, timeout: float = 3.0) -> bool:
    """True when the broker answers a metadata request (a listening socket alone is not enough)."""
    import asyncio
    import logging

    from aiokafka.admin import AIOKafkaAdminClient

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # "not yet" is the expected answer while starting

    async def probe() -> bool:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
        try:
            await asyncio.wait_for(admin.start(), timeout)
            cluster = await asyncio.wait_for(admin.describe_cluster(), timeout)
            return bool(cluster.get("brokers"))
        finally:
            await admin.close()

    def run() -> bool:
        try:
            return asyncio.run(probe())
        except Exception:  # noqa: BLE001 - unreachable broker of any kind
            return False

    # Its own thread and loop, so the check also works when called from async code.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result()


def create_topics(bootstrap: str, names: list[str], partitions: int = 1) -> None:
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            wanted = [NewTopic(n, partitions, 1) for n in names if n not in existing]
            if wanted:
                try:
                    await admin.create_topics(wanted)
                except TopicAlreadyExistsError:
                    pass
        finally:
            await admin.close()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, create()).result()


# --------------------------------------------------------------------------------------------
# CometBFT


@dataclass
class CometNode(Managed):
    """One CometBFT validator whose application is rdx's ABCI server at ``abci_port``."""

    home: Path
    toolchain: Toolchain
    chain_id: str = "rdx-local"
    rpc_port: int = 26657
    p2p_port: int = 26656
    abci_port: int = 26658
    timeout_commit: str = "500ms"
    # CometBFT's defaults (a block every timeout_commit, transactions or not) unless told otherwise;
    # `rdx up` makes blocks only for transactions, and one at least every ``empty_blocks_interval``.
    create_empty_blocks: bool = True
    empty_blocks_interval: str = "0s"
    skip_timeout_commit: bool = False
    log_level: str = "state:info,*:error"
    # The rdx part of a genesis spec (rdx/genesis.py: association, board, members, params ...);
    # prepare() adds the chain id, the time and this node's own key as the one validator. Empty:
    # a genesis with no app_state, for another ABCI app (the benchmarks' kvstore).
    app_state: dict | None = None
    prometheus_port: int | None = None  # CometBFT's own /metrics (cometbft_*) on loopback, when set
    process: Process | None = field(default=None, init=False)

    @property
    def rpc_url(self) -> str:
        return f"http://{LOOPBACK}:{self.rpc_port}"

    def prepare(self) -> None:
        config = self.home / "config"
        if config.exists():
            for required in ("genesis.json", "priv_validator_key.json", "node_key.json", "config.toml"):
                path = config / required
                try:
                    if required.endswith(".json"):
                        json.loads(path.read_text())
                    else:
                        tomlkit.parse(path.read_text())
                except (OSError, ValueError) as exc:
                    raise SetupError(
                        f"CometBFT's state in {self.home} is corrupt ({required}: {exc}); "
                        "move it away or delete the state directory to start afresh"
                    ) from None
        else:
            result = subprocess.run([str(self.toolchain.cometbft), "init", "--home", str(self.home)], capture_output=True, text=True)
            if result.returncode != 0:
                raise SetupError(f"cometbft init failed: {result.stderr.strip()[-800:]}")
            genesis_path = config / "genesis.json"
            if self.app_state:
                from rdx import genesis as rdx_genesis

                spec = {"chain_id": self.chain_id, **self.app_state}
                spec.setdefault("genesis_time", rdx_genesis.now())
                spec.setdefault("validators", [{"name": self.home.name, "pub_key": rdx_genesis.node_public_key(self.home)}])
                rdx_genesis.dump_spec(spec, config / "genesis.yaml")  # what the genesis was made from
                rdx_genesis.write(config / "genesis.yaml", genesis_path)
            else:
                genesis = json.loads(genesis_path.read_text())
                genesis["chain_id"] = self.chain_id
                genesis["app_state"] = {}
                bound_blocks(genesis)
                genesis_path.write_text(json.dumps(genesis, indent=2))
        self.configure()

    def configure(self, persistent_peers: str = "") -> None:
        path = self.home / "config" / "config.toml"
        doc = tomlkit.parse(path.read_text())
        doc["proxy_app"] = f"tcp://{LOOPBACK}:{self.abci_port}"
        doc["moniker"] = self.home.name
        doc["log_level"] = self.log_level
        doc["rpc"]["laddr"] = f"tcp://{LOOPBACK}:{self.rpc_port}"
        doc["p2p"]["laddr"] = f"tcp://{LOOPBACK}:{self.p2p_port}"
        doc["p2p"]["addr_book_strict"] = False
        doc["p2p"]["allow_duplicate_ip"] = True
        doc["p2p"]["persistent_peers"] = persistent_peers
        doc["consensus"]["timeout_commit"] = self.timeout_commit
        doc["consensus"]["create_empty_blocks"] = self.create_empty_blocks
        doc["consensus"]["create_empty_blocks_interval"] = self.empty_blocks_interval
        doc["consensus"]["skip_timeout_commit"] = self.skip_timeout_commit
        bound_public_surfaces(doc)
        doc["instrumentation"]["prometheus"] = self.prometheus_port is not None
        if self.prometheus_port is not None:
            doc["instrumentation"]["prometheus_listen_addr"] = f"{LOOPBACK}:{self.prometheus_port}"
        path.write_text(tomlkit.dumps(doc))

    def start(self, timeout: float = 60.0) -> None:
        ensure_port_free(self.rpc_port, "CometBFT RPC")
        ensure_port_free(self.p2p_port, "CometBFT P2P")
        argv = [str(self.toolchain.cometbft), "node", "--home", str(self.home)]
        self.process = Process(f"cometbft-{self.home.name}", argv, self.home / "cometbft.log")
        self.process.start()
        wait_until(self.healthy, timeout, "CometBFT", self.process)

    def status(self) -> dict:
        with urllib.request.urlopen(f"{self.rpc_url}/status", timeout=2) as resp:
            return json.loads(resp.read())["result"]

    def height(self) -> int:
        return int(self.status()["sync_info"]["latest_block_height"])

    def healthy(self) -> bool:
        return comet_healthy(self.rpc_url)



# What a validator's public surfaces accept, set here rather than left to CometBFT's defaults
# (which allow 1 MiB txs, a 1 GiB mempool and 21 MiB blocks). Anyone can reach RPC and P2P.
MEMPOOL_BOUNDS = {
    "max_tx_bytes": MAX_TX_BYTES,  # the app's own limit: bigger txs are refused before CheckTx
    "size": 10_000,                # txs; each signer may hold 500 of them (the app's per-signer share)
    "max_txs_bytes": 128 << 20,    # the mempool's memory; each signer may hold 4 MiB of it
    "recheck": True,               # txs made invalid by a block leave the mempool at once
    # A refused tx leaves the dedup cache, so an honest tx refused for a passing reason (its
    # signer's share full, a nonce ahead of a pending one) can be sent again; junk costs a CheckTx.
    "keep-invalid-txs-in-cache": False,
}
RPC_BOUNDS = {
    "unsafe": False,                     # no dial_peers/unsafe_flush_mempool from the network
    "max_body_bytes": 256 << 10,         # a 64 KiB tx is ~88 KiB as base64 in JSON
    "max_header_bytes": 256 << 10,       # ... and ~128 KiB as hex in a GET URI
    "max_open_connections": 512,         # below the process's file limit, with room for P2P
    "max_request_batch_size": 10,
    "timeout_broadcast_tx_commit": "10s",
    "experimental_close_on_slow_client": True,  # a websocket reader that stalls is dropped, not buffered for
}
MAX_BLOCK_BYTES = 4 << 20  # 64 max-size txs or ~8,000 typical ones: bounds one block's execution


def bound_public_surfaces(doc) -> None:
    """Mempool and RPC limits in a config.toml (see MEMPOOL_BOUNDS, RPC_BOUNDS)."""
    for key, value in MEMPOOL_BOUNDS.items():
        doc["mempool"][key] = value
    for key, value in RPC_BOUNDS.items():
        doc["rpc"][key] = value


def bound_blocks(genesis: dict) -> None:
    """The block size in a new chain's genesis consensus params (CometBFT's default is 21 MiB)."""
    genesis.setdefault("consensus_params", {}).setdefault("block", {})["max_bytes"] = str(MAX_BLOCK_BYTES)


def comet_healthy(rpc_url: str) -> bool:
    """True when the node answers and has committed at least one block."""
    try:
        with urllib.request.urlopen(f"{rpc_url}/status", timeout=2) as resp:
            info = json.loads(resp.read())["result"]["sync_info"]
        return int(info["latest_block_height"]) >= 1
    except (urllib.error.URLError, OSError, KeyError, ValueError):
        return False


# --------------------------------------------------------------------------------------------
# rdx services


@dataclass
class ServiceProcess(Managed):
    """``python -m services.<name>``, configured only through RDX_* environment variables."""

    name: str
    http_port: int
    env: dict[str, str]
    log_dir: Path
    module: str = ""  # what ``python -m`` runs: services.<name> unless a wrapper is named (the fault tests' seam)
    process: Process | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    def start(self, timeout: float = 60.0, wait: bool = True) -> None:
        ensure_port_free(self.http_port, f"the {self.name} service")
        env = {**self.env, "RDX_HTTP_PORT": str(self.http_port), "PYTHONUNBUFFERED": "1"}
        module = self.module or f"services.{self.name}"
        self.process = Process(self.name, [sys.executable, "-m", module], self.log_dir / f"{self.name}.log",
                               env=env, cwd=Path(__file__).resolve().parent.parent)
        self.process.start()
        if wait:
            self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 60.0) -> None:
        wait_until(self.healthy, timeout, f"the {self.name} service", self.process)

    def healthy(self) -> bool:
        return http_ok(f"{self.url}/readyz")



def new_id() -> str:
    return uuid.uuid4().hex


def compute_node(member: str, *, kafka: str, rpc_url: str, chain_id: str, state_root: Path, key_file: Path,
                 grpc_port: int, datasets: Path, log_dir: Path, http_port: int | None = None,
                 **settings: str | int) -> ServiceProcess:
    """One member's compute node on ``http_port`` (default: a free port); ``settings`` are further
    RDX_* values (``workers=1`` is ``RDX_WORKERS=1``)."""
    env = {"RDX_KAFKA_BOOTSTRAP": kafka, "RDX_COMETBFT_RPC": rpc_url, "RDX_CHAIN_ID": chain_id,
           "RDX_STATE_ROOT": str(state_root), "RDX_MEMBER_ID": member, "RDX_NODE_KEY_FILE": str(key_file),
           "RDX_GRPC_PORT": str(grpc_port), "RDX_DATASETS": str(datasets),
           **{f"RDX_{name.upper()}": str(value) for name, value in settings.items()}}
    return ServiceProcess("compute", http_port or free_port(), env, log_dir)
