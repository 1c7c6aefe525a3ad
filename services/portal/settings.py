"""The portal's settings, from RDX_PORTAL_* (and the chassis' RDX_*) environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class PortalSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="RDX_", extra="ignore")

    service: str = "portal"
    http_port: int = Field(8005, ge=0, le=65535)
    gateway_url: str = "http://127.0.0.1:8000"
    # Where browsers reach this portal: the OIDC redirect URI is built from it.
    portal_public_url: str = "http://127.0.0.1:8005"
    # The association's OpenID Connect provider and this portal's client there.
    portal_oidc_issuer: str = "http://127.0.0.1:4444/"
    portal_oidc_client_id: str = "rdx-portal"
    portal_oidc_client_secret: SecretStr = SecretStr("")
    # The gateway API keys the portal calls with, one per "<member>/<role>" (JSON object, mode 0600):
    # API keys, revocable and scoped at the gateway, never a member's chain signing key.
    portal_gateway_keys_file: Path | None = None
    portal_session_ttl_s: int = Field(900, ge=30, le=12 * 3600)
    # Secure cookies need HTTPS; a deployment behind TLS sets this (the local exchange is plain HTTP on loopback).
    portal_cookie_secure: bool = False
    portal_max_sessions: int = Field(10_000, ge=10)
