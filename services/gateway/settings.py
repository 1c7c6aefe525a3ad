from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

from services.common.settings import ServiceSettings


class GatewaySettings(ServiceSettings):
    service: str = "gateway"
    http_port: int = 8000
    catalog_url: str = "http://127.0.0.1:8001"
    billing_url: str = "http://127.0.0.1:8003"
    upstream_timeout_s: float = 10.0
    # The gateway's own key (the association's node account) signs audit anchors; none: no anchoring.
    key_file: Path | None = None
    # sha256 of an association-admin API key to accept before any key exists (bootstrap); never the key.
    bootstrap_key_sha256: str | None = None
    rate_per_s: float = 20.0
    rate_burst: int = 40
    daily_quota: int = 100_000
    max_body_bytes: int = 256 * 1024
    clock_skew_s: int = 300
    anchor_every_s: float = 2.0
    anchor_max_records: int = 500
    # Replicated gateways: API keys and the audit trail in one PostgreSQL database (postgresql://…),
    # the replay cache and rate limits in one Redis (redis://…). Unset: SQLite files in the state
    # directory and the process's memory, right for one gateway only.
    gateway_database_url: SecretStr | None = None
    gateway_redis_url: SecretStr | None = None
    # Webhooks (services/gateway/webhooks.py). Private, loopback and link-local endpoints are refused
    # unless allowed here (a test's receiver on 127.0.0.1; never on a deployed gateway).
    webhook_allow_private: bool = False
    webhook_ca_file: Path | None = None  # a CA to trust for member endpoints besides the system's
    webhook_timeout_s: float = 10.0  # one attempt, connection to the last byte read
    webhook_max_response_bytes: int = 64 * 1024
    webhook_backoff_s: float = 1.0  # first retry; doubles per attempt, with jitter, up to the max
    webhook_backoff_max_s: float = 300.0
    webhook_give_up_s: float = 3 * 86400.0  # a delivery still failing this long after its event: failed
    webhooks_per_member: int = 10
