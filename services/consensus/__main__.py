"""``python -m services.consensus``: the ABCI application CometBFT connects to, and the relay."""

from __future__ import annotations

import gc

from services.common.service import Service, main
from services.common.settings import ServiceSettings
from services.consensus.abci.server import AbciServer
from services.consensus.app import RdxApp
from services.consensus.relay import Relay
from services.consensus.state import Database


class ConsensusSettings(ServiceSettings):
    service: str = "consensus"
    http_port: int = 8004
    abci_host: str = "127.0.0.1"  # ABCI has no authentication: keep it next to the validator
    abci_port: int = 26658
    # CheckTx's signatures verified in a helper process, on another core (services/consensus/sigcheck.py)
    signature_helper: bool = True


# The app keeps tens of thousands of long-lived objects (the verified-tx cache, the state's read
# caches) and allocates a few dozen per tx. At CPython's default thresholds (700, 10, 10) the cyclic
# collector rescanned them often enough to take ~10% of the CPU of CheckTx and block execution
# (12 us of ~130 per tx, in-process over 32,000 txs); at these it takes ~1 us. The code makes few
# reference cycles, so garbage waits a little longer, not forever.
GC_THRESHOLDS = (10_000, 50, 100)


def build(settings: ConsensusSettings, app_class: type[RdxApp] = RdxApp) -> Service:
    """The service; ``app_class`` is the seam the fault tests use to run a byzantine validator."""
    gc.set_threshold(*GC_THRESHOLDS)
    svc = Service(settings, title="rdx consensus")
    chain_db = settings.state_dir / "chain.sqlite"
    relay = Relay(chain_db, settings.state_dir / "relay.sqlite", settings.kafka_bootstrap)
    app = app_class(Database(chain_db), settings.chain_id, on_commit=relay.notify)
    server = AbciServer(app, settings.abci_host, settings.abci_port)
    if settings.signature_helper:  # before the server, so that CometBFT's first requests find it
        async def start_helper() -> None:
            app.start_signature_helper()
        svc.on_startup(start_helper)

    async def serve_abci(stop):
        await stop.wait()
        await server.stop()

    svc.on_startup(server.start)  # listen before CometBFT dials, and before /readyz says yes
    svc.task("abci", serve_abci)
    svc.task("relay", relay.run)
    svc.on_shutdown(lambda: _close(app))
    svc.readiness("abci", lambda: server.port > 0)
    svc.readiness("kafka", lambda: relay.connected)
    return svc


async def _close(app: RdxApp) -> None:
    app.stop_signature_helper()
    app.db.close()


if __name__ == "__main__":
    main(lambda: build(ConsensusSettings()))
