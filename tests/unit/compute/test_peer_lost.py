"""What a peer's stream raises once the other end has gone must reach the lifecycle as PeerLost
(retried, and ended by the chain's event), never as an internal error that fails the job: a server's
write after the client cancelled raises grpc's ExecuteBatchError, and the consumer's node then sent
jobs.Fail against the provider's policy abort (CI of 2026-12-05)."""

from __future__ import annotations

import grpc
import pytest
from grpc._cython import cygrpc

from services.compute import handshake as hs
from services.compute.jobtypes.base import PeerLost
from services.compute.peer import SecureChannel

pytestmark = pytest.mark.unit


class Gone:
    def __init__(self, exc: BaseException):
        self.exc = exc

    async def write(self, data: bytes) -> None:
        raise self.exc

    async def read(self) -> bytes | None:
        raise self.exc


@pytest.mark.parametrize("exc", [cygrpc.ExecuteBatchError("Failed \"execute_batch\": (<grpc_call_error>)"),
                                 grpc.aio.UsageError("the call was cancelled"), RuntimeError("closed")],
                         ids=["ExecuteBatchError", "UsageError", "RuntimeError"])
async def test_a_stream_whose_other_end_went_away_is_a_lost_peer(exc):
    keys = hs.SessionKeys(send=bytes(32), recv=bytes(32), session_id=bytes(32))
    chan = SecureChannel("telco", keys, Gone(exc))
    with pytest.raises(PeerLost, match=type(exc).__name__):
        await chan.send("ct", b"x")
    chan = SecureChannel("telco", keys, Gone(exc))
    with pytest.raises(PeerLost, match=type(exc).__name__):
        await chan.recv()
