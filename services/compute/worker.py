"""The compute worker: the process a Kubernetes Job pod runs (``python -m services.compute.worker``)
to do a job's CPU-heavy batches for the compute node that launched it.

Protocol (the node's side is services/compute/k8s_runner.py):

1. The node creates, per job run, a one-time 32-byte token and a Job whose pod gets, from a
   Kubernetes Secret the node created with it: ``RDX_WORKER_TOKEN`` (hex) and ``RDX_WORKER_CERT``
   (the PEM certificate of the node's worker listener); and as plain values
   ``RDX_WORKER_ADDRESS`` (``host:port`` of that listener) and ``RDX_WORKER_PROCESSES``.
2. The pod starts that many processes; each dials the node over TLS 1.3, accepting only the
   pinned certificate (so it talks to the node that holds its private key and to no one else;
   the host name is not checked because the pin is stronger), and sends the token as its first
   frame. The node answers ``ok`` or closes.
3. Then, until the node closes the connection: the node sends ``pickle((fn, args))``; the
   process answers ``pickle((True, fn(*args)))`` or ``pickle((False, exception))``.
4. A process whose connection the node closed exits 0; the pod exits 0 when all did, 1 when a
   process could not connect or authenticate (the Job then reports Failed).

Frames are ``u64 big-endian length ‖ bytes``, at most ``MAX_FRAME`` bytes.

Security model: pickles are loaded only inside TLS from an authenticated peer: the worker
trusts the node it pinned (the node decides what runs here), the node trusts a worker only after
its token matched. The batches (a job's raw keys and its secret scalars; an HE scoring consumer's
features and its CKKS secret key) cross the cluster network encrypted; they exist in clear only
in this pod's memory, which has no service-account token, no writable root filesystem and, with
infra/'s NetworkPolicy, no network path but to its node.
Nothing here logs a value: only counts and exception type names.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import signal
import socket
import ssl
import struct
import sys
import time

ENV_ADDRESS = "RDX_WORKER_ADDRESS"
ENV_TOKEN = "RDX_WORKER_TOKEN"
ENV_CERT = "RDX_WORKER_CERT"
ENV_PROCESSES = "RDX_WORKER_PROCESSES"
ENV_JOB = "RDX_WORKER_JOB"  # the Kubernetes Job's name, for logs

MAX_FRAME = 1 << 30
HEADER = struct.Struct("!Q")
OK = b"ok"
CONNECT_WINDOW_S = 60.0  # how long a process keeps trying to reach the node (it may be restarting its listener)

log = logging.getLogger("rdx.compute.worker")


def send_frame(sock: socket.socket, data: bytes) -> None:
    sock.sendall(HEADER.pack(len(data)) + data)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    parts, left = [], n
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise EOFError("connection closed")
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def recv_frame(sock: socket.socket) -> bytes:
    (size,) = HEADER.unpack(_recv_exact(sock, HEADER.size))
    if size > MAX_FRAME:
        raise ValueError(f"frame of {size} bytes is over the limit")
    return _recv_exact(sock, size)


def client_context(cert_pem: str) -> ssl.SSLContext:
    """TLS 1.3 trusting exactly the node's pinned certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False  # the pin authenticates the node; pod IPs are not in any certificate
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=cert_pem)
    return context


def dial(address: str, token: bytes, cert_pem: str, window: float = CONNECT_WINDOW_S) -> ssl.SSLSocket:
    host, port = address.rsplit(":", 1)
    context = client_context(cert_pem)
    deadline = time.monotonic() + window
    delay = 0.2
    while True:
        try:
            raw = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
            break
        except OSError:
            if time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
    sock = context.wrap_socket(raw)
    send_frame(sock, token)
    if recv_frame(sock) != OK:
        raise PermissionError("the node did not accept this worker")
    sock.settimeout(None)  # a batch may take long; the node closes the connection when it is done
    return sock


def serve(sock: ssl.SSLSocket) -> int:
    """Answer batches until the node closes the connection; returns how many were answered."""
    done = 0
    while True:
        try:
            request = recv_frame(sock)
        except (EOFError, ConnectionError, ssl.SSLError):
            return done  # the node is done with this job (or went away): nothing to keep
        fn, args = pickle.loads(request)
        try:
            reply = (True, fn(*args))
        except Exception as exc:  # noqa: BLE001 - handed back to the node, which reports its type only
            reply = (False, exc)
        try:
            data = pickle.dumps(reply, protocol=5)
        except Exception as exc:  # noqa: BLE001 - an unpicklable result or exception
            data = pickle.dumps((False, RuntimeError(f"unpicklable {type(exc).__name__} in the worker")))
        send_frame(sock, data)
        done += 1


def _process(address: str, token: bytes, cert_pem: str) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        sock = dial(address, token, cert_pem)
    except Exception as exc:  # noqa: BLE001 - reported by type; the exit code fails the Job
        log.error("cannot reach the compute node at %s (%s)", address, type(exc).__name__)
        sys.exit(1)
    with sock:
        log.info("answered %d batches", serve(sock))


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        address, token, cert = os.environ[ENV_ADDRESS], bytes.fromhex(os.environ[ENV_TOKEN]), os.environ[ENV_CERT]
    except (KeyError, ValueError) as exc:
        log.error("the worker's environment is incomplete (%s)", type(exc).__name__)
        return 2
    count = max(int(os.environ.get(ENV_PROCESSES, "1")), 1)
    # Spawned, like the node's local pool: each process holds one connection to the node.
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_process, args=(address, token, cert), daemon=True) for _ in range(count)]

    def terminated(signum, frame):  # the Job was deleted: stop the batches too (as PID 1 we must handle it)
        for p in procs:
            p.terminate()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, terminated)
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    failed = sum(1 for p in procs if p.exitcode != 0)
    log.info("worker for %s done: %d of %d processes failed", os.environ.get(ENV_JOB, "?"), failed, count)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
