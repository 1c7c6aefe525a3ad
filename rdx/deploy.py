"""``make test-deploy``: the exchange of several organisations in containers (docker/exchange.yaml),
built here from Debian only (rdx/images.py), brought up, used through its gateway by the demo's
scenarios (rdx/demo.py), and torn down.

What the compose file reads is written first into one directory (``--dir``, default a fresh one
under ``$RDX_CACHE/deploy``), as each organisation would hold it:

    keys/                   association.json (the officer), association.node.json (the gateway's
                            key: it signs audit anchors), <member>.json and <member>.node.json
    genesis.yaml, genesis.json
                            the spec, and the genesis `rdx genesis` makes of it: five validators
                            (the association and each member), the association, its board
    validators/<org>/       each validator's CometBFT home (config.toml binds RPC to its
                            organisation's network and P2P to `exchange`)
    kafka/                  the broker's configuration, its SCRAM credentials (one user per member),
                            its data; secrets/kafka-<member>.password each member's own
    demo/<member>/          each member's data (datasets.json), mounted read-only into its node only
    state/<service>/        every rdx service's /var/lib/rdx

Everything is owned by uid 10001, the containers' user.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import tomlkit

from rdx import genesis as rdx_genesis
from rdx.components import SINGLE_BROKER
from rdx import images
from rdx import toolchain as tc
from rdx.components import bound_public_surfaces, http_ok
from rdx.demo import MEMBERS, Demo
from rdx.sdk import Gateway
from rdx.supervisor import local_identity
from rdx.testnet import CONSENSUS_TIMEOUTS
from services.common.identity import Identity
from services.common.verified import Anchor

COMPOSE_FILE = images.DOCKER_DIR / "exchange.yaml"
CHAIN_ID = "rdx-deploy"
ORGS = ["association", *MEMBERS]
UID = 10001
PROJECT = "rdxdeploy"


class DeployError(RuntimeError):
    pass


def compose(directory: Path, *args: str, what: str = "docker-compose") -> str:
    env = {**images.env(), "RDX_DEPLOY": str(directory), "RDX_CHAIN_ID": CHAIN_ID}
    result = subprocess.run(["docker-compose", "-p", PROJECT, "-f", str(COMPOSE_FILE), *args],
                            env=env, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-25:])
        raise DeployError(f"{what} failed (exit {result.returncode}):\n{tail}")
    return result.stdout


# -- what each organisation holds ----------------------------------------------------------------------
def prepare(directory: Path, demo: Demo, log=print) -> None:
    """Keys, genesis, validator homes, Kafka's configuration and the members' data, in ``directory``."""
    keys = directory / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    association = local_identity(keys, "association")
    gateway = local_identity(keys, "association.node")
    for member in MEMBERS:
        local_identity(keys, member)
        local_identity(keys, f"{member}.node")
    _validators(directory, association, gateway, log)
    _kafka(directory)
    for service in ["catalog", "billing", "gateway", *[f"consensus-{o}" for o in ORGS],
                    *[f"compute-{m}" for m in MEMBERS]]:
        (directory / "state" / service).mkdir(parents=True, exist_ok=True)
    demo.write_data()
    subprocess.run(["chown", "-R", f"{UID}:{UID}", str(directory)], check=True)


def _validators(directory: Path, association: Identity, gateway: Identity, log) -> None:
    """One CometBFT home per organisation (``cometbft testnet`` makes the keys), the genesis made by
    ``rdx genesis`` from the spec, and each config.toml bound to its organisation's addresses."""
    comet = str(tc.installed().cometbft)
    homes = directory / "validators"
    staging = Path(tempfile.mkdtemp(prefix="testnet.", dir=directory))
    try:
        subprocess.run([comet, "testnet", "--v", str(len(ORGS)), "--o", str(staging),
                        "--populate-persistent-peers=false"], check=True, capture_output=True)
        for i, org in enumerate(ORGS):
            shutil.move(str(staging / f"node{i}"), str(homes / org))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    app = rdx_genesis.local_app_spec(association, gateway=gateway)
    app["association"]["node"]["endpoint"] = "gateway.association:8000"
    spec = rdx_genesis.local_spec(CHAIN_ID, [(org, rdx_genesis.node_public_key(homes / org)) for org in ORGS], app)
    rdx_genesis.dump_spec(spec, directory / "genesis.yaml")
    subprocess.run([sys.executable, "-m", "rdx", "genesis", str(directory / "genesis.yaml"),
                    "--out", str(directory / "genesis.json")], check=True, capture_output=True)
    node_ids = {org: subprocess.run([comet, "show-node-id", "--home", str(homes / org)], check=True,
                                    capture_output=True, text=True).stdout.strip() for org in ORGS}
    for org in ORGS:
        config = homes / org / "config"
        shutil.copy(directory / "genesis.json", config / "genesis.json")
        doc = tomlkit.parse((config / "config.toml").read_text())
        doc["proxy_app"] = "tcp://127.0.0.1:26658"
        doc["moniker"] = org
        doc["rpc"]["laddr"] = f"tcp://validator.{org}:26657"
        doc["p2p"]["laddr"] = f"tcp://p2p.{org}:26656"
        doc["p2p"]["external_address"] = f"p2p.{org}:26656"
        doc["p2p"]["persistent_peers"] = ",".join(f"{node_ids[o]}@p2p.{o}:26656" for o in ORGS if o != org)
        doc["p2p"]["addr_book_strict"] = False  # Docker's addresses are private ones
        doc["p2p"]["pex"] = False  # every peer is listed
        doc["consensus"]["timeout_commit"] = "1s"
        for key, value in CONSENSUS_TIMEOUTS.items():
            doc["consensus"][key] = value
        bound_public_surfaces(doc)
        (config / "config.toml").write_text(tomlkit.dumps(doc))
    log(f"deploy: genesis of {len(ORGS)} validators ({', '.join(ORGS)}) by rdx genesis")


def kafka_cluster_id() -> str:
    """A random KRaft cluster id, as ``kafka-storage random-uuid`` makes one: 16 bytes in URL-safe
    base64, never starting with '-' (kafka-storage's argument parser takes such an id for an option
    and refuses to format: a 1-in-64 failure of a fresh deployment, seen in CI on 2026-12-04)."""
    while (cluster_id := base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")).startswith("-"):
        pass
    return cluster_id


def _kafka(directory: Path) -> None:
    """The broker's two client listeners: plaintext on the association's network, SCRAM-SHA-512 on
    ``exchange`` with one user per member (a random password each, made here)."""
    kafka = directory / "kafka"
    (kafka / "config").mkdir(parents=True, exist_ok=True)
    (kafka / "data").mkdir(exist_ok=True)
    (directory / "secrets").mkdir(exist_ok=True)
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": "1@127.0.0.1:9093",
        "listeners": "INTERNAL://kafka.association:9092,MEMBERS://kafka.exchange:9094,CONTROLLER://127.0.0.1:9093",
        "advertised.listeners": "INTERNAL://kafka.association:9092,MEMBERS://kafka.exchange:9094",
        "listener.security.protocol.map": "INTERNAL:PLAINTEXT,MEMBERS:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "INTERNAL",
        "controller.listener.names": "CONTROLLER",
        "sasl.enabled.mechanisms": "SCRAM-SHA-512",
        "listener.name.members.scram-sha-512.sasl.jaas.config":
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        "log.dirs": "/var/lib/kafka/data",
        **SINGLE_BROKER,
        "auto.create.topics.enable": "false",
    }
    (kafka / "config" / "server.properties").write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    (kafka / "config" / "cluster-id").write_text(kafka_cluster_id())
    lines = []
    for member in MEMBERS:
        password = secrets.token_urlsafe(24)
        (directory / "secrets" / f"kafka-{member}.password").write_text(password)
        lines.append(f"SCRAM-SHA-512=[name={member},password={password}]")
    (kafka / "scram").write_text("\n".join(lines) + "\n")
    for path in [kafka / "scram", *(directory / "secrets").iterdir()]:
        path.chmod(0o600)


# -- the running exchange -------------------------------------------------------------------------------
def address(container: str, network: str) -> str:
    """A container's address on one of its networks (the host reaches every Docker network)."""
    out = images.run([images.DOCKER, "inspect", "--format",
                      f'{{{{with index .NetworkSettings.Networks "{PROJECT}_{network}"}}}}{{{{.IPAddress}}}}{{{{end}}}}',
                      f"{PROJECT}_{container}_1"], f"inspect {container}").strip()
    if not out:
        raise DeployError(f"{container} has no address on {network}")
    return out


def create_topics(directory: Path, log=print) -> None:
    """rdx's topics on the association's listener, from a one-off container on its network."""
    from services.common.events import TOPICS

    code = ("import time\nfrom rdx.components import create_topics, kafka_healthy\n"
            "deadline = time.monotonic() + 120\n"
            "while not kafka_healthy('kafka.association:9092'):\n"
            "    assert time.monotonic() < deadline, 'Kafka did not answer within 120 s'\n"
            "    time.sleep(1)\n"
            f"create_topics('kafka.association:9092', {TOPICS!r})\n")
    try:
        compose(directory, "run", "--rm", "--no-deps", "--entrypoint", "python", "catalog", "-c", code,
                what="creating Kafka's topics")
    except DeployError as exc:  # as the other waits do: say why, from the broker's own log
        raise DeployError(f"{exc}\n{logs(directory, ['kafka'], lines=60)}") from None
    log(f"deploy: {len(TOPICS)} Kafka topics created")


def up(directory: Path, log=print, timeout: float = 300.0) -> str:
    """Kafka and its topics, then everything; returns the gateway's URL once it and every node are ready."""
    compose(directory, "up", "-d", "kafka", what="starting Kafka")
    create_topics(directory, log)
    compose(directory, "up", "-d", what="docker-compose up")
    gateway = f"http://{address('gateway', 'association')}:8000"
    # A compute node is ready once its member is registered (the demo's first step): until then, alive.
    wait_for(directory, {"gateway": f"{gateway}/readyz", **{
        f"compute-{m}": f"http://{address(f'compute-{m}', f'site-{m}')}:8002/healthz" for m in MEMBERS}}, timeout)
    # The gateway proves every chain read against a header, and is ready before the validators have
    # made their first blocks: before that, a node answers a proven read with a refusal (no state
    # tree committed yet), which the gateway passes on as 502. Ready means the chain commits blocks.
    wait_for_blocks(directory, f"http://{address('consensus-association', 'association')}:26657", 3, timeout)
    return gateway


def wait_for_blocks(directory: Path, rpc: str, height: int, timeout: float) -> None:
    """Until the validator at ``rpc`` has committed block ``height``; else DeployError with the validators' logs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{rpc}/status", timeout=2) as resp:
                if int(json.load(resp)["result"]["sync_info"]["latest_block_height"]) >= height:
                    return
        except (OSError, ValueError, KeyError, TypeError):
            pass
        time.sleep(0.5)
    raise DeployError(f"the chain made no block {height} within {timeout:.0f} s\n"
                      f"{logs(directory, [f'cometbft-{org}' for org in ORGS])}")


def wait_for(directory: Path, urls: dict[str, str], timeout: float) -> None:
    """Until every URL answers 2xx; else DeployError with the laggards' logs."""
    deadline = time.monotonic() + timeout
    waiting = dict(urls)
    while waiting and time.monotonic() < deadline:
        waiting = {name: url for name, url in waiting.items() if not http_ok(url)}
        time.sleep(1)
    if waiting:
        raise DeployError(f"not ready within {timeout:.0f} s: {', '.join(waiting)}\n{logs(directory, list(waiting))}")


def logs(directory: Path, services: list[str] | None = None, lines: int = 30) -> str:
    """The containers' last log lines, for an error message: a value of the deployment's own secrets
    (``secrets/``, e.g. a Kafka member's password echoed by a failing ``kafka-storage format``)
    is replaced by ``[secret]`` before the text goes anywhere."""
    result = subprocess.run(["docker-compose", "-p", PROJECT, "-f", str(COMPOSE_FILE), "logs", "--no-color",
                             f"--tail={lines}", *(services or [])],
                            env={**images.env(), "RDX_DEPLOY": str(directory)}, capture_output=True, text=True)
    text = result.stdout + result.stderr
    folder = directory / "secrets"
    for path in (p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else ():
        secret = path.read_text(errors="replace").strip()
        if secret:
            text = text.replace(secret, "[secret]")
    return text[-8000:]  # cut after redacting: a cut never leaves part of a secret behind


def down(directory: Path) -> None:
    """Stop and remove every container and network of the project; never raises."""
    subprocess.run(["docker-compose", "-p", PROJECT, "-f", str(COMPOSE_FILE), "down", "--remove-orphans",
                    "--timeout", "20"], env={**images.env(), "RDX_DEPLOY": str(directory)}, capture_output=True)


# -- backup and restore (docs/operations.md "Back up and restore") ---------------------------------------
def _parts(kind: str, org: str | None) -> tuple[list[str], list[str]]:
    """(services in the order they stop, directories in the order they are copied) of what is backed up.
    A validator: CometBFT stops first (it holds the ABCI connection); the app's state is copied before
    the chain, so a restored app is never ahead of its chain (CometBFT replays blocks to an app that
    is behind; it cannot undo one that is ahead)."""
    if kind == "validator":
        return [f"cometbft-{org}", f"consensus-{org}"], [f"state/consensus-{org}", f"validators/{org}"]
    if kind == "billing":
        return ["billing"], ["state/billing"]
    raise ValueError(f"nothing to back up called {kind!r}")


def backup(directory: Path, kind: str, org: str | None, dest: Path) -> None:
    """Stop it, copy its directories under ``dest``, start it again."""
    services, paths = _parts(kind, org)
    compose(directory, "stop", *services, what=f"stopping {', '.join(services)}")
    try:
        for rel in paths:
            shutil.copytree(directory / rel, dest / rel, symlinks=True)
    finally:
        compose(directory, "start", *reversed(services), what=f"starting {', '.join(services)}")


def restore(directory: Path, kind: str, org: str | None, src: Path, tip: int | None = None) -> None:
    """Its containers and directories gone, then fresh containers on the copies from ``src``.

    A validator's ``priv_validator_state.json`` from the backup is older than the last height the
    validator signed; restored as is, it could sign a second, different vote at a height it signed
    already. So it is set to ``tip``, the network's latest height as its peers report it (the
    validator was down since before then), and the validator block-syncs from there."""
    services, paths = _parts(kind, org)
    if kind == "validator" and tip is None:
        raise ValueError("restoring a validator needs the network's latest height (tip)")
    compose(directory, "rm", "--stop", "--force", *services, what=f"removing {', '.join(services)}")
    for rel in paths:
        shutil.rmtree(directory / rel, ignore_errors=True)
        shutil.copytree(src / rel, directory / rel, symlinks=True)
    if kind == "validator":
        (directory / f"validators/{org}/data/priv_validator_state.json").write_text(
            json.dumps({"height": str(tip), "round": 0, "step": 0}))
    subprocess.run(["chown", "-R", f"{UID}:{UID}", *(str(directory / rel) for rel in paths)], check=True)
    compose(directory, "up", "-d", "--no-deps", *reversed(services), what=f"starting {', '.join(services)}")


# -- the demo through the containerised gateway ---------------------------------------------------------
class ContainerDemo(Demo):
    """The demo's scenarios (rdx/demo.py), unchanged, against the exchange in containers: the
    members' nodes are the compute containers (registered with their peer address on
    ``exchange``), reached by each member on its own site's network."""

    def __init__(self, directory: Path, say=print):
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "endpoints.json").write_text(json.dumps({"gateway": None}))
        super().__init__(directory, say)
        self._clear = None

    def use(self, gateway: str) -> None:
        self.eps["gateway"] = gateway
        self.nodes = {m: f"http://{address(f'compute-{m}', f'site-{m}')}:8002" for m in MEMBERS}

    def write_data(self):
        if self._clear is None:  # written once before the containers start; the step reuses it
            self._clear = super().write_data()
        return self._clear

    def gw(self, account: str) -> Gateway:
        """Each organisation reads the chain through the gateway but proves what it reads from its own
        validator's RPC against the genesis (its trust anchor): here, none takes the gateway's word."""
        org = account.split(".")[0]
        network = "association" if org == "association" else f"site-{org}"
        rpc = f"http://{address(f'consensus-{org}', network)}:26657"
        return Gateway(self.eps["gateway"], identity=self.identity(account), chain_id=CHAIN_ID, timeout=120,
                       chain_rpc=rpc, trust=Anchor.from_genesis(self.state / "genesis.json"))

    def admit(self) -> tuple[bool, str, None]:
        admin, done = self.gw("association"), []
        for member, (name, roles) in MEMBERS.items():
            r = admin.send("members.Register", {
                "id": member, "name": name, "roles": roles, "public_key": self.identity(member).public_key,
                "node": {"public_key": self.identity(f"{member}.node").public_key, "endpoint": f"node.{member}:50051"}})
            done.append(f"{member}@{r['height']}")
        wait_for(self.state, {f"compute-{m}": f"{url}/readyz" for m, url in self.nodes.items()}, 300)
        return True, ", ".join(done) + "; 4 compute nodes in their own sites ready", None


@dataclass
class Deployment:
    directory: Path
    demo: ContainerDemo
    gateway: str
    timings: dict[str, float]

    def exec(self, service: str, *argv: str) -> subprocess.CompletedProcess:
        """Run ``argv`` in a running container of ``service`` (as its user), output captured."""
        return subprocess.run(["docker-compose", "-p", PROJECT, "-f", str(COMPOSE_FILE), "exec", "-T", service, *argv],
                              env={**images.env(), "RDX_DEPLOY": str(self.directory)}, capture_output=True, text=True)

    def logs(self, services: list[str] | None = None, lines: int = 30) -> str:
        return logs(self.directory, services, lines)


@contextmanager
def running(directory: Path | None = None, keep: bool = False, log=print) -> Iterator[Deployment]:
    """The engine (started if it is not running), the images (cached), the exchange up and ready;
    on exit everything down again, the directory removed (if it was made here), the engine stopped
    (if it was started here). ``keep``: leave it all running."""
    started = time.monotonic()
    engine = images.start_engine(log)
    own_dir = directory is None
    directory = (directory or Path(tempfile.mkdtemp(prefix="run.", dir=_deploy_root()))).resolve()
    try:
        images.build_all(log=log)
        built = time.monotonic()
        down(directory)  # a previous run's leftovers, if it was killed
        demo = ContainerDemo(directory, say=log)
        prepare(directory, demo, log)
        gateway = up(directory, log)
        demo.use(gateway)
        timings = {"images_s": built - started, "up_s": time.monotonic() - built}
        log(f"deploy: images {timings['images_s']:.0f} s, exchange up and ready {timings['up_s']:.0f} s; "
            f"gateway {gateway}")
        yield Deployment(directory, demo, gateway, timings)
    finally:
        if not keep:
            down(directory)
            if own_dir:
                shutil.rmtree(directory, ignore_errors=True)
            images.stop_engine(engine)


def run(directory: Path | None = None, keep: bool = False, log=print) -> bool:
    """Up, the demo's scenarios through the gateway, down; True when every outcome is as expected."""
    with running(directory, keep, log) as deployment:
        started = time.monotonic()
        ok = deployment.demo.main()
        log("\n" + deployment.demo.summary())
        log(f"deploy: demo {time.monotonic() - started:.0f} s")
        if not ok:
            log(deployment.logs(lines=15))
        return ok


def _deploy_root() -> Path:
    path = tc.cache_root() / "deploy"
    path.mkdir(parents=True, exist_ok=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rdx.deploy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, help="the deployment's directory (default: a fresh one, removed after)")
    parser.add_argument("--keep", action="store_true", help="leave the exchange running (and the engine)")
    args = parser.parse_args(argv)
    try:
        ok = run(args.dir, keep=args.keep)
    except (DeployError, images.ImageError, tc.SetupError, subprocess.CalledProcessError) as exc:
        print(f"deploy: {exc}", file=sys.stderr)
        return 1
    print("deploy: every scenario's outcome is as expected" if ok else "deploy: a scenario's outcome is WRONG")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
