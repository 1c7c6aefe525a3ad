"""Wires the catalog: the consumer that writes the read model, the read side, the HTTP API."""

from __future__ import annotations

import asyncio

from pydantic import Field

from services.catalog.facets import FacetCache
from services.catalog.ingest import Ingest
from services.common.chainevents import ChainEventVerifier
from services.catalog.store import Readers
from services.catalog.views import Catalog, install
from services.common.chain import ChainClient
from services.common.service import Service
from services.common.settings import ServiceSettings


class CatalogSettings(ServiceSettings):
    service: str = "catalog"
    http_port: int = 8001
    public_url: str = Field("", description="base URL of the catalog's IRIs in the DCAT export "
                                            "(default http://<http_host>:<http_port>)")
    cache_refresh_s: float = Field(1.0, gt=0, description="how often the facet cache reads new changes")


def build(settings: CatalogSettings) -> Service:
    svc = Service(settings, title="rdx catalog")
    db_path = settings.state_dir / "catalog.sqlite"
    ingest = Ingest(settings.kafka_bootstrap, db_path)
    readers = Readers(db_path)
    catalog = Catalog(readers=readers, cache=FacetCache(), ingest=ingest, chain=None, chain_id=settings.chain_id,
                      base_url=(settings.public_url or f"http://{settings.http_host}:{settings.http_port}").rstrip("/"))
    install(svc.app, catalog)

    async def open_chain() -> None:
        catalog.chain = ChainClient(settings.cometbft_rpc, settings.chain_id)
        ingest.consumer.verifier = ChainEventVerifier(catalog.chain)  # index only what the chain holds

    async def close_chain() -> None:
        if catalog.chain is not None:
            await catalog.chain.close()

    async def keep_cache_warm(stop: asyncio.Event) -> None:
        """Fold new changes into the facet cache off the request path (the first fill reads everything)."""
        def refresh() -> None:
            with catalog.cache.lock:
                catalog.cache.refresh(readers.get())
        while not stop.is_set():
            await asyncio.to_thread(refresh)
            try:
                await asyncio.wait_for(stop.wait(), settings.cache_refresh_s)
            except asyncio.TimeoutError:
                pass

    svc.on_startup(open_chain)
    svc.on_startup(ingest.start)
    svc.on_shutdown(close_chain)
    svc.on_shutdown(ingest.stop)
    svc.on_shutdown(_close(readers))
    svc.task("ingest", ingest.run)
    svc.task("facet-cache", keep_cache_warm)
    svc.readiness("consumer", lambda: ingest.ready)
    svc.readiness("caught_up", lambda: ingest.caught_up)
    return svc


def _close(readers: Readers):
    async def close() -> None:
        readers.close()
    return close
