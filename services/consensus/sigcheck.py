"""Ed25519 verification on a second core: a helper process the ABCI app hands CheckTx's signatures.

Verifying a tx's signature is most of a first CheckTx, and the app's one Python thread is what
bounds the chain's throughput when the machine has a core to spare. A thread cannot take it:
PyNaCl releases the GIL only inside each verification, and the app thread, which rarely blocks,
would hold it between them (measured: ~1 verification per 150 us beside a busy thread). So a child
process verifies, in the order asked, the signatures of the CheckTx requests the ABCI server has
received but not served yet, while the app serves those before them. Its verdicts are
``services.consensus.signatures``' by the rule each signature is asked under (a batch at a time
by ZIP-215's), so a tx is admitted or refused exactly as it would be in process, and consensus
does not depend on which process verified it.

The wire, over the child's stdin and stdout: a request is ``seq`` (u64), ``count`` (u32), then per
signature its 32-byte key, 64-byte signature, message length (u32), rule (u8: 0 libsodium, 1
zip215) and message; the answer is the same ``seq`` and ``count``, then one byte per signature, 1
if it verifies. An answer that does not match the oldest request outstanding, a child that exits,
or one silent for ``TIMEOUT_S`` ends the helper: the app verifies in process from then on and says
so in its log and in ``rdx_consensus_signature_helper_up``.
"""

from __future__ import annotations

import fcntl
import logging
import os
import select
import struct
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any, BinaryIO

from prometheus_client import Gauge

from services.common.metrics import plain_counter
from services.consensus import signatures

log = logging.getLogger("rdx.consensus.sigcheck")

HELPER_UP = Gauge("rdx_consensus_signature_helper_up",
                  "1 while CheckTx's signatures are verified by the helper process, 0 once verified in process")
VERIFIED_BY = plain_counter("rdx_consensus_signatures_verified",
                            "Tx signatures verified, by the signature helper process or the app itself",
                            "by", ["helper", "app"])
"""Signatures verified, by the helper or by the app's own thread (one a tx)."""

_HEAD = struct.Struct("<QI")  # seq, count
_ITEM = struct.Struct("<32s64sIB")  # public key, signature, message length, rule (an index in signatures.RULES)
TIMEOUT_S = 5.0  # a signature takes ~0.1 ms: a helper this late is stuck
CHUNK = 64  # signatures per request: one ZIP-215 batch (~20 us a signature at 64, ~30 at 16)
MAX_IN_FLIGHT = 2048  # signatures asked and not yet settled
_PIPE_BYTES = 1 << 20  # asked of the kernel; requests in flight are kept below what it grants


class SignatureHelper:
    """The app's side. ``submit`` queues a signature (with a context kept here), ``send`` writes
    what is queued, and ``settle(key)`` waits for that signature's answer, calling ``on_answer``
    with the context and the verdict of each answer read on the way. A signature never asked, or
    asked of a helper that stopped before answering, is not reported: the caller verifies it."""

    def __init__(self, on_answer: Callable[[Any, bool], None], command: list[str] | None = None) -> None:
        self._on_answer = on_answer
        self._command = command or [sys.executable, "-m", "services.consensus.sigcheck"]
        self._proc: subprocess.Popen[bytes] | None = None
        self._seq = 0
        self._queued: list[tuple[bytes, bytes, Any]] = []  # (key, item bytes, context)
        self._asked: deque[tuple[int, list[tuple[bytes, Any]], int]] = deque()  # (seq, [(key, context)], bytes)
        self._in_flight: set[bytes] = set()
        self._bytes_in_flight = 0
        self._max_bytes = 0
        self._answers = bytearray()

    @property
    def up(self) -> bool:
        return self._proc is not None

    def start(self) -> None:
        self._proc = subprocess.Popen(self._command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=None, close_fds=True)
        pipe = self._proc.stdin.fileno()  # type: ignore[union-attr]
        try:
            fcntl.fcntl(pipe, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
        except OSError:
            pass  # the kernel's default (64 KiB) then
        # Never more in flight than the pipe holds: a write then never blocks the event loop.
        self._max_bytes = fcntl.fcntl(pipe, fcntl.F_GETPIPE_SZ) // 2
        os.set_blocking(self._proc.stdout.fileno(), False)  # type: ignore[union-attr]
        HELPER_UP.set(1)
        log.info("signature helper started (pid %d)", self._proc.pid)

    def close(self) -> None:
        if self._proc is not None:
            proc, self._proc = self._proc, None
            proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()
        self._forget()

    def submit(self, key: bytes, public_key: bytes, message: bytes, signature: bytes, context: Any,
               rule: str = signatures.LIBSODIUM) -> bool:
        """Queue one signature, to be verified by ``rule``; False (and nothing queued) if the
        helper is down, ``key`` is already asked, or as many are in flight as it may hold."""
        if (self._proc is None or key in self._in_flight or len(public_key) != 32 or len(signature) != 64
                or len(self._in_flight) >= MAX_IN_FLIGHT):
            return False
        item = _ITEM.pack(public_key, signature, len(message), _RULE_CODES[rule]) + message
        if self._bytes_in_flight + len(item) > self._max_bytes:
            return False
        self._queued.append((key, item, context))
        self._in_flight.add(key)
        self._bytes_in_flight += len(item)
        return True

    def send(self) -> None:
        """Write the queued signatures, ``CHUNK`` a request."""
        queued, self._queued = self._queued, []
        if self._proc is None or not queued:
            return
        out = bytearray()
        for at in range(0, len(queued), CHUNK):
            chunk = queued[at:at + CHUNK]
            self._seq += 1
            out += _HEAD.pack(self._seq, len(chunk))
            for _, item, _ in chunk:
                out += item
            self._asked.append((self._seq, [(key, context) for key, _, context in chunk],
                                sum(len(item) for _, item, _ in chunk)))
        try:
            fd, view = self._proc.stdin.fileno(), memoryview(out)  # type: ignore[union-attr]
            while view:  # fits in the pipe (see start); a signal may still cut a write short
                view = view[os.write(fd, view):]
        except OSError as exc:
            self._fail(f"writing to it failed ({type(exc).__name__})")

    def settle(self, key: bytes) -> None:
        """Wait until ``key``'s answer is in (if it was asked), reporting the valid ones up to it."""
        if key not in self._in_flight:
            return
        if self._queued:  # asked and not written yet
            self.send()
        deadline = time.monotonic() + TIMEOUT_S
        while key in self._in_flight and self._proc is not None:
            if not self._read_answers(deadline):
                return

    def _read_answers(self, deadline: float) -> bool:
        """Read what the helper has answered (waiting for something until ``deadline``) and
        report it; False once the helper is gone."""
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            self._fail(f"no answer for {TIMEOUT_S:.0f} s")
            return False
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            return True
        except OSError as exc:
            self._fail(f"reading from it failed ({type(exc).__name__})")
            return False
        if not data:
            self._fail("it exited")
            return False
        self._answers += data
        while len(self._answers) >= _HEAD.size:
            seq, count = _HEAD.unpack_from(self._answers)
            if not self._asked or (seq, count) != (self._asked[0][0], len(self._asked[0][1])):
                self._fail("its answer does not match the request outstanding")
                return False
            if len(self._answers) < _HEAD.size + count:
                break
            _, asked, size = self._asked.popleft()
            verdicts = self._answers[_HEAD.size:_HEAD.size + count]
            del self._answers[:_HEAD.size + count]
            VERIFIED_BY["helper"] += count
            for (key, context), ok in zip(asked, verdicts):
                self._in_flight.discard(key)
                self._on_answer(context, ok == 1)
            self._bytes_in_flight -= size
        return True

    def _fail(self, why: str) -> None:
        log.error("signature helper stopped: %s; CheckTx verifies signatures in this process from now on", why)
        HELPER_UP.set(0)
        self.close()

    def _forget(self) -> None:
        self._queued.clear()
        self._asked.clear()
        self._in_flight.clear()
        self._bytes_in_flight = 0
        self._answers.clear()


_RULE_CODES = {rule: code for code, rule in enumerate(signatures.RULES)}


# -- the helper process ------------------------------------------------------------------------

def serve(requests: BinaryIO, answers: BinaryIO) -> None:
    """Answer requests until ``requests`` ends: the helper's whole life."""
    while True:
        head = requests.read(_HEAD.size)
        if len(head) < _HEAD.size:
            return
        _, count = _HEAD.unpack(head)
        by_rule: dict[str, tuple[list[int], list[tuple[bytes, bytes, bytes]]]] = {}
        for i in range(count):
            item = requests.read(_ITEM.size)
            if len(item) < _ITEM.size:
                return
            public_key, signature, length, code = _ITEM.unpack(item)
            message = requests.read(length)
            if len(message) < length:
                return
            if code < len(signatures.RULES):  # an unknown rule verifies nothing
                at, items = by_rule.setdefault(signatures.RULES[code], ([], []))
                at.append(i)
                items.append((public_key, message, signature))
        verdicts = bytearray(count)
        for rule, (at, items) in by_rule.items():
            for i, ok in zip(at, signatures.verify_many(rule, items)):
                verdicts[i] = ok
        answers.write(head + verdicts)
        answers.flush()


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)
