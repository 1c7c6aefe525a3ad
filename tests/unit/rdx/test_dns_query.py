"""``rdx.k8s_node.dns_query`` (tests/kubelet asks CoreDNS with it) against a DNS server on loopback
that answers each query as a test tells it: a real answer, and replies a broken or hostile server
could send, which must read as no answer rather than raise or be believed."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import dns.message
import dns.rcode
import dns.rrset
import pytest

from rdx.k8s_node import dns_query

NAME = "catalog.rdx.svc.cluster.local."


@pytest.fixture
def server() -> Iterator[Callable[[Callable[[bytes], bytes | None]], int]]:
    """Starts a one-thread UDP server whose reply to each datagram is ``answer(query)`` (None: silence)."""
    sockets = []

    def start(answer: Callable[[bytes], bytes | None]) -> int:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)

        def serve() -> None:
            while True:
                try:
                    data, peer = sock.recvfrom(4096)
                except OSError:
                    return
                reply = answer(data)
                if reply is not None:
                    sock.sendto(reply, peer)

        threading.Thread(target=serve, daemon=True).start()
        return sock.getsockname()[1]

    yield start
    for sock in sockets:
        sock.close()


def answering(address: str, rdtype: str = "A", rcode: int = dns.rcode.NOERROR, id_shift: int = 0):
    def answer(data: bytes) -> bytes:
        query = dns.message.from_wire(data)
        reply = dns.message.make_response(query)
        reply.set_rcode(rcode)
        reply.id = (reply.id + id_shift) & 0xFFFF
        if rcode == dns.rcode.NOERROR:
            reply.answer.append(dns.rrset.from_text(query.question[0].name, 30, "IN", rdtype, address))
        return reply.to_wire()
    return answer


def test_an_answer_gives_its_address(server) -> None:
    assert dns_query("127.0.0.1", NAME, port=server(answering("10.96.0.17"))) == "10.96.0.17"


@pytest.mark.parametrize("answer", [
    lambda q: b"",  # an empty datagram
    lambda q: b"\xff" * 3,  # shorter than a header
    lambda q: q[:2] + b"\x81\x80\x00\x01\x00\x05\x00\x00\x00\x00" + q[12:],  # claims 5 answers, holds none
    lambda q: q[:2] + b"\x81\x80" + b"\x00\x01\x00\x01\x00\x00\x00\x00" + q[12:] + b"\xc0\xff",  # a pointer past the end
    lambda q: q,  # the query echoed back (no QR flag: not a response)
    answering("10.96.0.17", id_shift=1),  # another query's id
    answering("", rcode=dns.rcode.NXDOMAIN),
    answering("catalog.example.", rdtype="CNAME"),  # no A record
], ids=["empty", "short", "missing-answers", "bad-pointer", "echo", "wrong-id", "nxdomain", "cname-only"])
def test_a_reply_that_is_not_an_answer_reads_as_none(server, answer) -> None:
    assert dns_query("127.0.0.1", NAME, timeout=0.5, port=server(answer)) is None


def test_silence_reads_as_none_after_the_timeout(server) -> None:
    assert dns_query("127.0.0.1", NAME, timeout=0.3, port=server(lambda q: None)) is None
