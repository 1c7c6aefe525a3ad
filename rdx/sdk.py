"""A typed Python client of the rdx gateway for member systems: it signs chain transactions with
the member's key and each HTTP request (RFC 9421), or uses an API key for read-only people.

The gateway is not trusted with the member's view of the chain: with ``verify=True`` (the default)
state the member decides on (an account and its key, a balance, a grant, a job) is read directly
from a CometBFT RPC endpoint the member names (``chain_rpc``, any validator's) and proven against
the validators' signed headers from the member's own trust anchor (``trust``: the genesis, or a
height and header hash; services/common/verified.py). Without them those reads raise
``VerificationError``; ``verify=False`` takes the gateway's word instead."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import httpx
import rdx_client
from rdx_client import ApiError as GatewayError  # noqa: F401 - the SDK's name for a problem answer

from services.common.audit import AuditRecord, verify_against_anchors
from services.common.identity import Identity
from services.common.verified import Anchor, VerificationError, VerifiedChain

T = TypeVar("T")


def key_of(identity: Identity) -> rdx_client.Key:
    """The client's key for a servers'-side ``Identity`` (the same 32-byte seed)."""
    return rdx_client.Key(identity.account, bytes(identity.signing_key))


class ChainReader:
    """``VerifiedChain`` for synchronous callers: its event loop runs in a thread of its own, so the
    SDK can be used from scripts and from inside another event loop alike."""

    def __init__(self, rpc_url: str, trust: Anchor, **options: Any):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="rdx-sdk-chain", daemon=True)
        self._thread.start()
        self.reader = VerifiedChain(rpc_url, trust, **options)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def state(self, key: str) -> Any | None:
        return self._run(self.reader.query(key))

    def close(self) -> None:
        self._run(self.reader.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


class Gateway:
    """rdx_client.Client with dict answers, as the exchange's own tools and tests use it, plus the
    reads proven from the chain. Signing, nonces, retries and problems are the client's."""

    def __init__(self, url: str, *, identity: Identity | None = None, api_key: str | None = None,
                 chain_id: str = "rdx-local", timeout: float = 30.0, chain_rpc: str | None = None,
                 trust: Anchor | None = None, verify: bool = True):
        if identity is None and api_key is None:
            raise ValueError("an identity (to sign) or an API key is needed")
        if trust is not None and trust.chain_id != chain_id:
            raise ValueError(f"the trust anchor is of chain {trust.chain_id!r}, not {chain_id!r}")
        self.url, self.api_key, self.chain_id = url.rstrip("/"), api_key, chain_id
        self.verify = verify
        self.client = rdx_client.Client(url, key=key_of(identity) if identity else None, api_key=api_key,
                                        chain_id=chain_id, timeout=timeout)
        self._identity = identity
        self.http: httpx.Client = self.client.http
        self.chain = ChainReader(chain_rpc, trust) if verify and chain_rpc and trust else None

    @property
    def identity(self) -> Identity | None:
        return self._identity

    @identity.setter
    def identity(self, identity: Identity | None) -> None:
        """The key that signs this SDK's transactions (and, without an API key, its requests)."""
        self._identity = identity
        self.client._core.key = key_of(identity) if identity else None

    def close(self) -> None:
        self.client.close()
        if self.chain:
            self.chain.close()

    def __enter__(self) -> "Gateway":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- transport ------------------------------------------------------------------------------
    def request(self, method: str, path: str, *, body: Any = None, params: dict | None = None) -> Any:
        return self.client.request(method, path, body=body, params=params)

    # -- reads ----------------------------------------------------------------------------------
    def state(self, key: str) -> Any | None:
        """One state key (``accounts/bank``, ``access/g-1`` ...) proven from the chain (None: proven
        absent); VerificationError if it cannot be proven."""
        if self.chain is None:
            raise VerificationError("verified reads need chain_rpc and a trust anchor (or verify=False)")
        return self.chain.state(key)

    def account(self, account: str) -> dict:
        if not self.verify:
            return self.request("GET", f"/v1/accounts/{account}")
        found = self.state(f"accounts/{account}")
        if found is None:
            raise rdx_client.NotFound(404, {"title": "Not found", "detail": f"no account {account} (proven absent)"})
        return found

    def balance(self, member: str) -> int:
        """A member's balance in credits, proven from the chain (there is no gateway route for it)."""
        return int(self.state(f"bank/balance/{member}") or 0)

    def grant(self, grant_id: str) -> dict | None:
        """An access request or grant as the chain holds it (None: none), proven from the chain."""
        return self.state(f"access/{grant_id}")

    def search(self, q: str | None = None, **filters: Any) -> dict:
        return self.request("GET", "/v1/listings", params={"q": q, **filters} if q else filters)

    def listing(self, asset_id: str) -> dict:
        return self.request("GET", f"/v1/listings/{asset_id}")

    def my_access(self, status: str | None = None) -> list[dict]:
        return self.request("GET", "/v1/access-requests", params={"status": status} if status else None)

    def tx_status(self, tx_hash: str) -> dict:
        """``{"tx_hash", "status": "pending"|"committed", "height", "code", "log"}``; GatewayError 404
        if the chain has no such tx of the caller's member (e.g. one whose write timed out and was lost)."""
        return self.request("GET", f"/v1/tx/{tx_hash}")

    def job(self, job_id: str) -> dict:
        if not self.verify:
            return self.request("GET", f"/v1/jobs/{job_id}")
        found = self.state(f"jobs/{job_id}")
        if found is None:
            raise rdx_client.NotFound(404, {"title": "Not found", "detail": f"no job {job_id} (proven absent)"})
        return found

    def audit(self, **filters: Any) -> list[AuditRecord]:
        return [AuditRecord(**r) for r in self.request("GET", "/v1/audit", params=filters)]

    # -- the access workflow and jobs (rdx_client's payloads, signing and nonces) ---------------------
    def _signing(self) -> rdx_client.Client:
        if self.identity is None:
            raise ValueError("chain transactions need the member's signing identity")
        return self.client

    def request_access(self, grant_id: str, asset: str, operations: list[str], purpose: str,
                       expires_at: int | None = None, max_runs: int = 1) -> dict:
        return self._signing().request_access(grant_id, asset, operations, purpose, expires_at, max_runs).model_dump()

    def approve(self, grant_id: str) -> dict:
        return self._signing().approve(grant_id).model_dump()

    def reject(self, grant_id: str, reason: str) -> dict:
        return self._signing().reject(grant_id, reason).model_dump()

    def revoke(self, grant_id: str, reason: str) -> dict:
        return self._signing().revoke(grant_id, reason).model_dump()

    def quote(self, assets: list[str], records: int = 0) -> dict:
        """What a job on ``assets`` costs now; ``max_price`` is the least the chain accepts."""
        return self.request("GET", "/v1/billing/quote", params={"asset": assets, "records": records})

    def submit_job(self, job_id: str, type_: str, inputs: list[dict], max_price: int, params: dict | None = None,
                   timeout_s: int = 600) -> dict:
        return self._signing().submit_job(job_id, type_, inputs, max_price, params, timeout_s).model_dump()

    def send(self, type_: str, payload: dict, signer: Identity | None = None) -> dict:
        """Any other transaction the caller's role allows (listing, transfers, the kill switch ...)."""
        client = self.client if signer else self._signing()
        return client.send(type_, payload, signer=key_of(signer) if signer else None).model_dump()

    def wait_for_job(self, job_id: str, timeout: float = 600, on_progress=None) -> dict:
        """The job once it has ended (read as ``job`` reads it); rdx_client.WaitTimeout if not by ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            record = self.job(job_id)
            if on_progress:
                on_progress(record)
            if record["status"] not in ("running", "locked"):
                return record
            if time.monotonic() > deadline:
                raise rdx_client.WaitTimeout(f"job {job_id} still {record['status']} after {timeout:g}s", record)
            time.sleep(0.5)

    # -- keys -----------------------------------------------------------------------------------
    def create_key(self, member: str, role: str) -> dict:
        return self.request("POST", "/v1/keys", body={"member": member, "role": role})

    def revoke_key(self, key_id: str) -> None:
        self.request("DELETE", f"/v1/keys/{key_id}")

    # -- audit verification ---------------------------------------------------------------------
    def verify_audit(self, since: float | None = None, until: float | None = None) -> list[str]:
        """Recompute the audit trail against the anchors on chain; [] means it is intact.

        Records are fetched from the first anchored one on, since a record's hash depends on all
        before it; ``since``/``until`` restrict which anchors are checked.
        """
        anchors = self.request("GET", "/v1/audit/anchors")
        if since is not None or until is not None:
            anchors = [a for a in anchors if (since is None or a["time"] >= since - 60)
                       and (until is None or a["time"] <= until + 60)]
        if not anchors:
            return []
        first = min(a["first_seq"] for a in anchors)
        records, after = [], first - 1
        while True:
            page = self.audit(after_seq=after, limit=1000)
            records += page
            if len(page) < 1000 or page[-1].seq >= max(a["last_seq"] for a in anchors):
                break
            after = page[-1].seq
        return verify_against_anchors(records, anchors)
