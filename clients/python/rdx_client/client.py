"""``Client`` (blocking) and ``AsyncClient`` (asyncio): the same operations (rdx_client._core), run
with httpx's sync or async transport. Only sending one call, with its retries, is written twice."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from rdx_client._core import Answer, Call, Core, Operations, Plan, Sleep, T
from rdx_client.errors import MalformedAnswer, RdxError


class Client(Operations):
    """The gateway for a member system. Options (rdx_client._core.Core): ``key`` signs transactions
    and requests (the member's own key acts as its ``member_admin``); ``api_key`` authenticates
    read-only people instead (a key can still be given to sign transactions); ``chain_id``;
    ``timeout``; ``retry`` (when a call is sent again); ``max_answer_bytes``; ``write_timeout``
    (how long a write whose answer was lost is looked up)."""

    def __init__(self, url: str, *, http: httpx.Client | None = None, **options: Any):
        self._core = Core(url, **options)
        self.http = http or httpx.Client(timeout=self._core.timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _drive(self, plan: Plan[T]) -> T:
        value: Any = None
        error: RdxError | None = None
        while True:
            try:
                step = plan.throw(error) if error else plan.send(value)
            except StopIteration as done:
                return done.value
            value = error = None
            try:
                if isinstance(step, Sleep):
                    time.sleep(step.seconds)
                else:
                    value = self._exchange(step)
            except RdxError as exc:
                error = exc

    def _exchange(self, call: Call) -> Answer:
        core = self._core
        attempt = 0
        while True:
            request = core.build(call)  # signed again each time: a signature is accepted once
            limit = core.limit(f"{call.method} {call.path}")
            try:
                with self.http.stream(request.method, request.url, content=request.content,
                                      headers=request.headers) as resp:
                    limit.check_declared(resp.headers)
                    for chunk in resp.iter_bytes():
                        limit.add(chunk)
            except httpx.DecodingError:
                raise MalformedAnswer(f"the answer to {call.method} {call.path} does not decode") from None
            except httpx.TransportError as exc:
                time.sleep(core.after_transport_error(call, exc, attempt))
                attempt += 1
                continue
            delay = core.retry_delay(call, resp.status_code, resp.headers, attempt)
            if delay is None:
                return core.finish(call, resp.status_code, resp.headers, limit.body())
            time.sleep(delay)
            attempt += 1


class AsyncClient(Operations):
    """``Client`` for asyncio: every operation is awaited. Transactions of one signer are best sent
    one after another: two at once may take the same nonce, and the chain refuses the second."""

    def __init__(self, url: str, *, http: httpx.AsyncClient | None = None, **options: Any):
        self._core = Core(url, **options)
        self.http = http or httpx.AsyncClient(timeout=self._core.timeout)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _drive(self, plan: Plan[T]) -> T:
        value: Any = None
        error: RdxError | None = None
        while True:
            try:
                step = plan.throw(error) if error else plan.send(value)
            except StopIteration as done:
                return done.value
            value = error = None
            try:
                if isinstance(step, Sleep):
                    await asyncio.sleep(step.seconds)
                else:
                    value = await self._exchange(step)
            except RdxError as exc:
                error = exc

    async def _exchange(self, call: Call) -> Answer:
        core = self._core
        attempt = 0
        while True:
            request = core.build(call)
            limit = core.limit(f"{call.method} {call.path}")
            try:
                async with self.http.stream(request.method, request.url, content=request.content,
                                            headers=request.headers) as resp:
                    limit.check_declared(resp.headers)
                    async for chunk in resp.aiter_bytes():
                        limit.add(chunk)
            except httpx.DecodingError:
                raise MalformedAnswer(f"the answer to {call.method} {call.path} does not decode") from None
            except httpx.TransportError as exc:
                await asyncio.sleep(core.after_transport_error(call, exc, attempt))
                attempt += 1
                continue
            delay = core.retry_delay(call, resp.status_code, resp.headers, attempt)
            if delay is None:
                return core.finish(call, resp.status_code, resp.headers, limit.body())
            await asyncio.sleep(delay)
            attempt += 1
