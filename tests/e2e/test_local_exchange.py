"""`rdx up`, `rdx status`, `rdx down` and a second `rdx up` on the same state, as a developer runs them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from rdx.supervisor import Ports
from services.common.chain import ChainClient
from services.common.identity import Identity


def _free_offset() -> int:
    for offset in range(20000, 40000, 137):
        ports = Ports().shifted(offset).__dict__.values()
        try:
            for port in ports:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return offset
        except OSError:
            continue
    pytest.skip("no free range of ports")


def rdx(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rdx", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def exchange(toolchain, tmp_path):
    state, offset = tmp_path / "state", _free_offset()
    args = ("--state-dir", str(state))
    yield state, offset, args
    rdx("down", *args)


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

    stopped = rdx("down", *args)
    assert stopped.returncode == 0 and "rdx stopped" in stopped.stdout
    assert rdx("status", *args).returncode != 0

    again = rdx("up", "--detach", "--port-offset", str(offset), *args)
    assert again.returncode == 0, again.stderr + again.stdout

    async def resumed() -> tuple[int, dict]:
        async with ChainClient(eps["cometbft"], "rdx-local") as chain:
            return await chain.height(), await chain.query("/members/telco-b")

    height_after, telco = asyncio.run(resumed())
    assert height_after >= height_before
    assert telco["name"] == "Telco B"

    # A component that dies is named by `rdx status`, which then fails.
    pids = json.loads((state / "pids.json").read_text())
    os.kill(pids["billing"], signal.SIGKILL)
    status = rdx("status", *args)
    assert status.returncode != 0
    assert "DOWN billing" in status.stdout and "not healthy: billing" in status.stderr


def test_port_in_use_is_reported_clearly(exchange):
    _, offset, args = exchange
    with socket.socket() as s:
        s.bind(("127.0.0.1", 26657 + offset))
        s.listen()
        result = rdx("up", "--port-offset", str(offset), *args)
    assert result.returncode == 2
    assert f"port {26657 + offset} on 127.0.0.1, wanted by CometBFT RPC, is already in use" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
