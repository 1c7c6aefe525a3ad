"""The gateway's HTTP surface as a hostile member or outsider sends to it, in-process: the real app
(authentication, limits, problems, audit) over FastAPI's TestClient, its stores on SQLite files, and
the chain a dict of committed state behind the gateway's own ChainView (no proof: no trust anchor)."""

from __future__ import annotations

import asyncio
import base64
import datetime
import secrets
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from services.common import httpsig
from services.common.identity import Identity
from services.gateway.app import Gateway
from services.gateway.audit import AuditLog
from services.gateway.auth import Authenticator, LocalReplayCache
from services.gateway.chainview import ChainView
from services.gateway.db import SqliteDatabase
from services.gateway.keys import KeyStore
from services.gateway.limits import LocalRateLimiter
from services.gateway.settings import GatewaySettings

pytestmark = pytest.mark.unit

BANK, MALLORY = Identity.generate("bank"), Identity.generate("mallory")
LIMIT = 4096


class CommittedState:
    """The chain node's answers to ABCI queries: one key's value, or every key under a prefix."""

    def __init__(self, state: dict[str, dict]):
        self.state = state
        self.asked: list[str] = []

    async def query(self, path: str):
        self.asked.append(path)
        key = path.lstrip("/")
        if key.endswith("/"):
            return {k: v for k, v in self.state.items() if k.startswith(key)}
        return self.state.get(key)


class Site:
    def __init__(self, tmp: Path):
        self.chain = CommittedState({
            "members/bank": {"id": "bank", "name": "Bank", "roles": ["consumer"], "status": "active"},
            "members/mallory": {"id": "mallory", "name": "Mallory", "roles": ["consumer"], "status": "active"},
            "accounts/bank": {"id": "bank", "member": "bank", "kind": "member", "public_key": BANK.public_key,
                              "nonce": 0},
            "accounts/mallory": {"id": "mallory", "member": "mallory", "kind": "member",
                                 "public_key": MALLORY.public_key, "nonce": 0},
            "jobs/job-1": {"id": "job-1", "type": "psi", "consumer": "bank", "participants": ["bank"],
                           "status": "running"}})
        gw = Gateway(GatewaySettings(state_root=tmp, max_body_bytes=LIMIT))

        async def stores() -> str:
            gw.keys = await KeyStore.open(SqliteDatabase(tmp / "keys.sqlite"))
            gw.audit = await AuditLog.open(SqliteDatabase(tmp / "audit.sqlite"))
            return (await gw.keys.create("bank", "member_admin"))[1]

        self.token = asyncio.run(stores())
        gw.chain = self.chain
        gw.view = ChainView(self.chain, reader=object())  # any reader: no warning; replaced just below
        gw.view.reader = None  # the node's word, as without a trust anchor
        gw.limiter = LocalRateLimiter(1000.0, 1000, 10**6)
        gw.authenticator = Authenticator(gw.keys, gw.view, 300, None, LocalReplayCache(300))
        gw.http = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(200, json={})))
        self.gw = gw
        self.client = TestClient(gw.svc.app, raise_server_exceptions=False)

    def audited(self) -> list:
        return asyncio.run(self.gw.audit.query(after_seq=0, limit=1000))


@pytest.fixture
def site(tmp_path):
    return Site(tmp_path)


def is_problem(answer: httpx.Response, status: int) -> dict:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    body = answer.json()
    assert body["status"] == status and body["type"].startswith("urn:rdx:problem:")
    return body


def chunks(total: int, size: int = 1024):
    """A body sent in chunks without Content-Length (Transfer-Encoding: chunked)."""
    for sent in range(0, total, size):
        yield b"x" * min(size, total - sent)


async def streamed(app, path: str, pieces: int, piece: bytes = b"x" * 1024) -> tuple[int, int]:
    """POSTs ``pieces`` body messages to the ASGI app as a server does for a chunked body; returns
    the answer's status and how many pieces the app read."""
    read, sent = 0, []

    async def receive():
        nonlocal read
        if read == pieces:
            return {"type": "http.disconnect"}
        read += 1
        return {"type": "http.request", "body": piece, "more_body": read < pieces}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"),
                         (b"transfer-encoding", b"chunked")], "client": ("127.0.0.1", 1), "server": ("testserver", 80)}
    await app(scope, receive, send)
    return next(m["status"] for m in sent if m["type"] == "http.response.start"), read


def test_a_chunked_body_past_the_limit_is_a_413_not_read_whole(site):
    """The limit held only for a declared Content-Length: a chunked body of any size was read whole
    into memory (and then answered 422), before authentication, by anyone."""
    status, read = asyncio.run(streamed(site.gw.svc.app, "/v1/jobs", pieces=1000))
    assert status == 413 and read == LIMIT // 1024 + 1  # reading stopped at the piece past the limit
    answer = site.client.post("/v1/jobs", content=chunks(50 * LIMIT), headers={"content-type": "application/json"})
    assert "content-length" not in answer.request.headers
    assert is_problem(answer, 413)["detail"] == f"request bodies are limited to {LIMIT} bytes"
    # the same for a signed request, whose body authentication reads, and for a body on a GET
    signed = httpsig.sign(BANK, "POST", "http://testserver/v1/jobs", b"x" * (2 * LIMIT))
    is_problem(site.client.post("/v1/jobs", content=chunks(2 * LIMIT), headers=signed), 413)
    is_problem(site.client.request("GET", "/v1/jobs", content=chunks(2 * LIMIT), headers=signed), 413)
    # and answered like a declared one, audited; a body within the limit is still read
    is_problem(site.client.post("/v1/jobs", content=b"x" * (LIMIT + 1)), 413)
    assert [r.status for r in site.audited()] == [413] * 5
    ok = site.client.request("GET", "/v1/jobs", headers={"Authorization": f"Bearer {site.token}"}, content=chunks(LIMIT))
    assert ok.status_code == 200 and [j["id"] for j in ok.json()] == ["job-1"]


def test_two_authorization_headers_are_refused_whichever_comes_first(site):
    """The gateway acted on the first of two Authorization lines: a request carrying a member's key
    and junk was that member's call or a 401 depending on their order."""
    mine = f"Bearer {site.token}"
    for lines in ((mine, "Bearer junk"), ("Bearer junk", mine), (mine, mine)):
        answer = site.client.get("/v1/jobs", headers=[("Authorization", line) for line in lines])
        assert is_problem(answer, 400)["title"] == "Ambiguous credentials"
    assert site.client.get("/v1/jobs", headers={"Authorization": mine}).status_code == 200


def signed_with(who: Identity, params: str, url: str = "http://testserver/v1/jobs") -> dict[str, str]:
    """A GET signed by ``who`` over a Signature-Input whose parameters are written by hand (RFC 9421
    section 2.5: the signature base ends with the @signature-params line as sent)."""
    digest = httpsig.sign(who, "GET", url, b"")["Content-Digest"]
    created = int(datetime.datetime.now(datetime.timezone.utc).timestamp())
    inner = f'("@method" "@target-uri" "content-digest");created={created};{params};nonce="{secrets.token_hex(8)}"'
    base = f'"@method": GET\n"@target-uri": {url}\n"content-digest": {digest}\n"@signature-params": {inner}'
    sig = Ed25519PrivateKey.from_private_bytes(bytes(who.signing_key)).sign(base.encode())
    return {"Content-Digest": digest, "Signature-Input": f"sig={inner}", "Signature": f"sig=:{base64.b64encode(sig).decode()}:"}


@pytest.mark.parametrize("keyid", ["a" * 100_000, "../members/bank", "Bank", "bank/"])
def test_a_keyid_that_names_no_account_is_refused_before_the_chain_is_asked(site, keyid):
    """It was sent to the chain node as part of a state path, and echoed whole (100 kB) in the answer."""
    answer = site.client.get("/v1/jobs", headers=signed_with(BANK, f'keyid="{keyid}"'))
    body = is_problem(answer, 401)
    assert body["title"] == "Unknown key" and len(answer.content) < 1000
    assert not [p for p in site.chain.asked if p.startswith("/accounts/")]


@pytest.mark.parametrize("signature_input", ['sig=("@method");keyid=5', "sig=(", 'a=();keyid="bank", b=();keyid="bank"'])
def test_a_signature_input_that_is_not_one_signature_with_a_keyid_is_refused(site, signature_input):
    answer = site.client.get("/v1/jobs", headers={"Signature-Input": signature_input, "Signature": "sig=:AAAA:"})
    assert is_problem(answer, 401)["title"] in ("Invalid signature", "Unknown key")
    assert site.chain.asked == []



@pytest.mark.parametrize("given", ["\x01abc\x7f", "\xff\xfe", "a b", "<script>", "x" * 63 + "\x00"])
def test_a_request_id_that_is_not_a_plain_token_is_replaced(site, given):
    """It was taken as sent (cut to 64 characters): control bytes and markup went back in the
    X-Request-Id header, the problem's instance and the audit trail."""
    answer = site.client.get("/v1/jobs", headers=[(b"x-request-id", given.encode("latin-1"))])
    instance = is_problem(answer, 401)["instance"]
    assert instance == answer.headers["x-request-id"] != given[:64] and len(instance) == 32
    assert site.audited()[-1].request_id == instance


def test_a_plain_request_id_is_kept(site):
    answer = site.client.get("/v1/jobs", headers={"x-request-id": "kafka-call-7:a.B_c", "Authorization": f"Bearer {site.token}"})
    assert answer.status_code == 200 and answer.headers["x-request-id"] == "kafka-call-7:a.B_c"
    assert site.audited()[-1].request_id == "kafka-call-7:a.B_c"
