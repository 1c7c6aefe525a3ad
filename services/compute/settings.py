"""The compute node's settings: the common RDX_* variables plus the node's own."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field

from services.common.settings import ServiceSettings


class ComputeSettings(ServiceSettings):
    service: str = "compute"
    http_port: int = 8002

    member_id: str | None = Field(None, description="RDX_MEMBER_ID: the member this node belongs to; "
                                                    "without it the node serves health only")
    node_key_file: Path | None = Field(None, description="RDX_NODE_KEY_FILE: the node's Ed25519 key (Identity.save format)")
    grpc_host: str | None = Field(None, description="RDX_GRPC_HOST: where the peer channel listens (default: http_host)")
    grpc_port: int = Field(50051, ge=0, le=65535, description="RDX_GRPC_PORT: the peer channel")
    datasets: Path | None = Field(None, description="RDX_DATASETS: a JSON file or a directory of them")
    workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, le=256,
                         description="RDX_WORKERS: processes for the cryptography of jobs")
    runner: str = Field("local", description="RDX_RUNNER: where jobs run (local; kubernetes later)")
    peer_wait_s: float = Field(30.0, gt=0, description="RDX_PEER_WAIT_S: how long a peer may be unreachable "
                                                       "(not yet connected, or lost mid-job) before the job fails")
    max_attempts: int = Field(3, ge=1, le=20, description="RDX_MAX_ATTEMPTS: protocol runs of one job before it fails")
    psi_batch: int = Field(16_384, ge=16, le=65_536, description="RDX_PSI_BATCH: elements per batch (one message, one worker task)")

    @property
    def state_dir(self) -> Path:
        """``<state root>/compute-<member>``: several nodes can share one state root."""
        path = self.state_root / (f"compute-{self.member_id}" if self.member_id else "compute")
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def node_account(self) -> str:
        return f"{self.member_id}.node"

    @property
    def grpc_bind(self) -> str:
        return f"{self.grpc_host or self.http_host}:{self.grpc_port}"
