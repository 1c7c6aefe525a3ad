"""A port offset for a whole exchange (`rdx up --port-offset`) beside the tests' other servers."""

from __future__ import annotations

import random
import socket

from rdx.components import LOOPBACK, ephemeral_low
from rdx.supervisor import Ports


def free_offset() -> int:
    """An offset at which every port of the exchange is free on loopback and below the kernel's
    ephemeral range: a port in that range may be taken as the local port of any outgoing
    connection between this check and the server's own bind (CI saw the consensus service lose
    its ABCI port so, at offset 20274), as ``rdx.components.free_port`` says of single ports."""
    base = Ports().__dict__.values()
    top = ephemeral_low() - max(base)  # the largest offset keeping every port below the range
    for _ in range(200):
        offset = random.randrange(1000, top)
        try:
            for port in (p + offset for p in base):
                with socket.socket() as s:
                    s.bind((LOOPBACK, port))
            return offset
        except OSError:
            continue
    raise RuntimeError("no port offset with every port of the exchange free below the ephemeral range")
