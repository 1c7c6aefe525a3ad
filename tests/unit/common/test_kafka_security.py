"""How rdx's Kafka clients read their credentials from RDX_KAFKA_* (services/common/settings.py)."""

from __future__ import annotations

import secrets
import ssl

import pytest

from services.common.kafka import EventProducer
from services.common.settings import IncompleteKafkaSecurity, KafkaSecurity

VARS = ("SECURITY_PROTOCOL", "SASL_MECHANISM", "SASL_USERNAME", "SASL_PASSWORD", "SASL_PASSWORD_FILE", "CA_FILE")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in VARS:
        monkeypatch.delenv(f"RDX_KAFKA_{var}", raising=False)


def test_default_is_plaintext_without_credentials():
    assert KafkaSecurity().client_options() == {"security_protocol": "PLAINTEXT"}
    assert EventProducer("127.0.0.1:9092", "x").security.client_options() == {"security_protocol": "PLAINTEXT"}


def test_sasl_from_the_environment_with_a_password_file(monkeypatch, tmp_path):
    password = secrets.token_hex(16)
    path = tmp_path / "password"
    path.write_text(password + "\n")
    monkeypatch.setenv("RDX_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("RDX_KAFKA_SASL_USERNAME", "rdx-catalog")
    monkeypatch.setenv("RDX_KAFKA_SASL_PASSWORD_FILE", str(path))
    options = KafkaSecurity().client_options()
    assert options == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
                       "sasl_plain_username": "rdx-catalog", "sasl_plain_password": password}
    path.write_text("rotated")  # read again at each client start
    assert KafkaSecurity().client_options()["sasl_plain_password"] == "rotated"


def test_sasl_ssl_verifies_the_broker_against_the_ca():
    options = KafkaSecurity(security_protocol="SASL_SSL", sasl_username="u", sasl_password="p").client_options()
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


@pytest.mark.parametrize("missing", ["SASL_USERNAME", "SASL_PASSWORD"])
def test_sasl_without_user_or_password_fails_at_once_without_quoting_the_password(monkeypatch, missing):
    password = secrets.token_hex(16)
    monkeypatch.setenv("RDX_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    if missing != "SASL_USERNAME":
        monkeypatch.setenv("RDX_KAFKA_SASL_USERNAME", "rdx-relay")
    if missing != "SASL_PASSWORD":
        monkeypatch.setenv("RDX_KAFKA_SASL_PASSWORD", password)
    with pytest.raises(IncompleteKafkaSecurity, match=f"RDX_KAFKA_{missing}") as failure:
        EventProducer("127.0.0.1:9093", "consensus")
    assert password not in str(failure.value) and password not in repr(failure.value)
