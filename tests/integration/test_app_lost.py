"""A validator whose app is lost while the node waits on it exits, rather than running on without it.

Between a real CometBFT node and the real consensus service sits a TCP relay the test controls,
as a network between them would. The relay stops passing bytes (the app hangs, or the link does),
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

pytestmark = pytest.mark.timeout(180)


class Relay:
    """Passes each connection's bytes both ways until ``hang()``; keeps the connections open."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.connections: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        app_reader, app_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.connections.append((writer, app_writer))
        await asyncio.gather(self._pump(reader, app_writer), self._pump(app_reader, writer), return_exceptions=True)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while chunk := await source.read(1 << 16):
            await self.flowing.wait()
            sink.write(chunk)
            await sink.drain()

    def hang(self) -> None:
        self.flowing.clear()


async def test_a_node_whose_app_is_lost_mid_block_exits_instead_of_running_on_without_it(kafka, tmp_path):
    app_port, relay_port = free_port(), free_port()
    chain_id = "rdx-app-lost"
    env = {"RDX_KAFKA_BOOTSTRAP": kafka.bootstrap, "RDX_STATE_ROOT": str(tmp_path / "state"), "RDX_CHAIN_ID": chain_id,
           "RDX_ABCI_PORT": str(app_port)}
    app = ServiceProcess("consensus", free_port(), env, tmp_path / "logs")
    relay = Relay(app_port)
    server = await asyncio.start_server(relay.serve, "127.0.0.1", relay_port)
    node = CometNode(tmp_path / "node", tc.installed(), chain_id=chain_id, rpc_port=free_port(), p2p_port=free_port(),
                     abci_port=relay_port, timeout_commit="100ms",
                     app_state=genesis_app_state(Identity.generate("association")))
    try:
        await asyncio.to_thread(app.start)
        node.prepare()
        await asyncio.to_thread(node.start)
        assert len(relay.connections) == 4  # query, snapshot, mempool, consensus (multiAppConn's order)
        height = node.status()["sync_info"]["latest_block_height"]
        await asyncio.sleep(1.0)
        assert node.status()["sync_info"]["latest_block_height"] > height  # blocks through the relay
        relay.hang()
        await asyncio.sleep(2.0)  # the next block's ABCI calls now wait for answers that do not come
        assert node.process.alive()
        query_to_node, query_to_app = relay.connections[0]
        query_to_node.close()  # the query connection breaks; the consensus one stays open, hung
        query_to_app.close()
        lost = time.monotonic()
        while node.process.alive():
            assert time.monotonic() - lost < 20, f"the node runs on without its app:\n{node.process.log_tail(30)}"
            await asyncio.sleep(0.1)
        log = node.process.log_tail(200)
        assert "connection terminated. Did the application crash?" in log
        # Exited by the patch's deadline, not by its own graceful stop: that stop hung.
        assert node.process.popen.returncode == 1, log
        assert "Still running after losing the application; exiting" in log
        assert time.monotonic() - lost < 10
    finally:
        server.close()
        for a, b in relay.connections:
            a.close()
            b.close()
        node.stop()
        app.stop()
