"""Typed settings from RDX_* environment variables, with defaults that work on one machine."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """Settings every service has. A service subclasses it and sets its own ``service`` and port."""

    model_config = SettingsConfigDict(env_prefix="RDX_", extra="ignore")

    service: str = "rdx"
    http_host: str = "127.0.0.1"  # loopback unless an operator says otherwise
    http_port: int = Field(8000, ge=0, le=65535)
    kafka_bootstrap: str = "127.0.0.1:9092"
    cometbft_rpc: str = "http://127.0.0.1:26657"
    chain_id: str = "rdx-local"
    state_root: Path = Path(".rdx")
    log_level: str = "INFO"
    shutdown_grace_s: float = 10.0

    @property
    def state_dir(self) -> Path:
        """This service's own data directory under the shared state root."""
        path = self.state_root / self.service
        path.mkdir(parents=True, exist_ok=True)
        return path
