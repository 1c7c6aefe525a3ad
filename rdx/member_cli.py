"""``rdx search|access|jobs|keys|audit|tx``: the gateway from a terminal, for member people and
systems. Configured by --gateway/--key-file/--api-key or RDX_GATEWAY, RDX_KEY_FILE, RDX_API_KEY."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from rdx.sdk import Gateway, GatewayError
from services.common.identity import Identity

console = Console()
access = typer.Typer(help="Ask for, grant and revoke access to data.", no_args_is_help=True)
jobs = typer.Typer(help="Submit and follow privacy-preserving jobs.", no_args_is_help=True)
keys = typer.Typer(help="API keys of your member.", no_args_is_help=True)
audit = typer.Typer(help="The audit trail.", no_args_is_help=True)
txs = typer.Typer(help="Chain transactions.", no_args_is_help=True)

GatewayUrl = typer.Option("http://127.0.0.1:8000", "--gateway", envvar="RDX_GATEWAY")
KeyFile = typer.Option(None, "--key-file", envvar="RDX_KEY_FILE", help="your member's signing key (JSON)")
ApiKey = typer.Option(None, "--api-key", envvar="RDX_API_KEY", help="an API key (read-only people)")
ChainId = typer.Option("rdx-local", "--chain-id", envvar="RDX_CHAIN_ID")


def connect(url: str, key_file: Path | None, api_key: str | None, chain_id: str) -> Gateway:
    if key_file is None and api_key is None:
        raise typer.BadParameter("give --key-file (to sign) or --api-key")
    # The gateway's word (verify=False): `rdx verify` proves state from a chain endpoint and a trust anchor.
    return Gateway(url, identity=Identity.load(key_file) if key_file else None, api_key=api_key, chain_id=chain_id,
                   verify=False)


def show(value) -> None:
    console.print_json(json.dumps(value, default=str))


def guarded(fn):
    """GatewayError → its problem text and exit 1, never a traceback."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GatewayError as exc:
            console.print(f"[red]{exc.status} {exc.title}[/red]: {exc.detail}")
            raise typer.Exit(1) from None
    return wrapper


def search(query: str = typer.Argument(None), level: str = typer.Option(None), url: str = GatewayUrl,
           key_file: Path = KeyFile, api_key: str = ApiKey, chain_id: str = ChainId) -> None:
    """Search the catalog."""
    with connect(url, key_file, api_key, chain_id) as gw:
        show(guarded(gw.search)(query, **({"level": level} if level else {})))


@access.command("request")
@guarded
def access_request(asset: str, grant_id: str = typer.Option(..., "--id"), ops: list[str] = typer.Option(..., "--op"),
                   purpose: str = typer.Option(...), max_runs: int = typer.Option(1), days: int = typer.Option(30),
                   url: str = GatewayUrl, key_file: Path = KeyFile, chain_id: str = ChainId) -> None:
    with connect(url, key_file, None, chain_id) as gw:
        show(gw.request_access(grant_id, asset, ops, purpose, int(time.time()) + days * 86_400, max_runs))


@access.command("approve")
@guarded
def access_approve(grant_id: str, url: str = GatewayUrl, key_file: Path = KeyFile, chain_id: str = ChainId) -> None:
    with connect(url, key_file, None, chain_id) as gw:
        show(gw.approve(grant_id))


@access.command("list")
@guarded
def access_list(status: str = typer.Option(None), url: str = GatewayUrl, key_file: Path = KeyFile,
                api_key: str = ApiKey, chain_id: str = ChainId) -> None:
    with connect(url, key_file, api_key, chain_id) as gw:
        show(gw.my_access(status))


@jobs.command("submit")
@guarded
def jobs_submit(job_id: str, type_: str = typer.Option(..., "--type"), inputs: list[str] = typer.Option(
                    ..., "--input", help="ASSET:GRANT"), max_price: int = typer.Option(...),
                params: str = typer.Option("{}", help="job parameters as JSON"), wait: bool = True,
                url: str = GatewayUrl, key_file: Path = KeyFile, chain_id: str = ChainId) -> None:
    with connect(url, key_file, None, chain_id) as gw:
        items = [dict(zip(("asset", "grant"), i.split(":", 1))) for i in inputs]
        show(gw.submit_job(job_id, type_, items, max_price, json.loads(params)))
        if wait:
            follow(gw, job_id)


@jobs.command("wait")
@guarded
def jobs_wait(job_id: str, url: str = GatewayUrl, key_file: Path = KeyFile, api_key: str = ApiKey,
              chain_id: str = ChainId) -> None:
    with connect(url, key_file, api_key, chain_id) as gw:
        follow(gw, job_id)


def follow(gw: Gateway, job_id: str) -> None:
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task(f"job {job_id}: running")

        def progress(record: dict) -> None:
            attested = len(record.get("attestations", {}))
            bar.update(task, description=f"job {job_id}: {record['status']} "
                                         f"({attested}/{len(record['participants'])} attested)")
        record = gw.wait_for_job(job_id, on_progress=progress)
    show({k: record.get(k) for k in ("id", "status", "ended_reason", "result_hash", "ended_height")})


@keys.command("create")
@guarded
def keys_create(member: str, role: str, url: str = GatewayUrl, key_file: Path = KeyFile, api_key: str = ApiKey,
                chain_id: str = ChainId) -> None:
    with connect(url, key_file, api_key, chain_id) as gw:
        show(gw.create_key(member, role))


@audit.command("verify")
@guarded
def audit_verify(since: float = typer.Option(None), until: float = typer.Option(None), url: str = GatewayUrl,
                 key_file: Path = KeyFile, api_key: str = ApiKey, chain_id: str = ChainId) -> None:
    """Recompute the audit trail's hash chain and check it against the anchors on chain."""
    with connect(url, key_file, api_key, chain_id) as gw:
        problems = gw.verify_audit(since, until)
    if problems:
        for p in problems:
            console.print(f"[red]TAMPERED[/red] {p}")
        raise typer.Exit(1)
    console.print("[green]audit trail intact[/green]: every anchored batch matches the chain")


@txs.command("status")
@guarded
def tx_status(tx_hash: str, url: str = GatewayUrl, key_file: Path = KeyFile, api_key: str = ApiKey,
              chain_id: str = ChainId) -> None:
    """A tx's status by its hash: pending, or committed with its height and result code (e.g. after a 503)."""
    with connect(url, key_file, api_key, chain_id) as gw:
        show(gw.tx_status(tx_hash))


def install(app: typer.Typer) -> None:
    app.command("search")(search)
    app.add_typer(access, name="access")
    app.add_typer(jobs, name="jobs")
    app.add_typer(keys, name="keys")
    app.add_typer(audit, name="audit")
    app.add_typer(txs, name="tx")
