"""Typed settings from RDX_* environment variables, with defaults that work on one machine."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.files import read_regular, reason


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


class SettingRefused(Exception):  # not ValueError, which pydantic would wrap with the inputs
    """A setting the service cannot use. The message names the setting and what is wrong with it,
    never a secret or a file's bytes; a service's start ends on it with that line (service.main)."""


class IncompleteKafkaSecurity(SettingRefused):
    """A SASL protocol without a user name or a password, or a password or CA file that cannot be
    used (the message names the setting and what is wrong, never the file's bytes)."""


MAX_SECRET_FILE_BYTES = 64 << 10
MAX_CA_FILE_BYTES = 1 << 20


class KafkaSecurity(BaseSettings):
    """How every rdx Kafka client authenticates to the broker, from RDX_KAFKA_* variables.

    The default is plaintext without credentials: the single-machine exchange (``make up``), whose
    broker listens on loopback only. A deployment (infra/) sets SASL_SSL with SCRAM-SHA-512, the
    user's name, its password (better as a file: the Secret Strimzi's User Operator makes, mounted)
    and the cluster CA. A SASL protocol without a user and a password fails at once, not at the
    first record."""

    model_config = SettingsConfigDict(env_prefix="RDX_KAFKA_", extra="ignore")

    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = "SCRAM-SHA-512"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_password_file: Path | None = None  # read at each client start, so a rotated password is picked up
    ca_file: Path | None = None  # the CA that signed the broker's certificate (SSL, SASL_SSL); else the system's

    def model_post_init(self, _context: Any) -> None:
        # Not a pydantic validator: its error would quote every input, the password among them.
        if self.sasl:
            if not self.sasl_username:
                raise IncompleteKafkaSecurity(
                    f"RDX_KAFKA_SECURITY_PROTOCOL={self.security_protocol} needs RDX_KAFKA_SASL_USERNAME")
            if self.sasl_password is None and self.sasl_password_file is None:
                raise IncompleteKafkaSecurity(f"RDX_KAFKA_SECURITY_PROTOCOL={self.security_protocol} needs "
                                              "RDX_KAFKA_SASL_PASSWORD or RDX_KAFKA_SASL_PASSWORD_FILE")

    @property
    def sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    def password(self) -> str:
        if self.sasl_password_file is not None:
            return _text_file(self.sasl_password_file, "RDX_KAFKA_SASL_PASSWORD_FILE", MAX_SECRET_FILE_BYTES).rstrip("\r\n")
        return self.sasl_password.get_secret_value()

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for any aiokafka client (producer, consumer, admin)."""
        options: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.tls:
            # With a CA file, that CA alone is trusted (as create_default_context's cafile= did), not
            # the system's public CAs beside it.
            if self.ca_file is None:
                options["ssl_context"] = ssl.create_default_context()
            else:
                cadata = _text_file(self.ca_file, "RDX_KAFKA_CA_FILE", MAX_CA_FILE_BYTES)
                try:
                    options["ssl_context"] = ssl.create_default_context(cadata=cadata)
                except (ssl.SSLError, ValueError, TypeError) as exc:  # no certificate, a damaged one, not ASCII
                    raise IncompleteKafkaSecurity(f"RDX_KAFKA_CA_FILE: {self.ca_file} is not PEM CA certificates "
                                                  f"({type(exc).__name__})") from None
        if self.sasl:
            options.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.sasl_username,
                           sasl_plain_password=self.password())
        return options


def _text_file(path: Path, setting: str, limit: int) -> str:
    """The text of a secret or CA file, read at each client start: a regular file of at most
    ``limit`` bytes of UTF-8 (a FIFO is refused at once, not waited on with the event loop held)."""
    try:
        return read_regular(path, limit).decode()
    except OSError as exc:
        raise IncompleteKafkaSecurity(f"{setting}: {path} {reason(exc)}") from None
    except UnicodeDecodeError:  # its message names a byte of the file
        raise IncompleteKafkaSecurity(f"{setting}: {path} is not UTF-8 text") from None
