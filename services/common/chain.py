"""A client of the rdx chain for services, the SDK and tests: build, sign and broadcast a tx
through CometBFT's RPC, wait for its commit, and read state through ABCI queries."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx

from services.common.identity import Identity
from services.common.tx import Code, Tx


class ChainError(RuntimeError):
    """The node could not be reached or answered with an RPC error."""


class HeightNotMade(ChainError):
    """The node refused a height it has not made yet (CometBFT: "height H must be less than or equal
    to the current blockchain height L"): ask again after a block, unlike any other error."""


NOT_MADE = "must be less than or equal to the current blockchain height"


class TxRejected(Exception):
    def __init__(self, code: int, log: str, tx_hash: str, height: int | None = None):
        super().__init__(f"tx {tx_hash[:12]} rejected with code {code}: {log}")
        self.code, self.log, self.tx_hash, self.height = code, log, tx_hash, height


@dataclass(frozen=True)
class Committed:
    tx_hash: str
    height: int
    events: list[dict[str, Any]] = field(default_factory=list)


class ChainClient:
    def __init__(self, rpc_url: str, chain_id: str, *, timeout: float = 10.0):
        self.rpc_url, self.chain_id = rpc_url.rstrip("/"), chain_id
        self._http = httpx.AsyncClient(base_url=self.rpc_url, timeout=timeout)
        self._nonces: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "ChainClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def rpc(self, method: str, **params: Any) -> dict[str, Any]:
        try:
            resp = await self._http.post("/", json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        except httpx.HTTPError as exc:
            raise ChainError(f"CometBFT RPC {self.rpc_url} unreachable: {type(exc).__name__}") from None
        body = resp.json()
        if "error" in body:
            message = f"{method}: {body['error'].get('data') or body['error'].get('message')}"
            raise HeightNotMade(message) if NOT_MADE in message else ChainError(message)
        return body["result"]

    # -- reads ----------------------------------------------------------------------------------
    async def query(self, path: str) -> Any | None:
        """State at ``path`` (e.g. ``/members/bank-a``) as JSON, or None if there is none.

        A path ending in ``/`` lists that prefix: the chain answers it a page at a time and this
        follows the pages, returning ``{key: value}`` (empty when nothing is there)."""
        if path.endswith("/"):
            return await self.query_prefix(path)
        return await self._query(path)

    async def query_prefix(self, prefix: str, *, page_size: int = 500, max_items: int | None = None) -> dict[str, Any]:
        """``max_items``: stop once that many are read (a node that answers page after page cannot
        keep the caller reading)."""
        items: dict[str, Any] = {}
        after = None
        while True:
            params = {"limit": page_size, **({"after": after} if after else {})}
            page = await self._query(f"{prefix}?{urlencode(params)}")
            items.update(page["items"])
            after = page["next"]
            if after is None or (max_items is not None and len(items) >= max_items):
                return items

    async def _query(self, path: str) -> Any | None:
        result = (await self.rpc("abci_query", path=path))["response"]
        if result.get("code", 0) == Code.NOT_FOUND:
            return None
        if result.get("code", 0) != 0:
            raise ChainError(f"query {path}: {result.get('log')}")
        return json.loads(base64.b64decode(result["value"]))

    async def height(self) -> int:
        return int((await self.rpc("status"))["sync_info"]["latest_block_height"])

    async def next_nonce(self, account: str) -> int:
        acc = await self.query(f"/accounts/{account}")
        return (acc["nonce"] if acc else 0) + 1

    # -- writes ---------------------------------------------------------------------------------
    async def submit(self, identity: Identity, type_: str, payload: dict[str, Any], *, wait: bool = True,
                     timeout: float = 30.0) -> Committed:
        """Sign and broadcast; with ``wait``, return once committed (raise TxRejected if it failed)."""
        lock = self._locks.setdefault(identity.account, asyncio.Lock())
        async with lock:  # nonces of one signer are handed out in order
            cached = self._nonces.get(identity.account)
            nonce = cached or await self.next_nonce(identity.account)
            tx = Tx.build(identity, self.chain_id, type_, nonce, payload)
            checked = await self.broadcast(tx.encode())
            if checked["code"] == Code.BAD_NONCE and cached:
                # The count went stale: a tx it counted left the mempool without a block (a recheck
                # after another party's tx evicted it), or another process signed with this key.
                # Read the chain's and sign once more, rather than fail a tx that was never wrong. A
                # node that lied about the first gets the same payload twice: every tx signed here is
                # refused a second time by its content (a job's attestation, release or end; a
                # proposal's id or a seat's approval), so no second effect follows.
                nonce = await self.next_nonce(identity.account)
                tx = Tx.build(identity, self.chain_id, type_, nonce, payload)
                checked = await self.broadcast(tx.encode())
            if checked["code"] != Code.OK:
                self._nonces.pop(identity.account, None)  # re-read next time
                raise TxRejected(checked["code"], checked.get("log", ""), tx.hash)
            self._nonces[identity.account] = nonce + 1
        if not wait:
            return Committed(tx.hash, 0)
        return await self.wait_for(tx.hash, timeout)

    async def broadcast(self, raw: bytes) -> dict[str, Any]:
        """broadcast_tx_sync: the CheckTx result (code, log, hash)."""
        return await self.rpc("broadcast_tx_sync", tx=base64.b64encode(raw).decode())

    async def wait_for(self, tx_hash: str, timeout: float = 30.0) -> Committed:
        deadline = time.monotonic() + timeout
        # A tx just checked is usually committed within a block or two (`rdx up`: ~0.1-0.2 s), so the
        # first looks come soon and the later ones every 0.1 s: a fixed 0.1 s added ~0.05 s on
        # average to every sequential step of a job (measured: issue 23's latency bench).
        pause = 0.0125
        while True:
            try:
                result = await self.rpc("tx", hash=base64.b64encode(bytes.fromhex(tx_hash)).decode())
            except ChainError as exc:
                if "not found" not in str(exc):
                    raise
                if time.monotonic() > deadline:
                    raise ChainError(f"tx {tx_hash[:12]} not committed within {timeout}s") from None
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.1)
                continue
            tx_result, height = result["tx_result"], int(result["height"])
            if tx_result.get("code", 0) != Code.OK:
                raise TxRejected(tx_result["code"], tx_result.get("log", ""), tx_hash, height)
            return Committed(tx_hash, height, tx_result.get("events", []))
