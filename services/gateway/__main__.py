"""``python -m services.gateway``."""

from __future__ import annotations

from services.common.service import Service
from services.common.settings import ServiceSettings


class GatewaySettings(ServiceSettings):
    service: str = "gateway"
    http_port: int = 8000


def build(settings: GatewaySettings) -> Service:
    svc = Service(settings, title="rdx gateway")
    svc.producer()
    return svc


if __name__ == "__main__":
    build(GatewaySettings()).run()
