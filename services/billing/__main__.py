"""``python -m services.billing``."""

from __future__ import annotations

from services.common.service import Service
from services.common.settings import ServiceSettings


class BillingSettings(ServiceSettings):
    service: str = "billing"
    http_port: int = 8003


def build(settings: BillingSettings) -> Service:
    svc = Service(settings, title="rdx billing")
    svc.producer()
    return svc


if __name__ == "__main__":
    build(BillingSettings()).run()
