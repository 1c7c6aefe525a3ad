"""`rdx up`, `rdx status`, `rdx demo`, `rdx down` and a second `rdx up` on the same state, as a developer
runs them: the demo's four members' compute nodes keep running under the supervisor (a job
submitted after the demo completes), and `rdx down` leaves no process of the exchange."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rdx.sdk import Gateway
from portkit import free_offset
from services.common.chain import ChainClient
from services.common.identity import Identity


def exchange_processes(state: Path) -> list[int]:
    """Every process on this machine whose command line or environment names the state directory."""
    marker, found = str(state.resolve()).encode(), []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            seen = (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()
        except OSError:
            continue
        if marker in seen:
            found.append(int(proc.name))
    return found


def rdx(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rdx", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def exchange(toolchain, tmp_path):
    state, offset = tmp_path / "state", free_offset()
    args = ("--state-dir", str(state))
    yield state, offset, args
    rdx("down", *args)


@pytest.mark.timeout(900)  # the whole demo, a job after it, and two starts and stops of the exchange
def test_up_status_down_and_resume(exchange):
    state, offset, args = exchange
    started = rdx("up", "--detach", "--port-offset", str(offset), *args)
    assert started.returncode == 0, started.stderr + started.stdout
    assert "gateway" in started.stdout and str(8000 + offset) in started.stdout

    status = rdx("status", *args)
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.count("ok  ") == 7

    eps = json.loads((state / "endpoints.json").read_text())
    association = Identity.load(state / "keys" / "association.json")
    member = Identity.generate("telco-b")

    async def register_and_height() -> int:
        async with ChainClient(eps["cometbft"], "rdx-local") as chain:
            await chain.submit(association, "members.Register", {
                "id": "telco-b", "name": "Telco B", "roles": ["provider"], "public_key": member.public_key})
            return await chain.height()

    height_before = asyncio.run(register_and_height())

    demo = rdx("demo", *args)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "every step's outcome is as expected" in demo.stdout

    # The members' nodes outlive the demo: `rdx status` names them, and a job submitted now completes.
    status = rdx("status", *args)
    assert status.returncode == 0, status.stdout + status.stderr
    for member in ("bank", "telco", "logistics", "manufacturer"):
        assert f"ok   node:{member}" in status.stdout
    eps = json.loads((state / "endpoints.json").read_text())
    bank = Gateway(eps["gateway"], identity=Identity.load(state / "keys" / "bank.json"), chain_id="rdx-local",
                   timeout=120, verify=False)
    [grant] = [g for g in bank.my_access() if g["id"].startswith("g-fraud.") and g["status"] == "granted"]
    job = f"after-demo.{int(time.time())}"
    bank.submit_job(job, "psi_cardinality", [{"asset": grant["asset"], "grant": grant["id"]}], max_price=1_000,
                    params={"dataset": "customers", "key": "phone"}, timeout_s=120)
    record = bank.wait_for_job(job, timeout=120)
    assert record["status"] == "completed", record

    # A broken member-nodes.json changes nothing: the supervisor says why and keeps the nodes.
    nodes_file = state / "member-nodes.json"
    good = nodes_file.read_text()
    nodes_file.write_text('{"nodes": [{"member": "bank", "key_file": "/etc/passwd"}]}')
    time.sleep(2)
    assert "member nodes unchanged" in (state / "logs" / "supervisor.log").read_text()
    assert rdx("status", *args).stdout.count("ok  ") == 11
    nodes_file.write_text(good)

    # `rdx down` stops every process the exchange started, the members' nodes included.
    pids = json.loads((state / "pids.json").read_text())
    assert {f"node:{m}" for m in ("bank", "telco", "logistics", "manufacturer")} <= set(pids)
    assert set(pids.values()) <= set(exchange_processes(state))
    stopped = rdx("down", *args)
    assert stopped.returncode == 0 and "rdx stopped" in stopped.stdout
    assert rdx("status", *args).returncode != 0
    assert exchange_processes(state) == []

    again = rdx("up", "--detach", "--port-offset", str(offset), *args)
    assert again.returncode == 0, again.stderr + again.stdout

    async def resumed() -> tuple[int, dict]:
        async with ChainClient(eps["cometbft"], "rdx-local") as chain:
            return await chain.height(), await chain.query("/members/telco-b")

    height_after, telco = asyncio.run(resumed())
    assert height_after >= height_before
    assert telco["name"] == "Telco B"
    status = rdx("status", *args)  # the resumed exchange runs its members' nodes again
    assert status.returncode == 0 and status.stdout.count("ok  ") == 11, status.stdout + status.stderr

    # A component that dies is named by `rdx status`, which then fails.
    pids = json.loads((state / "pids.json").read_text())
    os.kill(pids["billing"], signal.SIGKILL)
    status = rdx("status", *args)
    assert status.returncode != 0
    assert "DOWN billing" in status.stdout and "not healthy: billing" in status.stderr


def test_down_stops_what_a_killed_supervisor_left(exchange):
    """The supervisor killed (-9) cannot stop its children: `rdx down` finds them by pids.json."""
    state, offset, args = exchange
    started = rdx("up", "--detach", "--port-offset", str(offset), *args)
    assert started.returncode == 0, started.stderr + started.stdout
    os.kill(int((state / "supervisor.pid").read_text().split()[0]), signal.SIGKILL)
    assert exchange_processes(state)
    stopped = rdx("down", *args)
    assert stopped.returncode == 0 and "stopped 7 of its processes left behind" in stopped.stdout, stopped.stdout
    deadline = time.monotonic() + 10
    while exchange_processes(state) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert exchange_processes(state) == []


def test_port_in_use_is_reported_clearly(exchange):
    _, offset, args = exchange
    with socket.socket() as s:
        s.bind(("127.0.0.1", 26657 + offset))
        s.listen()
        result = rdx("up", "--port-offset", str(offset), *args)
    assert result.returncode == 2
    assert f"port {26657 + offset} on 127.0.0.1, wanted by CometBFT RPC, is already in use" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
