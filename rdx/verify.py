"""``rdx verify``: check chain state from any one CometBFT RPC endpoint and a trust anchor the member
holds (the genesis file, or a trusted ``<height>:<header hash>``), trusting neither the endpoint nor
the gateway. Every value printed was proven against headers the validators signed
(services/common/verified.py); anything the endpoint cannot prove exits 1 with the reason.

    rdx verify listing bank.blacklist --rpc http://127.0.0.1:26657 --genesis genesis.json
    rdx verify grant g-1 | job psi-1 | balance bank | account bank.node
    rdx verify event 1042/0/1 [--event received.json]

``event``: the chain commits each block's events in state (``events/<height>``); the command
prints the proven type, entity and digest of one event, and with ``--event`` (the event's JSON as
a Kafka consumer received it) checks that this is the event the chain made.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import typer

from services.common.chain import ChainError
from services.common.chainevents import digest_of, events_key
from services.common.events import Event, EventDecodeError
from services.common.lightclient import header_hash
from services.common.verified import Anchor, VerificationError, VerifiedChain

verify = typer.Typer(no_args_is_help=True, help="Check chain state from one RPC endpoint against a trust anchor.")

Rpc = typer.Option("http://127.0.0.1:26657", "--rpc", envvar="RDX_COMETBFT_RPC", help="any validator's RPC")
Genesis = typer.Option(None, "--genesis", envvar="RDX_TRUSTED_GENESIS", help="the chain's genesis.json you trust")
Header = typer.Option(None, "--trusted-header", envvar="RDX_TRUSTED_HEADER", help="<height>:<header hash hex>")
ChainId = typer.Option("rdx-local", "--chain-id", envvar="RDX_CHAIN_ID", help="with --trusted-header")
MAX_VERSIONS = 1000


def anchor(genesis: Path | None, header: str | None, chain_id: str) -> Anchor:
    if genesis is not None:
        return Anchor.from_genesis(genesis)
    if header:
        return Anchor.from_header(chain_id, header)
    raise VerificationError("give --genesis or --trusted-header: the anchor must be yours, not the endpoint's")


async def listing_history(reader: VerifiedChain, asset: str) -> dict[str, Any]:
    current = await reader.query(f"assets/{asset}")
    if current is None:
        raise VerificationError(f"no listing {asset} (proven absent)")
    latest = int(current.get("version", 1))
    if not 1 <= latest <= MAX_VERSIONS:
        raise VerificationError(f"listing {asset} has {latest} versions, more than this command reads")
    versions = []
    for v in range(1, latest + 1):
        version = await reader.query(f"asset-versions/{asset}/{v:08d}")
        if version is None:
            raise VerificationError(f"version {v} of {asset} is proven absent")
        versions.append(version)
    return {"listing": current, "versions": versions}


async def chain_event(reader: VerifiedChain, event_id: str, received: bytes | None) -> dict[str, Any]:
    try:
        height = int(event_id.split("/")[0])
        if len(event_id.split("/")) != 3 or height < 0:
            raise ValueError
    except ValueError:
        raise VerificationError(f"an event id is <height>/<tx>/<index>, not {event_id[:40]!r}") from None
    record = await reader.query(events_key(height))
    entry = (record or {}).get(event_id)
    if entry is None:
        raise VerificationError(f"block {height} holds no event {event_id} (proven)")
    out = {"event": event_id, "type": entry[0], "entity": entry[1], "digest": entry[2]}
    if received is not None:
        try:
            event = Event.decode(received)
        except EventDecodeError as exc:
            raise VerificationError(f"--event is not an rdx event: {exc}") from None
        if event.id != event_id or digest_of(event) != entry[2]:
            raise VerificationError(f"the event given is not the one the chain made as {event_id}")
        out["matches_event_file"] = True
    return out


async def check(what: str, ident: str, rpc: str, trust: Anchor, received: bytes | None = None) -> dict[str, Any]:
    async with VerifiedChain(rpc, trust) as reader:
        if what == "listing":
            found: Any = await listing_history(reader, ident)
        elif what == "event":
            found = await chain_event(reader, ident, received)
        elif what == "balance":
            found = {"member": ident, "balance": int(await reader.query(f"bank/balance/{ident}") or 0)}
        else:
            key = {"grant": "access", "job": "jobs", "account": "accounts"}[what]
            found = await reader.query(f"{key}/{ident}")
            if found is None:
                raise VerificationError(f"no {what} {ident} (proven absent)")
            if what == "job":
                found = {"job": found, "attested_by": sorted(found.get("attestations") or {}),
                         "awaiting": sorted(set(found.get("participants") or []) - set(found.get("attestations") or {}))}
        trusted = reader.latest
        # The last header verified: a later `rdx verify --trusted-header` can start from it.
        return {"verified": found, "trusted_header": f"{trusted.height}:{header_hash(trusted.header).hex()}"}


def _run(what: str, ident: str, rpc: str, genesis: Path | None, header: str | None, chain_id: str,
         received: bytes | None = None) -> None:
    try:
        out = asyncio.run(check(what, ident, rpc, anchor(genesis, header, chain_id), received))
    except VerificationError as exc:
        typer.secho(f"rdx verify: NOT VERIFIED: {exc}", err=True, fg="red")
        raise typer.Exit(1) from None
    except ChainError as exc:
        typer.secho(f"rdx verify: {exc}", err=True, fg="red")
        raise typer.Exit(2) from None
    typer.echo(json.dumps(out, indent=2, sort_keys=True))


COMMANDS = {
    "listing": ("ASSET", "A listing and every version of it, as the chain recorded them."),
    "grant": ("GRANT_ID", "An access request or grant: its status, runs and expiry."),
    "job": ("JOB_ID", "A job's record with its attestations (who attested which result hash, who is still awaited)."),
    "balance": ("MEMBER", "A member's balance in credits."),
    "account": ("ACCOUNT", "An account: its public key, kind and nonce."),
}


def _command(what: str, metavar: str, doc: str) -> None:
    def command(ident: str = typer.Argument(..., metavar=metavar), rpc: str = Rpc, genesis: Path | None = Genesis,
                header: str | None = Header, chain_id: str = ChainId) -> None:
        _run(what, ident, rpc, genesis, header, chain_id)

    command.__doc__ = doc
    verify.command(what)(command)


for _what, (_metavar, _doc) in COMMANDS.items():
    _command(_what, _metavar, _doc)


@verify.command("event")
def event_command(event_id: str = typer.Argument(..., metavar="EVENT_ID"), rpc: str = Rpc,
                  genesis: Path | None = Genesis, header: str | None = Header, chain_id: str = ChainId,
                  received: Path | None = typer.Option(None, "--event", help="the event's JSON as received from Kafka")
                  ) -> None:
    """A chain event (<height>/<tx>/<index>) as the chain committed it; with --event, checks a received copy."""
    _run("event", event_id, rpc, genesis, header, chain_id, received.read_bytes() if received else None)


def install(app: typer.Typer) -> None:
    app.add_typer(verify, name="verify")
