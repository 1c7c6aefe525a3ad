"""The one implementation behind ``Client`` and ``AsyncClient``.

Every operation is written once, as a plan: a generator that yields the HTTP calls (``Call``) and
pauses (``Sleep``) it needs and returns its typed answer. ``Client`` runs plans with blocking I/O,
``AsyncClient`` awaits them; signing, nonces, retries, problem mapping and parsing are here, so
the two cannot drift apart. (httpx offers no sans-I/O layer of its own to share; this is that layer.)
"""

from __future__ import annotations

import email.utils
import functools
import json
import random
import re
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from rdx_client import models as m
from rdx_client.errors import (ApiError, MalformedAnswer, NotFound, RdxError, TransportError, Unavailable,
                               WaitTimeout, problem_error)
from rdx_client.results import open_result
from rdx_client.signing import Key, sign_request, sign_tx, tx_hash

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


_NAMED_TX = re.compile(r"/v1/tx/([0-9A-Fa-f]{64})\b")  # the hash a gateway's 503 names (``_settle``)


@dataclass(frozen=True)
class Call:
    method: str
    path: str  # "/v1/…" on the gateway, or an absolute URL (the member's own node)
    params: Any = None
    body: Any = None
    idempotent: bool = True  # may be sent again after a 503 or a broken connection
    auth: bool = True  # the member's own node API (loopback) takes no signature


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Answer:
    status: int
    headers: httpx.Headers
    data: Any
    what: str  # "GET /v1/jobs", for messages

    def next_after(self, key: str = "after") -> str | None:
        """The ``after`` of the next page, from the RFC 8288 ``Link: <…>; rel="next"`` header."""
        try:
            url = httpx.Response(self.status, headers=self.headers).links.get("next", {}).get("url")
            return httpx.URL(url).params.get(key) if url else None
        except (httpx.InvalidURL, ValueError, TypeError):
            raise MalformedAnswer(f"the answer to {self.what} has a Link header that is not a URL") from None


Plan = Generator["Call | Sleep", Any, T]


@dataclass(frozen=True)
class Retry:
    """When a call is sent again. A 429 is always waited out (the gateway refuses before doing
    anything) as long as its Retry-After is at most ``max_retry_after``; a 503 or a broken
    connection only for idempotent calls (a write is looked up by its tx hash instead); a
    connection never opened, for any call. ``attempts`` counts every try."""

    attempts: int = 4
    backoff: float = 0.25
    max_backoff: float = 8.0
    max_retry_after: float = 60.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return retry_after
        return min(self.max_backoff, self.backoff * 2**attempt) * (0.5 + random.random() / 2)  # noqa: S311


def retry_after(headers: httpx.Headers) -> float | None:
    """Retry-After as seconds (a number of seconds or an HTTP date), None if absent or unreadable."""
    value = headers.get("retry-after")
    if value is None:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def parse(model: type[M], data: Any, what: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        where = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'answer'}: {e['msg']}" for e in exc.errors()[:5])
        raise MalformedAnswer(f"the answer to {what} is not a {model.__name__}: {where}") from None


def parse_list(model: type[M], data: Any, what: str) -> list[M]:
    if not isinstance(data, list):
        raise MalformedAnswer(f"the answer to {what} is not a list of {model.__name__}")
    return [parse(model, item, what) for item in data]


class Core:
    """Configuration, the nonce cache, request building and answer handling."""

    def __init__(self, url: str, *, key: Key | None = None, api_key: str | None = None,
                 chain_id: str = "rdx-local", timeout: float = 30.0, retry: Retry | None = None,
                 max_answer_bytes: int = 16 * 1024 * 1024, write_timeout: float = 60.0):
        if key is None and api_key is None:
            raise ValueError("a key (to sign) or an API key is needed")
        self.url, self.key, self.api_key, self.chain_id = url.rstrip("/"), key, api_key, chain_id
        self.timeout, self.retry = timeout, retry or Retry()
        self.max_answer_bytes, self.write_timeout = max_answer_bytes, write_timeout
        self.nonces: dict[str, int] = {}

    def build(self, call: Call) -> httpx.Request:
        absolute = call.path.startswith(("http://", "https://"))
        url = str(httpx.URL(call.path if absolute else self.url + call.path, params=call.params))
        raw = json.dumps(call.body).encode() if call.body is not None else b""
        headers = {"accept": "application/json, application/problem+json"}
        if call.body is not None:
            headers["content-type"] = "application/json"
        if call.auth and not absolute:
            if self.api_key:
                headers["authorization"] = f"Bearer {self.api_key}"
            else:
                headers.update(sign_request(self.key, call.method, url, raw))  # type: ignore[arg-type]
        return httpx.Request(call.method, url, content=raw, headers=headers)

    def after_transport_error(self, call: Call, exc: httpx.TransportError, attempt: int) -> float:
        """The wait before sending again, or TransportError. A connection never made sent nothing."""
        never_sent = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
        if (never_sent or call.idempotent) and attempt + 1 < self.retry.attempts:
            return self.retry.delay(attempt)
        raise TransportError(f"{call.method} {call.path}: no answer from the gateway ({type(exc).__name__})") from None

    def retry_delay(self, call: Call, status: int, headers: httpx.Headers, attempt: int) -> float | None:
        if attempt + 1 >= self.retry.attempts or status not in (429, 503):
            return None
        wait = retry_after(headers)
        if status == 429:
            return wait if wait is not None and wait <= self.retry.max_retry_after else (
                None if wait is not None else self.retry.delay(attempt))
        if not call.idempotent or (wait is not None and wait > self.retry.max_retry_after):
            return None
        return self.retry.delay(attempt, wait)

    def finish(self, call: Call, status: int, headers: httpx.Headers, body: bytes) -> Answer:
        what = f"{call.method} {call.path}"
        data: Any = None
        if body:
            try:
                data = json.loads(body)
            except (ValueError, RecursionError):
                if status < 400:
                    raise MalformedAnswer(f"the answer to {what} is not JSON") from None
        if status >= 400:
            raise problem_error(status, data, retry_after(headers))
        return Answer(status, headers, data, what)

    def limit(self, what: str) -> "_Limit":
        return _Limit(self.max_answer_bytes, what)


@dataclass
class _Limit:
    """Collects an answer's body up to a bound: a hostile gateway's endless body costs no memory."""

    bound: int
    what: str
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0

    def check_declared(self, headers: httpx.Headers) -> None:
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.bound:
            raise MalformedAnswer(f"the answer to {self.what} is {declared} bytes; the limit is {self.bound}")

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.bound:
            raise MalformedAnswer(f"the answer to {self.what} is over {self.bound} bytes")
        self.chunks.append(chunk)

    def body(self) -> bytes:
        return b"".join(self.chunks)


def operation(plan: Callable[..., Plan[T]]) -> Callable[..., T]:
    """A plan as a method: ``Client`` returns its answer, ``AsyncClient`` a coroutine of it."""

    @functools.wraps(plan)
    def method(self, *args: Any, **kwargs: Any) -> Any:
        return self._drive(plan(self, *args, **kwargs))
    return method  # type: ignore[return-value]


class Operations:
    """Every operation of the gateway's API a member system uses; see README.md of this package."""

    _core: Core

    @property
    def key(self) -> Key | None:
        return self._core.key

    # -- raw ----------------------------------------------------------------------------------------
    @operation
    def request(self, method: str, path: str, *, body: Any = None, params: Any = None,
                idempotent: bool | None = None) -> Plan[Any]:
        """Any call, its JSON answer as is (None for an empty one)."""
        answer = yield Call(method.upper(), path, params, body,
                            method.upper() in ("GET", "HEAD") if idempotent is None else idempotent)
        return answer.data

    # -- transactions -------------------------------------------------------------------------------
    def _signer(self, signer: Key | None) -> Key:
        key = signer or self._core.key
        if key is None:
            raise RdxError("chain transactions need the member's signing key")
        return key

    def _tx(self, path: str, type_: str, payload: dict[str, Any], signer: Key | None = None) -> Plan[m.TxResult]:
        """Sign ``type_`` with the next nonce and send it. Nonces come from a cache, so a burst of txs
        needs no read per tx; any refusal (by the gateway, by CheckTx, or in its block, where the chain
        may or may not have spent the nonce) drops the cache, so the next tx reads the chain's nonce
        again. A write whose answer is lost (503, a broken connection) is not sent again blindly: it is
        looked up by its hash, and only a tx the chain has not seen is sent again, with the same bytes
        (the nonce makes a second copy harmless)."""
        core, key = self._core, self._signer(signer)
        try:
            nonce = core.nonces.get(key.account)
            if nonce is None:
                answer = yield Call("GET", f"/v1/accounts/{key.account}")
                nonce = parse(m.Account, answer.data, answer.what).nonce + 1  # the gateway's word: a wrong one is refused
            envelope = sign_tx(key, core.chain_id, type_, nonce, payload)
            core.nonces[key.account] = nonce + 1
            try:
                answer = yield Call("POST", path, body={"tx": envelope}, idempotent=False)
            except (Unavailable, TransportError) as lost:
                if isinstance(lost, ApiError) and lost.status != 503:
                    raise
                return (yield from self._settle(path, envelope, lost))
            return parse(m.TxResult, answer.data, answer.what)
        except BaseException:
            core.nonces.pop(key.account, None)
            raise

    def _settle(self, path: str, envelope: dict[str, Any], lost: RdxError) -> Plan[m.TxResult]:
        # A gateway with tracing on broadcasts the tx with its (unsigned) trace context, so the
        # chain's hash is not that of what was signed; its 503 names the hash to look up.
        named = _NAMED_TX.search(getattr(lost, "detail", "") or "")
        digest = named.group(1).upper() if named else tx_hash(envelope)
        deadline = time.monotonic() + self._core.write_timeout
        resent = False
        while time.monotonic() < deadline:
            try:
                answer = yield Call("GET", f"/v1/tx/{digest}")
            except NotFound:
                if resent:
                    yield Sleep(1.0)
                    continue
                resent = True
                try:
                    answer = yield Call("POST", path, body={"tx": envelope}, idempotent=False)
                    return parse(m.TxResult, answer.data, answer.what)
                except (Unavailable, TransportError):
                    continue
            except (Unavailable, TransportError):
                yield Sleep(1.0)
                continue
            status = parse(m.TxStatus, answer.data, answer.what)
            if status.status == "committed":
                if status.code != 0:
                    raise problem_error(409, {"type": "urn:rdx:problem:chain:refused", "title": "Rejected by the chain",
                                              "detail": f"code {status.code}: {status.log or ''}", "code": status.code})
                return m.TxResult(tx_hash=digest, height=status.height or 0, events=[])
            yield Sleep(0.5)
        raise WaitTimeout(f"tx {digest}: its write was lost ({lost}) and it was not found committed in time")

    @operation
    def send(self, type_: str, payload: dict[str, Any], signer: Key | None = None, path: str = "/v1/tx"
             ) -> Plan[m.TxResult]:
        """Any transaction the caller's role allows (listing, transfers, the kill switch …)."""
        return (yield from self._tx(path, type_, payload, signer))

    @operation
    def publish_listing(self, asset_id: str, *, level: str, operations: list[str], commitment: str,
                        price: dict[str, Any], metadata: dict[str, Any], min_group_size: int | None = None
                        ) -> Plan[m.TxResult]:
        """``assets.List``: the listing with its data commitment (the dataset's hash, as the member's
        own node computes it: ``datasets``)."""
        payload = {"id": asset_id, "level": level, "operations": operations, "commitment": commitment,
                   "price": price, "metadata": metadata}
        if min_group_size is not None:
            payload["min_group_size"] = min_group_size
        return (yield from self._tx("/v1/tx", "assets.List", payload))

    @operation
    def request_access(self, grant_id: str, asset: str, operations: list[str], purpose: str,
                       expires_at: int | None = None, max_runs: int = 1) -> Plan[m.TxResult]:
        payload = {"id": grant_id, "asset": asset, "operations": operations, "purpose": purpose,
                   "expires_at": expires_at or int(time.time()) + 30 * 86_400, "max_runs": max_runs}
        return (yield from self._tx("/v1/access-requests", "access.Request", payload))

    @operation
    def approve(self, grant_id: str) -> Plan[m.TxResult]:
        return (yield from self._tx(f"/v1/access-requests/{grant_id}/approve", "access.Approve", {"id": grant_id}))

    @operation
    def reject(self, grant_id: str, reason: str) -> Plan[m.TxResult]:
        return (yield from self._tx(f"/v1/access-requests/{grant_id}/reject", "access.Reject",
                                    {"id": grant_id, "reason": reason}))

    @operation
    def revoke(self, grant_id: str, reason: str) -> Plan[m.TxResult]:
        return (yield from self._tx(f"/v1/grants/{grant_id}/revoke", "access.Revoke", {"id": grant_id, "reason": reason}))

    @operation
    def submit_job(self, job_id: str, type_: str, inputs: list[dict[str, str]], max_price: int,
                   params: dict[str, Any] | None = None, timeout_s: int = 600) -> Plan[m.TxResult]:
        payload = {"id": job_id, "type": type_, "inputs": inputs, "max_price": max_price,
                   "params": params or {}, "timeout_s": timeout_s}
        return (yield from self._tx("/v1/jobs", "jobs.Submit", payload))

    @operation
    def delegate(self, label: str, public_key: str, powers: list[str], expires_at: int) -> Plan[m.TxResult]:
        """``members.Delegate``, signed by the member's own key: the key ``public_key`` (base64) may sign
        the member's txs of ``powers`` (``jobs.Submit``, ``access.Request``) as account
        ``<member>.delegate-<label>`` until ``expires_at`` (unix seconds, at most 90 days ahead)."""
        payload = {"label": label, "public_key": public_key, "powers": powers, "expires_at": expires_at}
        return (yield from self._tx("/v1/tx", "members.Delegate", payload))

    @operation
    def undelegate(self, account: str) -> Plan[m.TxResult]:
        """``members.Undelegate``, signed by the member's own key: the delegate ``account`` signs no more."""
        return (yield from self._tx("/v1/tx", "members.Undelegate", {"account": account}))

    @operation
    def tx_status(self, digest: str) -> Plan[m.TxStatus]:
        """A tx's status by hash (NotFound: the chain has no such tx of the caller's member)."""
        answer = yield Call("GET", f"/v1/tx/{digest}")
        return parse(m.TxStatus, answer.data, answer.what)

    @operation
    def wait_for_tx(self, digest: str, timeout: float = 60.0, poll: float = 0.5) -> Plan[m.TxStatus]:
        """Until the tx is committed (with any code); WaitTimeout if it is not by ``timeout``."""
        deadline, last = time.monotonic() + timeout, None
        while True:
            try:
                answer = yield Call("GET", f"/v1/tx/{digest}")
                last = parse(m.TxStatus, answer.data, answer.what)
                if last.status == "committed":
                    return last
            except NotFound:
                pass
            if time.monotonic() + poll > deadline:
                raise WaitTimeout(f"tx {digest} not committed within {timeout:g}s", last)
            yield Sleep(poll)

    # -- reads --------------------------------------------------------------------------------------
    @operation
    def account(self, account_id: str) -> Plan[m.Account]:
        answer = yield Call("GET", f"/v1/accounts/{account_id}")
        return parse(m.Account, answer.data, answer.what)

    @operation
    def search(self, q: str | None = None, *, cursor: str | None = None, limit: int = 20,
               **filters: str | list[str]) -> Plan[m.SearchResults]:
        params = [(k, v) for k, vs in filters.items() for v in (vs if isinstance(vs, list) else [vs])]
        params += [(k, str(v)) for k, v in (("q", q), ("cursor", cursor), ("limit", limit)) if v is not None]
        answer = yield Call("GET", "/v1/listings", params)
        return parse(m.SearchResults, answer.data, answer.what)

    @operation
    def listing(self, asset_id: str) -> Plan[m.Listing]:
        answer = yield Call("GET", f"/v1/listings/{asset_id}")
        return parse(m.Listing, answer.data, answer.what)

    def _page(self, model: type[M], path: str, params: dict[str, Any], key: str = "after") -> Plan[m.Page[M]]:
        answer = yield Call("GET", path, {k: v for k, v in params.items() if v is not None})
        return m.Page[model](items=parse_list(model, answer.data, answer.what), next=answer.next_after(key))

    @operation
    def access_requests(self, status: str | None = None, after: str = "", limit: int = 1000) -> Plan[m.Page[m.Grant]]:
        """The member's access requests and grants, as consumer or provider, in id order."""
        return (yield from self._page(m.Grant, "/v1/access-requests", {"status": status, "after": after, "limit": limit}))

    @operation
    def wait_for_grant(self, grant_id: str, timeout: float = 60.0, poll: float = 0.5) -> Plan[m.Grant]:
        """Until the request is decided (granted, rejected …); WaitTimeout if not by ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            last, after = None, ""
            while last is None:  # every page until it is found: a provider sees its requests among many
                page = yield from self._page(m.Grant, "/v1/access-requests", {"after": after, "limit": 1000})
                last = next((g for g in page.items if g.id == grant_id), None)
                if page.next is None:
                    break
                after = page.next
            if last is not None and last.status != "pending":
                return last
            if time.monotonic() + poll > deadline:
                raise WaitTimeout(f"access request {grant_id} not decided within {timeout:g}s", last)
            yield Sleep(poll)

    @operation
    def jobs(self, status: str | None = None, type_: str | None = None, role: str | None = None,
             after: str = "", limit: int = 50) -> Plan[m.Page[m.Job]]:
        """The member's jobs, as consumer or provider, in id order."""
        return (yield from self._page(m.Job, "/v1/jobs", {"status": status, "type": type_, "role": role,
                                                           "after": after, "limit": limit}))

    @operation
    def job(self, job_id: str) -> Plan[m.Job]:
        answer = yield Call("GET", f"/v1/jobs/{job_id}")
        return parse(m.Job, answer.data, answer.what)

    @operation
    def wait_for_job(self, job_id: str, timeout: float = 600.0, poll: float = 0.5,
                     on_progress: Callable[[m.Job], None] | None = None) -> Plan[m.Job]:
        """Until the job ends (completed, failed, aborted …); WaitTimeout if not by ``timeout``."""
        deadline, last = time.monotonic() + timeout, None
        while True:
            answer = yield Call("GET", f"/v1/jobs/{job_id}")
            last = parse(m.Job, answer.data, answer.what)
            if on_progress:
                on_progress(last)
            if last.finished:
                return last
            if time.monotonic() + poll > deadline:
                raise WaitTimeout(f"job {job_id} still {last.status} after {timeout:g}s", last)
            yield Sleep(poll)

    # -- results, from the member's own node ------------------------------------------------------
    @operation
    def datasets(self, node_url: str) -> Plan[list[m.Dataset]]:
        """The datasets on the member's own compute node, with their commitments (never rows)."""
        answer = yield Call("GET", node_url.rstrip("/") + "/datasets", auth=False)
        return parse_list(m.Dataset, answer.data, answer.what)

    @operation
    def sealed_result(self, node_url: str, job_id: str, timeout: float = 30.0) -> Plan[m.SealedResult]:
        """The member's sealed result of a job from its own node. The node releases it once it has
        seen the job completed on chain, which may trail the gateway by the relay's latency: a 409
        is waited out up to ``timeout``."""
        return (yield from self._sealed(node_url, job_id, timeout))

    def _sealed(self, node_url: str, job_id: str, timeout: float) -> Plan[m.SealedResult]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                answer = yield Call("GET", f"{node_url.rstrip('/')}/jobs/{job_id}/result", auth=False)
                return parse(m.SealedResult, answer.data, answer.what)
            except ApiError as exc:
                if exc.status != 409 or time.monotonic() > deadline:
                    raise
            yield Sleep(0.3)

    @operation
    def result(self, node_url: str, job_id: str, node_key: Key, timeout: float = 30.0) -> Plan[m.OpenedResult]:
        """The member's own result of a job, fetched from its node and opened with the node key."""
        sealed = yield from self._sealed(node_url, job_id, timeout)
        opened = open_result(node_key, sealed.envelope)
        if opened.job != job_id:
            raise MalformedAnswer(f"the node answered the result of {opened.job!r} for {job_id!r}")
        return opened

    # -- billing ------------------------------------------------------------------------------------
    @operation
    def quote(self, assets: list[str], records: int = 0) -> Plan[m.Quote]:
        """What a job on ``assets`` costs now; ``max_price`` is the least the chain accepts."""
        answer = yield Call("GET", "/v1/billing/quote", {"asset": assets, "records": records})
        return parse(m.Quote, answer.data, answer.what)

    def _books(self, kind: str, member: str, since: float | None, until: float | None) -> Plan[Any]:
        params = {k: v for k, v in (("since", since), ("until", until)) if v is not None}
        answer = yield Call("GET", f"/v1/billing/{kind}/{member}", params)
        return answer

    @operation
    def statement(self, member: str, since: float | None = None, until: float | None = None) -> Plan[m.Statement]:
        answer = yield from self._books("statements", member, since, until)
        return parse(m.Statement, answer.data, answer.what)

    @operation
    def invoice(self, member: str, since: float | None = None, until: float | None = None) -> Plan[m.Invoice]:
        answer = yield from self._books("invoices", member, since, until)
        return parse(m.Invoice, answer.data, answer.what)

    @operation
    def usage(self, member: str, since: float | None = None, until: float | None = None) -> Plan[m.Usage]:
        answer = yield from self._books("usage", member, since, until)
        return parse(m.Usage, answer.data, answer.what)

    @operation
    def balance(self, member: str) -> Plan[m.Balance]:
        """The member's balance as billing's ledger has it now (its statement's closing balance).
        rdx.sdk's ``Gateway.balance`` proves it from the chain instead."""
        answer = yield from self._books("statements", member, None, None)
        st = parse(m.Statement, answer.data, answer.what)
        return m.Balance(member=member, balance=st.closing_balance, as_of=st.until)

    # -- API keys -----------------------------------------------------------------------------------
    @operation
    def create_key(self, member: str, role: str) -> Plan[m.NewApiKey]:
        answer = yield Call("POST", "/v1/keys", body={"member": member, "role": role}, idempotent=False)
        return parse(m.NewApiKey, answer.data, answer.what)

    @operation
    def api_keys(self, after: str = "", limit: int = 1000) -> Plan[m.Page[m.ApiKey]]:
        return (yield from self._page(m.ApiKey, "/v1/keys", {"after": after, "limit": limit}))

    @operation
    def revoke_key(self, key_id: str) -> Plan[None]:
        yield Call("DELETE", f"/v1/keys/{key_id}")
        return None

    # -- webhooks -----------------------------------------------------------------------------------
    @operation
    def register_webhook(self, url: str, events: list[str]) -> Plan[m.NewWebhook]:
        """An HTTPS endpoint for the member's ``access``, ``grants``, ``jobs``, ``statements`` events;
        the answer's ``secret`` (shown once) verifies the deliveries' Standard Webhooks signatures."""
        answer = yield Call("POST", "/v1/webhooks", body={"url": url, "events": events}, idempotent=False)
        return parse(m.NewWebhook, answer.data, answer.what)

    @operation
    def webhooks(self, after: str = "", limit: int = 100) -> Plan[m.Page[m.Webhook]]:
        return (yield from self._page(m.Webhook, "/v1/webhooks", {"after": after, "limit": limit}))

    @operation
    def delete_webhook(self, hook_id: str) -> Plan[None]:
        yield Call("DELETE", f"/v1/webhooks/{hook_id}")
        return None

    @operation
    def deliveries(self, hook_id: str, status: str | None = None, after: str = "", limit: int = 100
                   ) -> Plan[m.Page[m.Delivery]]:
        return (yield from self._page(m.Delivery, f"/v1/webhooks/{hook_id}/deliveries",
                                      {"status": status, "after": after, "limit": limit}))

    @operation
    def replay_delivery(self, hook_id: str, delivery_id: str) -> Plan[m.Replayed]:
        answer = yield Call("POST", f"/v1/webhooks/{hook_id}/deliveries/{delivery_id}/replay", idempotent=False)
        return parse(m.Replayed, answer.data, answer.what)

    @operation
    def replay_webhook(self, hook_id: str, since: float) -> Plan[m.Replayed]:
        """Queue again every delivery of the webhook since ``since`` (unix seconds)."""
        answer = yield Call("POST", f"/v1/webhooks/{hook_id}/replay", {"since": since}, idempotent=False)
        return parse(m.Replayed, answer.data, answer.what)

