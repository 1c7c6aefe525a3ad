"""``python -m services.portal``: the web portal (talks to the gateway over HTTP only)."""

from __future__ import annotations

from services.common.service import main
from services.portal.app import Portal
from services.portal.settings import PortalSettings

if __name__ == "__main__":
    main(lambda: Portal(PortalSettings()).svc)
