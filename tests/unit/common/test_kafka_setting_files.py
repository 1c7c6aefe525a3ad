"""RDX_KAFKA_SASL_PASSWORD_FILE and RDX_KAFKA_CA_FILE broken or hostile. Every Kafka client of
every service reads them when it starts, on the event loop: a bad one is refused at once with
IncompleteKafkaSecurity naming the setting and what is wrong (a consumer retries its start, so a
fixed file is picked up), never a hang, an unbounded read or a byte of the file in the message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from rdx.components import free_port
from services.common.settings import IncompleteKafkaSecurity, KafkaSecurity
from tests.filekit import BROKEN, CANARY, NOT_REGULAR, plant, within

ROOT = Path(__file__).parents[3]


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


def _env(tmp_path: Path) -> dict[str, str]:
    plant(tmp_path / "password", "fifo")  # reading it would have held the start forever
    return {**os.environ, "RDX_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "RDX_KAFKA_SASL_USERNAME": "u",
            "RDX_KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "password"), "RDX_STATE_ROOT": str(tmp_path),
            "RDX_HTTP_PORT": "0", "RDX_ABCI_PORT": "0"}


@pytest.mark.parametrize("service", ["billing", "catalog", "compute", "gateway"])
def test_every_service_stops_on_unusable_kafka_security_with_one_line(tmp_path, service):
    """The whole start as an operator sees it: one line naming the setting, exit status 1, no
    traceback (it had been one for a settings error, and one from the producer's startup hook for
    a bad file)."""
    done = subprocess.run([sys.executable, "-m", f"services.{service}"], env=_env(tmp_path), capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == \
        f"rdx: RDX_KAFKA_SASL_PASSWORD_FILE: {tmp_path / 'password'} is not a regular file", done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def test_a_validator_keeps_running_and_says_why_its_relay_cannot_publish(tmp_path):
    """The consensus service must not stop on Kafka settings (its validator keeps deciding blocks and
    the outbox keeps the events): its relay retries, and its log says which setting is wrong."""
    proc = subprocess.Popen([sys.executable, "-m", "services.consensus"], env=_env(tmp_path), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        want = f"relay cannot publish (RDX_KAFKA_SASL_PASSWORD_FILE: {tmp_path / 'password'} is not a regular file)"
        seen = within(60, lambda: next(line for line in proc.stdout if want in line or "Traceback" in line))
        assert want in seen and proc.poll() is None
        proc.terminate()  # a clean stop: no task reported as having ended unexpectedly
        rest = proc.communicate(timeout=30)[0]
        assert proc.returncode == 0 and "ended unexpectedly" not in rest and "Traceback" not in rest, rest[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


@pytest.mark.parametrize("service", ["billing", "catalog", "compute", "gateway"])
def test_every_service_stops_with_one_line_when_no_kafka_broker_answers(tmp_path, service):
    """A broker not up yet (or a wrong address): the start ends at once with one line naming the
    setting and the address, exit status 1, for its supervisor to start it again (it was aiokafka's
    traceback)."""
    port = free_port()  # nothing listens there
    env = {**os.environ, "RDX_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}", "RDX_STATE_ROOT": str(tmp_path),
           "RDX_HTTP_PORT": "0", "RDX_COMETBFT_RPC": f"http://127.0.0.1:{free_port()}"}
    done = subprocess.run([sys.executable, "-m", f"services.{service}"], env=env, capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == \
        f"rdx: RDX_KAFKA_BOOTSTRAP: no Kafka broker answered at 127.0.0.1:{port}", done.stderr[-2000:]
    assert "Traceback" not in done.stderr
