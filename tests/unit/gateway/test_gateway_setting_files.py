"""The files the gateway's settings name, broken or hostile: RDX_KEY_FILE (the key that signs audit
anchors) and RDX_WEBHOOK_CA_FILE (a CA for members' webhook endpoints). The start stops at once with
one line naming the setting and what is wrong: no hang, no unbounded read, no traceback, none of
the file's bytes."""

from __future__ import annotations

import logging
import ssl

import pytest
import trustme

from services.common.identity import Identity
from services.gateway.app import Gateway, _own_identity
from services.gateway.settings import GatewaySettings
from services.gateway.webhooks import tls_context
from tests.filekit import BROKEN, CANARY, NOT_REGULAR, plant, stops


@pytest.mark.parametrize("kind", NOT_REGULAR + BROKEN)
def test_a_key_file_that_is_no_key_stops_the_start(tmp_path, kind):
    settings = GatewaySettings(key_file=plant(tmp_path / "gateway.key", kind), state_root=tmp_path / "state")
    reason = {"huge": "larger than"}.get(kind, "not a regular file" if kind in NOT_REGULAR else "is not a key file")
    stops(lambda: _own_identity(settings), "RDX_KEY_FILE", reason)
    stops(lambda: Gateway(settings), "RDX_KEY_FILE", reason)


def test_a_missing_key_file_is_named_and_a_good_one_loaded(tmp_path):
    settings = GatewaySettings(key_file=tmp_path / "gateway.key", state_root=tmp_path / "state")
    stops(lambda: _own_identity(settings), "RDX_KEY_FILE", "does not exist")
    key = Identity.generate("association.node")
    key.save(tmp_path / "gateway.key")
    assert _own_identity(settings).public_key == key.public_key
    assert _own_identity(GatewaySettings(state_root=tmp_path / "state")) is None


@pytest.mark.parametrize("kind", NOT_REGULAR + BROKEN + ("missing", "a key, not a CA", "a damaged PEM"))
def test_a_webhook_ca_file_that_is_no_ca_stops_the_start(tmp_path, kind):
    path = tmp_path / "ca.pem"
    if kind == "missing":
        pass
    elif kind == "a key, not a CA":
        path.write_text("-----BEGIN PRIVATE KEY-----\n" + CANARY + "\n-----END PRIVATE KEY-----\n")
    elif kind == "a damaged PEM":
        path.write_text("-----BEGIN CERTIFICATE-----\n" + CANARY + "\n-----END CERTIFICATE-----\n")
    else:
        plant(path, kind)
    settings = GatewaySettings(webhook_ca_file=path, state_root=tmp_path / "state")
    reason = {"huge": "larger than", "missing": "does not exist"}.get(
        kind, "not a regular file" if kind in NOT_REGULAR else "is not PEM CA certificates")
    stops(lambda: tls_context(settings), "RDX_WEBHOOK_CA_FILE", reason)
    stops(lambda: Gateway(settings), "RDX_WEBHOOK_CA_FILE", reason)


def test_a_good_webhook_ca_file_is_trusted_besides_the_system_cas(tmp_path):
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    system = tls_context(GatewaySettings(state_root=tmp_path / "state")).cert_store_stats()["x509_ca"]
    context = tls_context(GatewaySettings(webhook_ca_file=tmp_path / "ca.pem", state_root=tmp_path / "state"))
    assert isinstance(context, ssl.SSLContext) and context.cert_store_stats()["x509_ca"] == system + 1


def test_a_world_readable_key_file_is_warned_about(tmp_path, caplog):
    Identity.generate("association.node").save(tmp_path / "gateway.key")
    settings = GatewaySettings(key_file=tmp_path / "gateway.key", state_root=tmp_path / "state")
    caplog.set_level(logging.WARNING)
    _own_identity(settings)
    assert "readable by every user" not in caplog.text
    (tmp_path / "gateway.key").chmod(0o644)
    _own_identity(settings)
    assert "RDX_KEY_FILE" in caplog.text and "readable by every user" in caplog.text and "644" in caplog.text
