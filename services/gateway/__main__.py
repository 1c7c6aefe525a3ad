"""``python -m services.gateway``: the single door for member systems and association portals."""

from __future__ import annotations

from services.common.service import main
from services.gateway.app import Gateway
from services.gateway.settings import GatewaySettings

if __name__ == "__main__":
    main(lambda: Gateway(GatewaySettings()).svc)
