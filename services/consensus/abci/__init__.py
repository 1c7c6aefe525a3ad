"""ABCI 2.0 over CometBFT's socket transport, in plain asyncio.

``Application`` is the base class the state machine overrides; ``AbciServer`` speaks the
wire protocol (varint-delimited protobuf, one ordered stream per connection) to CometBFT.
"""

from services.consensus.abci.application import Application
from services.consensus.abci.server import (
    DEFAULT_MAX_FRAME_BYTES,
    AbciServer,
    ConnectionStats,
    FrameError,
    FrameTooLarge,
    encode_frame,
    frame_bounds,
)

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "AbciServer",
    "Application",
    "ConnectionStats",
    "FrameError",
    "FrameTooLarge",
    "encode_frame",
    "frame_bounds",
]
