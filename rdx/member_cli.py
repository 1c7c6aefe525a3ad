"""``rdx search|listings|access|jobs|billing|webhooks|keys|audit|tx``: every member operation of the
gateway from a terminal, through rdx_client (clients/python). Tables for people by default,
``--json`` for scripts (one JSON document on stdout; errors on stderr, exit 1).

Configured by --gateway/--key-file/--api-key/--chain-id or RDX_GATEWAY, RDX_KEY_FILE,
RDX_API_KEY, RDX_CHAIN_ID. rdx_client is imported when a command runs, not with this module:
the services' container images run ``rdx`` (e.g. ``rdx genesis``) without the client installed."""

from __future__ import annotations

import functools
import inspect
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Column, Table
from rich.text import Text

console = Console()
errors = Console(stderr=True)
listings = typer.Typer(help="Listings: publish one with its data commitment, show one.", no_args_is_help=True)
access = typer.Typer(help="Ask for, approve, reject and revoke access to data.", no_args_is_help=True)
jobs = typer.Typer(help="Submit, list and follow privacy-preserving jobs; open your results.", no_args_is_help=True)
billing = typer.Typer(help="Quotes, statements, invoices and usage.", no_args_is_help=True)
webhooks = typer.Typer(help="Your member's webhooks: register, list, deliveries, replay, delete.", no_args_is_help=True)
keys = typer.Typer(help="API keys of your member, and its delegated chain keys.", no_args_is_help=True)
audit = typer.Typer(help="The audit trail.", no_args_is_help=True)
txs = typer.Typer(help="Chain transactions.", no_args_is_help=True)

GatewayUrl = typer.Option("http://127.0.0.1:8000", "--gateway", envvar="RDX_GATEWAY")
KeyFile = typer.Option(None, "--key-file", envvar="RDX_KEY_FILE", help="your member's signing key (JSON)")
ApiKey = typer.Option(None, "--api-key", envvar="RDX_API_KEY", help="an API key (read-only people)")
ChainId = typer.Option("rdx-local", "--chain-id", envvar="RDX_CHAIN_ID")
Json = typer.Option(False, "--json", help="one JSON document on stdout, for scripts")
After = typer.Option("", "--after", help="the last id of the page before (a page's `next`)")


class Options:
    """The connection options every command takes."""

    def __init__(self, url: str, key_file: Path | None, api_key: str | None, chain_id: str, as_json: bool):
        self.url, self.key_file, self.api_key, self.chain_id, self.as_json = url, key_file, api_key, chain_id, as_json

    def client(self, signing: bool = False):
        import rdx_client

        if signing and self.key_file is None:
            raise typer.BadParameter("this command signs a transaction: give --key-file")
        if self.key_file is None and self.api_key is None:
            raise typer.BadParameter("give --key-file (to sign) or --api-key")
        key = rdx_client.Key.load(self.key_file) if self.key_file else None
        return rdx_client.Client(self.url, key=key, api_key=None if signing else self.api_key,
                                 chain_id=self.chain_id)


TOP: list[tuple[str, Any]] = []  # commands of `rdx` itself (search)


def command(group: typer.Typer | None, name: str, *, signing: bool = False):
    """A member command: its function takes ``client`` first, then its own arguments, and returns
    what to show (a model, a page, a list, or a (value, columns) pair for a table). The connection
    options are added here; an rdx_client error is its message on stderr and exit 1."""

    def wrap(fn):
        @functools.wraps(fn)
        def run(*args: Any, rdx_gateway: str, rdx_key_file: Path | None, rdx_api_key: str | None,
                rdx_chain_id: str, rdx_json: bool, **kwargs: Any) -> None:
            import rdx_client

            opts = Options(rdx_gateway, rdx_key_file, rdx_api_key, rdx_chain_id, rdx_json)
            try:
                with opts.client(signing) as client:
                    shown = fn(client, *args, **kwargs)
            except (rdx_client.RdxError, ValueError) as exc:  # ValueError: a key file that is not one
                problem = getattr(exc, "type", None)
                errors.print(safe(str(exc), "red") + safe(f" ({problem})" if problem else "", "dim"))
                raise typer.Exit(1) from None
            show(shown, rdx_json)

        params = list(inspect.signature(fn).parameters.values())[1:]  # without client
        extra = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=a) for n, a, d in (
            ("rdx_gateway", str, GatewayUrl), ("rdx_key_file", Path, KeyFile), ("rdx_api_key", str, ApiKey),
            ("rdx_chain_id", str, ChainId), ("rdx_json", bool, Json))]
        run.__signature__ = inspect.Signature(
            [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params] + extra)
        del run.__wrapped__  # typer reads the signature above, not fn's
        if group is None:
            TOP.append((name, run))
        else:
            group.command(name)(run)
        return run
    return wrap


# -- output ------------------------------------------------------------------------------------------
def plain(value: Any) -> Any:
    """Models, pages and lists as JSON-ready values."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def show(shown: Any, as_json: bool) -> None:
    value, columns = shown if isinstance(shown, tuple) else (shown, None)
    if value is None:
        return
    data = plain(value)
    if as_json:
        sys.stdout.write(json.dumps(data, default=str) + "\n")
        return
    rows = data["items"] if isinstance(data, dict) and "items" in data and columns else data
    if isinstance(rows, list):
        columns = columns or (sorted(rows[0]) if rows else ["(none)"])
        table = Table(*(Column(header=safe(str(c))) for c in columns), header_style="bold")
        for row in rows:
            table.add_row(*(cell(row.get(c)) for c in columns))
        console.print(table)
        if isinstance(data, dict) and data.get("next"):
            console.print(safe(f"more: --after {data['next']}", "dim"))
        return
    table = Table(show_header=False, box=None)
    for k, v in data.items():
        table.add_row(safe(str(k), "bold"), cell(v))
    console.print(table)


CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def safe(text: str, style: str = "") -> Text:
    """Text as data: rich markup is not read (a Text is never parsed for it) and terminal control
    characters (an escape sequence in a hostile answer) are shown as \\xNN, not sent to the terminal."""
    return Text(CONTROL.sub(lambda c: f"\\x{ord(c.group()):02x}", text), style=style)


def cell(value: Any) -> Text:
    if value is None:
        return Text("")
    return safe(json.dumps(value, default=str) if isinstance(value, (dict, list)) else str(value))


# -- search and listings ---------------------------------------------------------------------------
@command(None, "search")
def search(client, query: str = typer.Argument(None), level: list[str] = typer.Option(None, "--level"),
           cursor: str = typer.Option(None), limit: int = typer.Option(20)):
    """Search the catalog."""
    found = client.search(query, cursor=cursor, limit=limit, **({"level": level} if level else {}))
    return {"items": [plain(i) for i in found.items], "next": found.next_cursor, "total": found.total}, \
        ["id", "title", "level", "operations", "price", "status"]


@command(listings, "show")
def listing_show(client, asset_id: str):
    """One listing with its commitment and on-chain versions."""
    return client.listing(asset_id)


@command(listings, "publish", signing=True)
def listing_publish(client, asset_id: str, level: str = typer.Option(..., help="L1 … L4"),
                    ops: list[str] = typer.Option(..., "--op", help="an allowed operation (repeat)"),
                    metadata: Path = typer.Option(..., help="the listing's metadata (JSON file, docs/catalog.md)"),
                    price_model: str = typer.Option("fixed"), price: int = typer.Option(..., help="credits"),
                    commitment: str = typer.Option(None, help="the data commitment (hex), if not from --node"),
                    node: str = typer.Option(None, help="your compute node's URL: the commitment of --dataset there"),
                    dataset: str = typer.Option(None, help="the dataset on your node this listing describes"),
                    min_group_size: int = typer.Option(None)):
    """List a dataset: signed assets.List with its commitment, taken from your own node (--node and
    --dataset: what the node computed over the data it holds) or given (--commitment)."""
    if (commitment is None) == (node is None):
        raise typer.BadParameter("give --commitment, or --node and --dataset")
    if node is not None:
        held = {d.id: d for d in client.datasets(node)}
        if dataset not in held or not held[dataset].commitment:
            raise typer.BadParameter(f"your node has no committed dataset {dataset!r} (it has {sorted(held)})")
        commitment = held[dataset].commitment
    try:
        body = json.loads(metadata.read_text())
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(f"--metadata: {exc}") from None
    return client.publish_listing(asset_id, level=level, operations=ops, commitment=commitment,
                                  price={"model": price_model, "amount": price}, metadata=body,
                                  min_group_size=min_group_size)


# -- access ----------------------------------------------------------------------------------------
@command(access, "request", signing=True)
def access_request(client, asset: str, grant_id: str = typer.Option(..., "--id"),
                   ops: list[str] = typer.Option(..., "--op"), purpose: str = typer.Option(...),
                   max_runs: int = typer.Option(1), days: int = typer.Option(30)):
    """Ask a provider for access (signed access.Request)."""
    return client.request_access(grant_id, asset, ops, purpose, int(time.time()) + days * 86_400, max_runs)


@command(access, "approve", signing=True)
def access_approve(client, grant_id: str):
    """Approve a request for your data (signed access.Approve)."""
    return client.approve(grant_id)


@command(access, "reject", signing=True)
def access_reject(client, grant_id: str, reason: str = typer.Option(...)):
    """Reject a request for your data (signed access.Reject)."""
    return client.reject(grant_id, reason)


@command(access, "revoke", signing=True)
def access_revoke(client, grant_id: str, reason: str = typer.Option(...)):
    """Revoke a grant of your data (signed access.Revoke)."""
    return client.revoke(grant_id, reason)


@command(access, "list")
def access_list(client, status: str = typer.Option(None), after: str = After, limit: int = typer.Option(1000)):
    """Your requests and grants, as consumer or provider."""
    return client.access_requests(status, after, limit), ["id", "asset", "consumer", "provider", "operations", "status"]


@command(access, "wait")
def access_wait(client, grant_id: str, timeout: float = typer.Option(60.0)):
    """Wait until a request is decided (exit 1 if not by --timeout)."""
    return client.wait_for_grant(grant_id, timeout)


# -- jobs ------------------------------------------------------------------------------------------
JOB_COLUMNS = ["id", "type", "consumer", "participants", "status", "ended_reason"]


@command(jobs, "submit", signing=True)
def jobs_submit(client, job_id: str, type_: str = typer.Option(..., "--type"),
                inputs: list[str] = typer.Option(..., "--input", help="ASSET:GRANT"),
                max_price: int = typer.Option(None, help="default: the quote's max_price"),
                params: str = typer.Option("{}", help="job parameters as JSON"),
                timeout_s: int = typer.Option(600, help="seconds until the chain ends it; the nodes refuse a job "
                                                        "that starts within 30 s of that end (no key could be released)"),
                wait: bool = typer.Option(False, help="wait for the job to end")):
    """Submit a job (signed jobs.Submit)."""
    items = [dict(zip(("asset", "grant"), i.split(":", 1))) for i in inputs]
    if any(len(i) != 2 for i in items):
        raise typer.BadParameter("--input is ASSET:GRANT")
    try:
        parameters = json.loads(params)
    except ValueError:
        raise typer.BadParameter("--params is not JSON") from None
    if max_price is None:
        max_price = client.quote([i["asset"] for i in items]).max_price
    done = client.submit_job(job_id, type_, items, max_price, parameters, timeout_s)
    return client.wait_for_job(job_id, timeout=timeout_s + 60) if wait else done


@command(jobs, "list")
def jobs_list(client, status: str = typer.Option(None), type_: str = typer.Option(None, "--type"),
              role: str = typer.Option(None, help="consumer or provider"), after: str = After,
              limit: int = typer.Option(50)):
    """Your member's jobs, as consumer or provider, in id order."""
    return client.jobs(status, type_, role, after, limit), JOB_COLUMNS


@command(jobs, "show")
def jobs_show(client, job_id: str):
    """A job's record on chain."""
    return client.job(job_id)


@command(jobs, "wait")
def jobs_wait(client, job_id: str, timeout: float = typer.Option(600.0)):
    """Wait until a job ends (exit 1 if not by --timeout)."""
    return client.wait_for_job(job_id, timeout)


@command(jobs, "result")
def jobs_result(client, job_id: str, node: str = typer.Option(..., help="your compute node's URL"),
                node_key: Path = typer.Option(..., help="your node's key file (<member>.node)"),
                timeout: float = typer.Option(30.0)):
    """Your result of a job: fetched from your own node, opened with its key, its commitment checked."""
    import rdx_client

    return client.result(node, job_id, rdx_client.Key.load(node_key), timeout)


# -- billing ---------------------------------------------------------------------------------------
@command(billing, "quote")
def billing_quote(client, assets: list[str], records: int = typer.Option(0)):
    """What a job on these assets costs now (max_price: the least the chain accepts)."""
    return client.quote(assets, records)


@command(billing, "statement")
def billing_statement(client, member: str, since: float = typer.Option(None), until: float = typer.Option(None)):
    """A member's statement: opening and closing balance and every entry."""
    return client.statement(member, since, until)


@command(billing, "invoice")
def billing_invoice(client, member: str, since: float = typer.Option(None), until: float = typer.Option(None)):
    """What a member was charged as a consumer, line by line."""
    return client.invoice(member, since, until)


@command(billing, "usage")
def billing_usage(client, member: str, since: float = typer.Option(None), until: float = typer.Option(None)):
    """Use of a member's data, and its use of others', by asset and counterparty."""
    return client.usage(member, since, until)


# -- webhooks --------------------------------------------------------------------------------------
@command(webhooks, "register")
def webhooks_register(client, url: str, events: list[str] = typer.Option(..., "--event",
                                                                          help="access, grants, jobs or statements")):
    """Register an HTTPS endpoint; the signing secret is shown once."""
    return client.register_webhook(url, events)


@command(webhooks, "list")
def webhooks_list(client, after: str = After, limit: int = typer.Option(100)):
    """Your member's webhooks."""
    return client.webhooks(after, limit), ["id", "url", "events", "created_at"]


@command(webhooks, "deliveries")
def webhooks_deliveries(client, hook_id: str, status: str = typer.Option(None), after: str = After,
                        limit: int = typer.Option(100)):
    """A webhook's deliveries with their status, oldest first."""
    return client.deliveries(hook_id, status, after, limit), ["id", "event_type", "status", "attempts",
                                                               "last_status", "last_error"]


@command(webhooks, "replay")
def webhooks_replay(client, hook_id: str, delivery: str = typer.Option(None, help="one delivery"),
                    since: float = typer.Option(None, help="every delivery queued since (unix s)")):
    """Send deliveries again: one (--delivery) or all since a time (--since)."""
    if (delivery is None) == (since is None):
        raise typer.BadParameter("give --delivery or --since")
    return client.replay_delivery(hook_id, delivery) if delivery else client.replay_webhook(hook_id, since)


@command(webhooks, "delete")
def webhooks_delete(client, hook_id: str):
    """Remove a webhook and its deliveries."""
    client.delete_webhook(hook_id)
    return {"deleted": hook_id}


# -- API keys --------------------------------------------------------------------------------------
@command(keys, "create")
def keys_create(client, member: str, role: str):
    """A new API key (its token is shown once)."""
    return client.create_key(member, role)


@command(keys, "list")
def keys_list(client, after: str = After):
    """Your member's API keys."""
    return client.api_keys(after), ["key_id", "member", "role", "created_at", "revoked_at"]


@command(keys, "revoke")
def keys_revoke(client, key_id: str):
    """Revoke an API key."""
    client.revoke_key(key_id)
    return {"revoked": key_id}


# -- delegated keys (members.Delegate): an analyst signs jobs without the member's key -------------
@command(keys, "delegate", signing=True)
def keys_delegate(client, label: str, public_key: str = typer.Option(..., help="the delegate's key (base64; rdx keygen)"),
                  power: list[str] = typer.Option(..., "--power", help="jobs.Submit and/or access.Request"),
                  days: int = typer.Option(30, help="until when, at most 90")):
    """Let another key sign your member's jobs.Submit / access.Request, as <member>.delegate-<label>."""
    return client.delegate(label, public_key, power, int(time.time()) + days * 86_400)


@command(keys, "undelegate", signing=True)
def keys_undelegate(client, account: str):
    """End a delegate (<member>.delegate-<label>): it signs nothing more."""
    return client.undelegate(account)


# -- transactions ----------------------------------------------------------------------------------
@command(txs, "status")
def tx_status(client, tx_hash: str):
    """A tx's status by its hash: pending, or committed with its height and result code (e.g. after a 503)."""
    return client.tx_status(tx_hash)


@command(txs, "wait")
def tx_wait(client, tx_hash: str, timeout: float = typer.Option(60.0)):
    """Wait until a tx is committed (exit 1 if not by --timeout)."""
    return client.wait_for_tx(tx_hash, timeout)


# -- audit (rdx.sdk: the trail is checked with the servers' own hash chain) ------------------------
@audit.command("verify")
def audit_verify(since: float = typer.Option(None), until: float = typer.Option(None), url: str = GatewayUrl,
                 key_file: Path = KeyFile, api_key: str = ApiKey, chain_id: str = ChainId) -> None:
    """Recompute the audit trail's hash chain and check it against the anchors on chain."""
    from rdx.sdk import Gateway, GatewayError
    from services.common.identity import Identity

    if key_file is None and api_key is None:
        raise typer.BadParameter("give --key-file (to sign) or --api-key")
    try:
        with Gateway(url, identity=Identity.load(key_file) if key_file else None, api_key=api_key,
                     chain_id=chain_id, verify=False) as gw:
            problems = gw.verify_audit(since, until)
    except GatewayError as exc:
        errors.print(safe(str(exc), "red"))
        raise typer.Exit(1) from None
    if problems:
        for p in problems:
            console.print(safe("TAMPERED ", "red") + safe(p))
        raise typer.Exit(1)
    console.print("[green]audit trail intact[/green]: every anchored batch matches the chain")


def install(app: typer.Typer) -> None:
    for name, run in TOP:
        app.command(name)(run)
    for name, group in (("listings", listings), ("access", access), ("jobs", jobs), ("billing", billing),
                        ("webhooks", webhooks), ("keys", keys), ("audit", audit), ("tx", txs)):
        app.add_typer(group, name=name)
