"""A validator whose app is lost while the node waits on it exits, rather than running on without it.

Between a real CometBFT node and the real consensus service sits a TCP proxy the test controls,
as a network between them would. The proxy stops passing bytes (the app hangs, or the link does),
so a block's ABCI call waits for an answer that never comes; then one of the node's four
connections breaks. CometBFT sends itself SIGTERM, and its graceful stop waits for the consensus
routine, which waits on the hung connection: upstream, the node runs on for good, serving RPC and
P2P with no app (cometbft/cometbft#4054). rdx/patches/cometbft-exit-when-app-lost.patch exits it
(code 1) 5 s after that SIGTERM, so whatever supervises it restarts it.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from rdx import toolchain as tc
from rdx.components import CometNode, ServiceProcess, free_port
from rdx.supervisor import genesis_app_state
from services.common.identity import Identity
from test_compute import TcpProxy

pytestmark = pytest.mark.timeout(180)


class Validator:
    """The real consensus service and a real CometBFT node, their ABCI connections through a TcpProxy."""

    def __init__(self, kafka, tmp_path):
        app_port = free_port()
        chain_id = "rdx-app-lost"
        self.app = ServiceProcess("consensus", free_port(), {
            "RDX_KAFKA_BOOTSTRAP": kafka.bootstrap, "RDX_STATE_ROOT": str(tmp_path / "state"), "RDX_CHAIN_ID": chain_id,
            "RDX_ABCI_PORT": str(app_port)}, tmp_path / "logs")
        self.proxy = TcpProxy(app_port).start()
        self.node = CometNode(tmp_path / "node", tc.installed(), chain_id=chain_id, rpc_port=free_port(),
                              p2p_port=free_port(), abci_port=self.proxy.port, timeout_commit="100ms",
                              app_state=genesis_app_state(Identity.generate("association")))

    async def __aenter__(self) -> "Validator":
        try:
            await asyncio.to_thread(self.app.start)
            self.node.prepare()
            await asyncio.to_thread(self.node.start)
            assert len(self.proxy.connections) == 4  # query, snapshot, mempool, consensus (multiAppConn's order)
            height = self.height()
            await asyncio.sleep(1.0)
            assert self.height() > height  # blocks through the proxy
        except BaseException:  # __aexit__ does not run when __aenter__ fails: stop what started here
            await self.__aexit__()
            raise
        return self

    def height(self) -> int:
        return int(self.node.status()["sync_info"]["latest_block_height"])  # a decimal string in CometBFT's JSON

    async def __aexit__(self, *exc) -> None:
        self.node.stop()
        self.app.stop()
        self.proxy.stop()

    async def exit_code(self, within: float) -> int:
        """The node's exit code, once it has exited by itself (within ``within`` seconds)."""
        lost = time.monotonic()
        while self.node.process.alive():
            assert time.monotonic() - lost < within, f"the node runs on without its app:\n{self.node.process.log_tail(30)}"
            await asyncio.sleep(0.1)
        assert "connection terminated. Did the application crash?" in self.node.process.log_tail(200)
        return self.node.process.popen.returncode


async def test_a_node_whose_app_is_lost_mid_block_exits_instead_of_running_on_without_it(kafka, tmp_path):
    async with Validator(kafka, tmp_path) as v:
        v.proxy.hang()
        await asyncio.sleep(2.0)  # the next block's ABCI calls now wait for answers that do not come
        assert v.node.process.alive()
        v.proxy.close(0)  # the query connection breaks; the consensus one stays open, hung
        lost = time.monotonic()
        # Exited by the patch's deadline (code 1), not by its own graceful stop: that stop hung.
        assert await v.exit_code(within=20) == 1
        assert time.monotonic() - lost < 10
        assert "Still running after losing the application; exiting" in v.node.process.log_tail(200)


async def test_a_node_whose_app_was_killed_exits_as_failed_so_that_on_failure_restarts_it(kafka, tmp_path):
    """kill -9 of the app: every connection breaks at once and the graceful stop completes; the node
    still exits 1 (upstream: 0, as if an operator had stopped it, which docker/exchange.yaml's
    ``restart: on-failure`` would not restart)."""
    async with Validator(kafka, tmp_path) as v:
        v.app.kill()
        assert await v.exit_code(within=15) == 1
