"""RDX_KAFKA_SASL_PASSWORD_FILE and RDX_KAFKA_CA_FILE broken or hostile. Every Kafka client of
every service reads them when it starts, on the event loop: a bad one is refused at once with
IncompleteKafkaSecurity naming the setting and what is wrong (a consumer retries its start, so a
fixed file is picked up), never a hang, an unbounded read or a byte of the file in the message."""

from __future__ import annotations

import pytest
import trustme

from services.common.settings import IncompleteKafkaSecurity, KafkaSecurity
from tests.filekit import BROKEN, CANARY, NOT_REGULAR, plant, within


def _refused(security: KafkaSecurity, setting: str, reason: str) -> None:
    with pytest.raises(IncompleteKafkaSecurity) as err:
        within(10, security.client_options)
    message = str(err.value)
    assert message.startswith(f"{setting}: ") and reason in message and CANARY not in message, message
    assert err.value.__suppress_context__


@pytest.mark.parametrize("kind", NOT_REGULAR + ("huge", "not utf-8", "missing"))
def test_a_password_file_that_cannot_be_read_is_refused_at_once(tmp_path, kind):
    path = tmp_path / "password"
    if kind != "missing":
        plant(path, kind)
    reason = {"huge": "larger than 64 KiB", "not utf-8": "not UTF-8", "missing": "does not exist"}.get(
        kind, "not a regular file")
    security = KafkaSecurity(security_protocol="SASL_PLAINTEXT", sasl_username="u", sasl_password_file=path)
    _refused(security, "RDX_KAFKA_SASL_PASSWORD_FILE", reason)


@pytest.mark.parametrize("kind", NOT_REGULAR + BROKEN + ("a damaged PEM", "missing"))
def test_a_ca_file_that_is_no_ca_is_refused_at_once(tmp_path, kind):
    path = tmp_path / "ca.pem"
    if kind == "a damaged PEM":
        path.write_text("-----BEGIN CERTIFICATE-----\n" + CANARY + "é\n-----END CERTIFICATE-----\n")
    elif kind != "missing":
        plant(path, kind)
    reason = {"huge": "larger than 1 MiB", "not utf-8": "not UTF-8", "missing": "does not exist"}.get(
        kind, "not a regular file" if kind in NOT_REGULAR else "is not PEM CA certificates")
    _refused(KafkaSecurity(security_protocol="SSL", ca_file=path), "RDX_KAFKA_CA_FILE", reason)


def test_a_good_ca_file_is_trusted(tmp_path):
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    context = KafkaSecurity(security_protocol="SSL", ca_file=tmp_path / "ca.pem").client_options()["ssl_context"]
    assert context.cert_store_stats()["x509_ca"] == 1  # that CA alone: not the system's public CAs beside it
