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
    dataset_copies: Path | None = Field(None, description="RDX_DATASET_COPIES: where the node keeps its imported "
                                        "copies of the datasets (raw data: keep them with the data, never in the "
                                        "node's state); default .rdx-copies beside RDX_DATASETS")

    @property
    def copies_dir(self) -> Path | None:
        if self.dataset_copies is not None or self.datasets is None:
            return self.dataset_copies
        return (self.datasets if self.datasets.is_dir() else self.datasets.parent) / ".rdx-copies"
    workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, le=256,
                         description="RDX_WORKERS: processes for the cryptography of jobs")
    runner: str = Field("local", description="RDX_RUNNER: where jobs' heavy batches run: local, or kubernetes")
    peer_wait_s: float = Field(30.0, gt=0, description="RDX_PEER_WAIT_S: how long a peer may be unreachable "
                                                       "(not yet connected, or lost mid-job) before the job fails")
    max_attempts: int = Field(3, ge=1, le=20, description="RDX_MAX_ATTEMPTS: protocol runs of one job before it fails")
    psi_batch: int = Field(16_384, ge=16, le=65_536, description="RDX_PSI_BATCH: elements per batch (one message, one worker task)")
    max_peer_set: int = Field(50_000_000, ge=1, description="RDX_MAX_PEER_SET: the largest set a peer may announce; "
                                                            "a larger one aborts the job before anything is allocated")
    # RDX_RUNNER=kubernetes (services/compute/k8s_runner.py)
    k8s_namespace: str | None = Field(None, description="RDX_K8S_NAMESPACE: where worker Jobs go (default: the pod's own)")
    k8s_image: str | None = Field(None, description="RDX_K8S_IMAGE: the worker pods' image: this node's own image")
    k8s_cpu: str = Field("2", description="RDX_K8S_CPU: a worker pod's cpu request and limit")
    k8s_memory: str = Field("4Gi", description="RDX_K8S_MEMORY: a worker pod's memory request and limit")
    k8s_workers: int = Field(2, ge=1, le=256, description="RDX_K8S_WORKERS: processes (connections) in a worker pod")
    k8s_service_account: str | None = Field(None, description="RDX_K8S_SERVICE_ACCOUNT: the worker pods' service "
                                                              "account (its token is never mounted)")
    k8s_min_batches: int = Field(32, ge=0, description="RDX_K8S_MIN_BATCHES: a job's first batches that stay on the "
                                                       "node's own pool; 0 launches a pod for every job run at once")
    k8s_connect_timeout_s: float = Field(300.0, gt=0, description="RDX_K8S_CONNECT_TIMEOUT_S: how long a worker pod "
                                                                  "may take to dial back (scheduling, image pull)")
    k8s_worker_host: str = Field("127.0.0.1", description="RDX_K8S_WORKER_HOST: where the worker listener binds")
    k8s_worker_port: int = Field(50052, ge=0, le=65535, description="RDX_K8S_WORKER_PORT: the worker listener")
    k8s_worker_advertise: str | None = Field(None, description="RDX_K8S_WORKER_ADVERTISE: the host worker pods dial "
                                                               "(default: RDX_K8S_WORKER_HOST)")

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
