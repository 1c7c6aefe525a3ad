"""``python -m services.billing``: the ledger read model, statements, invoices, usage, price
history, quotes, and the reconciliation that proves the read model equals the chain.

``python -m services.billing reconcile`` runs the reconciliation once and exits non-zero on any
difference."""

from __future__ import annotations

import asyncio
import csv
import io
import sys
import time
from datetime import datetime, timezone

from fastapi import Query
from fastapi.responses import JSONResponse, Response
from prometheus_client import Gauge

from services.billing import ledger
from services.billing.events import LedgerConsumer
from services.common.chain import ChainClient
from services.common.chainevents import ChainEventVerifier
from services.common.events import CHAIN_EVENTS
from services.common.service import Service, main
from services.common.settings import ServiceSettings
from services.common import verified
from services.common.verified import VerificationError

Member = Query(..., min_length=2, max_length=40, pattern=r"^[a-z0-9][a-z0-9\-]*$")


class BillingSettings(ServiceSettings):
    service: str = "billing"
    http_port: int = 8003


def period(since: float | None, until: float | None) -> tuple[float, float]:
    """Default: the current calendar month (UTC)."""
    now = datetime.now(timezone.utc)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()
    return (since if since is not None else start, until if until is not None else time.time() + 1)


def as_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out.getvalue()


DRIFT = Gauge("rdx_billing_reconcile_differences", "differences between the billing read model and the chain "
               "(balances, escrow, supply) at the last reconciliation; 0 when they are equal")


async def chain_books(chain: ChainClient, reader, members: set[str], jobs: set[str]) -> tuple[dict, dict, int, list[str]]:
    """The chain's balances, escrow and credit supply. Which accounts and escrows exist comes
    from the node's listing (``/bank/balance/``, which no proof covers); with a ``reader``
    (verified.VerifiedChain: the service holds a trust anchor) every amount is then proven, those
    the read model knows too, and the listing is proven complete: the proven supply must equal
    the proven balances and escrow, since the chain conserves credits (a node that hides an
    account cannot make them add up)."""
    on_chain = {k.rsplit("/", 1)[1]: v for k, v in ((await chain.query("/bank/balance/")) or {}).items()}
    held = {k.rsplit("/", 1)[1]: v["amount"] for k, v in ((await chain.query("/bank/escrow/")) or {}).items()}
    if reader is None:
        return on_chain, held, await chain.query("/bank/supply") or 0, []
    on_chain = {m: await reader.query(f"bank/balance/{m}") or 0 for m in sorted(set(on_chain) | members)}
    held = {j: ((await reader.query(f"bank/escrow/{j}")) or {}).get("amount", 0) for j in sorted(set(held) | jobs)}
    supply = await reader.query("bank/supply") or 0
    proven = sum(on_chain.values()) + sum(held.values())
    gap = [] if proven == supply else [f"the chain's proven credit supply is {supply}, its proven balances and escrow "
                                       f"sum to {proven}: the node's account listing is incomplete"]
    return on_chain, held, supply, gap


async def reconcile(conn, chain: ChainClient, attempts: int = 20, reader=None) -> list[str]:
    """Differences between the read model and the chain's balances, escrow and credit supply ([]
    when equal). The read model trails the chain by the relay's latency, so a difference must
    persist. Amounts are compared as Python ints: exact at any size. ``reader``: prove the
    chain's side (``chain_books``)."""
    diffs: list[str] = []
    for _ in range(attempts):
        ours, our_escrow, our_supply = ledger.balances(conn), ledger.escrow(conn), ledger.supply(conn)
        try:
            on_chain, held, chain_supply, diffs = await chain_books(chain, reader, set(ours), set(our_escrow))
        except VerificationError as exc:  # the node's answers are not the chain's: that is the finding
            diffs = [f"the chain's answers do not verify: {exc}"]
            await asyncio.sleep(0.5)
            continue
        diffs += [f"balance of {m}: chain {on_chain.get(m, 0)}, billing {ours.get(m, 0)}"
                  for m in sorted(set(on_chain) | set(ours)) if on_chain.get(m, 0) != ours.get(m, 0)]
        diffs += [f"escrow of job {j}: chain {held.get(j, 0)}, billing {our_escrow.get(j, 0)}"
                  for j in sorted(set(held) | set(our_escrow)) if held.get(j, 0) != our_escrow.get(j, 0)]
        if chain_supply != our_supply:
            diffs.append(f"credit supply: chain {chain_supply}, billing {our_supply}")
        if not diffs:
            break
        await asyncio.sleep(0.5)
    DRIFT.set(len(diffs))
    return diffs


def build(settings: BillingSettings) -> Service:
    svc = Service(settings, title="rdx billing")
    chain = ChainClient(settings.cometbft_rpc, settings.chain_id)
    reader = verified.from_env(chain)  # with a trust anchor: events and reconciliation proven
    consumer = LedgerConsumer(settings.kafka_bootstrap, "billing", [CHAIN_EVENTS], None,
                              settings.state_dir / "ledger.sqlite",
                              verifier=ChainEventVerifier(chain, reader=reader))  # a deposit only the chain made
    svc.on_startup(consumer.start)
    svc.task("consumer", consumer.run)
    svc.on_shutdown(consumer.stop)
    svc.on_shutdown(chain.close)
    svc.readiness("consumer", lambda: consumer.ready)
    app, conn = svc.app, consumer.conn

    @app.get("/v1/statements/{member}", summary="A member's statement for a period (JSON or CSV)")
    async def statement(member: str, since: float | None = None, until: float | None = None,
                        format: str = Query("json", pattern="^(json|csv)$")):
        doc = ledger.statement(conn, member, *period(since, until))
        if format == "csv":
            return Response(as_csv(doc["entries"]), media_type="text/csv")
        return doc

    @app.get("/v1/invoices/{member}", summary="What a member was charged as a consumer in a period")
    async def invoice(member: str, since: float | None = None, until: float | None = None,
                      format: str = Query("json", pattern="^(json|csv)$")):
        doc = ledger.invoice(conn, member, *period(since, until))
        if format == "csv":
            return Response(as_csv(doc["lines"]), media_type="text/csv")
        return doc

    @app.get("/v1/usage/{member}", summary="Usage by asset and counterparty")
    async def usage(member: str, since: float | None = None, until: float | None = None) -> dict:
        return ledger.usage(conn, member, *period(since, until))

    @app.get("/v1/prices/{asset}", summary="An asset's price history")
    async def prices(asset: str) -> list[dict]:
        return ledger.price_history(conn, asset)

    @app.get("/v1/quote", summary="What a job on these assets would cost now, from the chain's own rules")
    async def quote(asset: list[str] = Query(...), records: int = Query(0, ge=0, le=10**12)) -> dict:
        """Per asset, the charge for ``records`` records and what a job's max_price must cover
        for it (the chain refuses a job whose max_price is below the sum, ``max_price``)."""
        lines = [{"asset": a, "charge": await chain.query(f"/quote/{a}/{records}"),
                  "cover": await chain.query(f"/quote/{a}")} for a in asset]
        if any(line["charge"] is None or line["cover"] is None for line in lines):
            return JSONResponse({"title": "unknown asset", "status": 404}, status_code=404)
        return {"lines": lines, "total": sum(line["charge"] for line in lines), "records": records,
                "max_price": sum(line["cover"] for line in lines)}

    @app.get("/v1/reconcile", summary="Does the read model equal the chain's balances and escrow?")
    async def check() -> dict:
        diffs = await reconcile(conn, chain, attempts=4, reader=reader)
        return {"equal": not diffs, "differences": diffs}

    return svc


async def reconcile_once(settings: BillingSettings) -> int:
    import sqlite3

    conn = sqlite3.connect(settings.state_dir / "ledger.sqlite")
    async with ChainClient(settings.cometbft_rpc, settings.chain_id) as chain:
        diffs = await reconcile(conn, chain, reader=verified.from_env(chain))
    for d in diffs:
        print(f"MISMATCH {d}")
    print("billing read model equals the chain" if not diffs else f"{len(diffs)} differences")
    return 1 if diffs else 0


if __name__ == "__main__":
    if sys.argv[1:] == ["reconcile"]:
        sys.exit(asyncio.run(reconcile_once(BillingSettings())))
    main(lambda: build(BillingSettings()))
