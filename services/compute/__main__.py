"""``python -m services.compute``."""

from __future__ import annotations

from services.common.service import Service
from services.common.settings import ServiceSettings


class ComputeSettings(ServiceSettings):
    service: str = "compute"
    http_port: int = 8002


def build(settings: ComputeSettings) -> Service:
    svc = Service(settings, title="rdx compute")
    svc.producer()
    return svc


if __name__ == "__main__":
    build(ComputeSettings()).run()
