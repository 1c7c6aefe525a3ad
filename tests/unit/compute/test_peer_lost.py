"""What a peer's stream raises once the other end has gone must reach the lifecycle as PeerLost
(retried, and ended by the chain's event), never as an internal error that fails the job: a server's
write after the client cancelled raises grpc's ExecuteBatchError, and the consumer's node then sent
jobs.Fail against the provider's policy abort (CI of 2026-12-05)."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
from grpc._cython import cygrpc

from services.compute import handshake as hs
from services.compute import peer
from services.compute.jobtypes.base import PeerLost
from services.compute.peer import SecureChannel

pytestmark = pytest.mark.unit

KEYS = hs.SessionKeys(send=bytes(32), recv=bytes(32), session_id=bytes(32))  # both ways alike: a frame sealed opens


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
    chan = SecureChannel("telco", KEYS, Gone(exc))
    with pytest.raises(PeerLost, match=type(exc).__name__):
        await chan.send("ct", b"x")
    chan = SecureChannel("telco", KEYS, Gone(exc))
    with pytest.raises(PeerLost, match=type(exc).__name__):
        await chan.recv()


class Silent:
    """A peer that says nothing until told to: its one message waits on an event."""

    def __init__(self, frame: bytes):
        self.frame, self.go, self.reads = frame, asyncio.Event(), 0

    async def read(self) -> bytes | None:
        self.reads += 1
        await self.go.wait()
        return self.frame


async def test_a_silent_peer_is_logged_while_the_wait_goes_on_and_its_message_still_arrives(monkeypatch, caplog):
    """The slow-wait log names the peer and counts, never cancels the read (a cancelled gRPC read
    could drop the message it was receiving), and the message that comes later is delivered."""
    monkeypatch.setattr(peer, "SLOW_RECV_S", 0.05)
    sealed = hs.FrameCipher(KEYS).seal(
        hs.encode("sum", {"dp": True}, b"\x01\x02"))
    transport = Silent(sealed)
    chan = SecureChannel("prov-a", KEYS, transport, job="agg-1")
    with caplog.at_level(logging.WARNING, logger="rdx.compute.peer"):
        receiving = asyncio.ensure_future(chan.recv())
        await asyncio.sleep(0.18)
        assert not receiving.done()
        transport.go.set()
        msg = await receiving
    assert (msg.kind, msg.header, bytes(msg.body)) == ("sum", {"dp": True}, b"\x01\x02")
    assert transport.reads == 1  # one read, waited on across the warnings, not restarted
    warned = [r.getMessage() for r in caplog.records if "job agg-1: no message from prov-a" in r.getMessage()]
    assert len(warned) >= 2 and "0 frames, 0 bytes received" in warned[0], warned
    assert chan.frames_received == 1


async def test_a_receive_cancelled_while_waiting_cancels_its_read():
    transport = Silent(b"")
    chan = SecureChannel("prov-a", KEYS, transport)
    receiving = asyncio.ensure_future(chan.recv())
    await asyncio.sleep(0.01)
    receiving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await receiving
    await asyncio.sleep(0)
    pending = [t for t in asyncio.all_tasks() if "Silent.read" in repr(t.get_coro())]
    assert pending == []  # the read was cancelled with it, not left waiting
