"""``python -m services.catalog``."""

from __future__ import annotations

from services.common.service import Service
from services.common.settings import ServiceSettings


class CatalogSettings(ServiceSettings):
    service: str = "catalog"
    http_port: int = 8001


def build(settings: CatalogSettings) -> Service:
    svc = Service(settings, title="rdx catalog")
    svc.producer()
    return svc


if __name__ == "__main__":
    build(CatalogSettings()).run()
