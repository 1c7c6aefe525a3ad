"""rdx/deploy.py: a deployment that fails says why, with the failing container's own log."""

from pathlib import Path

import pytest

from rdx import deploy


def test_topics_not_created_says_why_with_kafkas_log(monkeypatch, tmp_path: Path):
    asked = []

    def failing(directory, *args, what="docker-compose"):
        raise deploy.DeployError(f"{what} failed (exit 1):\nAssertionError: Kafka did not answer within 120 s")

    def logs(directory, services=None, lines=30):
        asked.append((services, lines))
        return "kafka_1  | ERROR Exiting Kafka due to fatal exception during startup."

    monkeypatch.setattr(deploy, "compose", failing)
    monkeypatch.setattr(deploy, "logs", logs)
    with pytest.raises(deploy.DeployError) as exc:
        deploy.create_topics(tmp_path, log=lambda *_: None)
    assert "did not answer within 120 s" in str(exc.value)
    assert "fatal exception during startup" in str(exc.value)
    assert asked == [(["kafka"], 60)]


def test_container_logs_in_an_error_never_carry_the_deployments_secrets(monkeypatch, tmp_path: Path):
    (tmp_path / "secrets").mkdir()
    password = "Zq8-secret-password-of-bank-xyz"
    (tmp_path / "secrets" / "kafka-bank.password").write_text(password + "\n")
    echoed = f"kafka_1  | Invalid credential SCRAM-SHA-512=[name=bank,password={password}]\n" * 300

    class Done:
        stdout, stderr = echoed, ""

    monkeypatch.setattr(deploy.subprocess, "run", lambda *a, **k: Done())
    text = deploy.logs(tmp_path, ["kafka"], lines=60)
    assert "[secret]" in text and len(text) <= 8000
    assert password not in text and password[:12] not in text  # no part of it either, at the cut


def test_a_kafka_cluster_id_never_starts_with_a_dash(monkeypatch):
    """kafka-storage format took such an id for an option (CI, 2026-12-04); 0xf8 encodes to '-'."""
    import uuid

    drawn = iter([uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=b"\x01" * 16)])
    monkeypatch.setattr(deploy.uuid, "uuid4", lambda: next(drawn))
    cluster_id = deploy.kafka_cluster_id()
    assert cluster_id == "AQEBAQEBAQEBAQEBAQEBAQ"
    assert next(drawn, None) is None
