"""``rdx genesis`` and ``rdx board``: the chain's genesis from a YAML spec, and the association
board's proposals from a terminal.

    rdx genesis net/genesis.yaml --out net/genesis.json      write it (the same YAML, the same bytes)
    rdx genesis net/genesis.yaml --check                     validate only
    rdx genesis --local KEYS --chain-id rdx-dev --validator-key-file priv_validator_key.json --out genesis.json --if-missing
                                                             a one-validator dev chain, as `rdx up` makes (containers)

    rdx keygen association.board-alice --out alice.json      a seat's key (0600); prints the public key
    rdx board show                                           seats, threshold, powers, a scheduled upgrade
    rdx board list [--status open]                           proposals
    rdx board propose credit-42 --type bank.Deposit --payload '{"to": "acme", "amount": 5000, "reference": "wire 42"}'
    rdx board approve credit-42

``rdx board`` signs with a seat's key (``--key-file``, or RDX_KEY_FILE) and talks to a validator's
CometBFT RPC (``--rpc``, or RDX_COMETBFT_RPC) for chain ``--chain-id`` (RDX_CHAIN_ID).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import typer

board = typer.Typer(help="The association board: proposals and approvals (k of n seat keys).", no_args_is_help=True)

Rpc = typer.Option("http://127.0.0.1:26657", "--rpc", envvar="RDX_COMETBFT_RPC", help="a validator's CometBFT RPC")
ChainId = typer.Option("rdx-local", "--chain-id", envvar="RDX_CHAIN_ID")
KeyFile = typer.Option(None, "--key-file", envvar="RDX_KEY_FILE", help="the board seat's signing key (JSON)")


def _fail(message: str, code: int = 1) -> None:
    typer.secho(f"rdx: {message}", err=True, fg="red")
    raise typer.Exit(code)


def genesis(spec: Path = typer.Argument(None, help="the YAML spec (see rdx/genesis.py)"),
            out: Path = typer.Option(None, "--out", help="where to write genesis.json (default: beside the spec)"),
            check: bool = typer.Option(False, "--check", help="validate only; write nothing"),
            validator_key_file: Path = typer.Option(
                None, "--validator-key-file", help="a priv_validator_key.json: the one validator, instead of the spec's"),
            local: Path = typer.Option(
                None, "--local", metavar="KEYS", help="no SPEC: the spec `rdx up` uses, with the association's keys "
                "in KEYS (made on first use) and the one validator of --validator-key-file"),
            chain_id: str = typer.Option(None, "--chain-id", help="with --local: the chain id"),
            if_missing: bool = typer.Option(False, "--if-missing", help="do nothing if --out exists")) -> None:
    """Write a complete genesis.json (validators, association, board, members, params, policy) from SPEC."""
    from rdx import genesis as rdx_genesis

    if (spec is None) == (local is None):
        _fail("give a SPEC, or --local KEYS", 2)
    if local is not None and (chain_id is None or validator_key_file is None or out is None):
        _fail("--local needs --chain-id, --validator-key-file and --out", 2)
    target = out or spec.with_name("genesis.json")
    if if_missing and target.exists():
        typer.echo(f"{target} exists: left as it is")
        return
    try:
        if local is not None:
            spec = target.with_name("genesis.yaml")
            rdx_genesis.dump_spec(_local_spec(local, chain_id, validator_key_file), spec)
        doc = rdx_genesis.build(rdx_genesis.load(spec, validator_key_file), spec.parent)
    except rdx_genesis.GenesisError as exc:
        _fail(str(exc), 2)
    if not check:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(rdx_genesis.encode(doc))
    board_doc = doc["app_state"]["board"]
    typer.echo(f"{'valid' if check else f'wrote {target}'}: chain {doc['chain_id']}, {len(doc['validators'])} "
               f"validators (power {sum(int(v['power']) for v in doc['validators'])}), board {board_doc['threshold']} "
               f"of {len(board_doc['seats'])}, {len(doc['app_state'].get('members', []))} founding members; "
               f"sha256 {rdx_genesis.digest(doc)}")


def keygen(account: str = typer.Argument(..., help="the account the key signs for, e.g. association.board-alice"),
           out: Path = typer.Option(..., "--out", help="the key file to write (0600); never overwritten")) -> None:
    """Make an Ed25519 signing key (a board seat's, the officer's, a member's) and print its public key."""
    from services.common.identity import Identity

    if out.exists():
        _fail(f"{out} exists: a key file is never overwritten", 2)
    identity = Identity.generate(account)
    identity.save(out)
    typer.echo(f"{account} {identity.public_key}")


def _local_spec(keys: Path, chain_id: str, validator_key_file: Path) -> dict:
    """What `rdx up` makes: the association's officer and gateway keys in ``keys`` (0600, made on
    first use), a board of one seat derived from the officer's key (its key file written beside
    them), the officer holding every power it may. A dev chain's, never a shared chain's."""
    from rdx import genesis as rdx_genesis
    from rdx.supervisor import local_identity, save_local_seat

    association = local_identity(keys, "association")
    save_local_seat(keys, association)
    app = rdx_genesis.local_app_spec(association, gateway=local_identity(keys, "association.node"))
    return rdx_genesis.local_spec(chain_id, [("validator-0", rdx_genesis.read_key_file(validator_key_file))], app)


def _run(coro):
    from rdx.board import BoardError

    try:
        return asyncio.run(coro)
    except BoardError as exc:
        _fail(str(exc))


def _client(rpc: str, chain_id: str, key_file: Path | None):
    from rdx.board import Board
    from services.common.identity import Identity

    return Board(rpc, chain_id, Identity.load(key_file) if key_file else None)


def _show(value) -> None:
    typer.echo(json.dumps(value, indent=2, sort_keys=True))


@board.command("show")
def board_show(rpc: str = Rpc, chain_id: str = ChainId) -> None:
    """The board (seats, threshold, powers) and any scheduled upgrade."""
    async def go():
        async with _client(rpc, chain_id, None) as b:
            return {"board": await b.board(), "upgrade": await b.upgrade()}
    _show(_run(go()))


@board.command("list")
def board_list(status: str = typer.Option(None, help="open, executed, failed or expired"), rpc: str = Rpc,
               chain_id: str = ChainId) -> None:
    """Proposals, oldest first: id, status, action, approvals."""
    async def go():
        async with _client(rpc, chain_id, None) as b:
            return await b.proposals(status)
    for p in sorted(_run(go()), key=lambda p: (p["height"], p["id"])):
        typer.echo(f"{p['id']:<24} {p['status']:<9} {p['action']['type']:<26} approvals {len(p['approvals'])}/"
                   f"{p['threshold']}  expires {time.strftime('%Y-%m-%d %H:%M', time.gmtime(p['expires_at']))}Z"
                   + (f"  ({p['reason']})" if p.get("reason") else ""))


@board.command("propose")
def board_propose(proposal_id: str, type_: str = typer.Option(..., "--type", help="e.g. bank.Deposit, validators.Update"),
                  payload: str = typer.Option("{}", help="the action's payload as JSON"),
                  expires_in: int = typer.Option(None, help="seconds from now (default: the board's lifetime)"),
                  rpc: str = Rpc, chain_id: str = ChainId, key_file: Path = KeyFile) -> None:
    """Propose an action of the association; your approval counts."""
    try:
        body = json.loads(payload)
    except ValueError as exc:
        _fail(f"--payload is not JSON: {exc}", 2)

    async def go():
        async with _client(rpc, chain_id, key_file) as b:
            return await b.propose(proposal_id, type_, body, None if expires_in is None else int(time.time()) + expires_in)
    _show(_run(go()))


@board.command("approve")
def board_approve(proposal_id: str, rpc: str = Rpc, chain_id: str = ChainId, key_file: Path = KeyFile) -> None:
    """Approve an open proposal; the k-th approval executes it."""
    async def go():
        async with _client(rpc, chain_id, key_file) as b:
            return await b.approve(proposal_id)
    _show(_run(go()))


def install(app: typer.Typer) -> None:
    app.command("genesis")(genesis)
    app.command("keygen")(keygen)
    app.add_typer(board, name="board")
