"""Wires the portal: the service chassis, one HTTP client, the OIDC client, the gateway client,
the session stores and the pages."""

from __future__ import annotations

from pathlib import Path

import httpx
from fastapi.staticfiles import StaticFiles

from services.common.service import Service
from services.portal import views
from services.portal.gateway import Gateway
from services.portal.oidc import OIDC
from services.portal.sessions import Store
from services.portal.settings import PortalSettings

HERE = Path(__file__).parent


class Portal:
    def __init__(self, settings: PortalSettings, http: httpx.AsyncClient | None = None):
        """``http``: the client for the gateway and the IdP (a unit test passes one on its own transport)."""
        self.settings = settings
        self.svc = Service(settings, title="rdx portal")
        self.http = http or httpx.AsyncClient(timeout=15.0)
        self.gateway = Gateway(settings.gateway_url, settings.portal_gateway_keys_file, self.http)
        self.oidc = OIDC(settings.portal_oidc_issuer, settings.portal_oidc_client_id,
                         settings.portal_oidc_client_secret.get_secret_value(),
                         settings.portal_public_url.rstrip("/") + "/callback", self.http)
        self.sessions = Store(settings.portal_max_sessions)
        self.logins = Store(settings.portal_max_sessions)
        self.svc.app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
        views.install(self.svc.app, self)
        self.svc.on_shutdown(self.http.aclose)
