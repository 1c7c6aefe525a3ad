"""rdx_client against a gateway that misbehaves: a real HTTP server on loopback that this test
scripts (rate limits with Retry-After, 503s, lost write answers, wrong types, endless bodies).
The client under test is the real one; only the server's answers are chosen here."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import rdx_client
from rdx.components import free_port
from rdx_client import Key, Retry, canonical, tx_hash


class Scripted:
    """Answers each request with the next answer scripted for its path (the last one repeats)."""

    def __init__(self):
        self.script: dict[str, list] = {}
        self.seen: list[tuple[str, str, bytes, float]] = []
        self.headers: list[dict[str, str]] = []  # of each request in seen, in order
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def handle_one(self):
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                path = self.path.split("?")[0]
                server.seen.append((self.command, self.path, body, time.monotonic()))
                server.headers.append({k.lower(): v for k, v in self.headers.items()})
                answers = server.answers(f"{self.command} {path}")
                answer = answers.pop(0) if len(answers) > 1 else answers[0]
                if callable(answer):
                    return answer(self)
                status, headers, payload = answer
                raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                for k, v in {"content-type": "application/json", "content-length": str(len(raw)), **headers}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = do_DELETE = handle_one

        self.httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def answers(self, route: str) -> list:
        """The route's script; a route ending in ``*`` scripts every path it begins."""
        found = self.script.get(route) or next((a for r, a in self.script.items()
                                                if r.endswith("*") and route.startswith(r[:-1])), None)
        return found or [(404, {}, {"title": "Not found"})]

    def on(self, route: str, *answers) -> None:
        self.script[route] = list(answers)

    def calls(self, route: str) -> list:
        method, path = route.split(" ", 1)
        return [s for s in self.seen if s[0] == method and s[1].split("?")[0] == path]


@pytest.fixture
def gw():
    s = Scripted()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def client(gw, **options) -> rdx_client.Client:
    return rdx_client.Client(gw.url, key=Key.generate("bank-a"), retry=Retry(backoff=0.05), **options)


ACCOUNT = {"id": "bank-a", "member": "bank-a", "kind": "member", "public_key": "x", "nonce": 4}
JOB = {"id": "j1", "type": "psi", "consumer": "bank-a", "participants": ["bank-a", "telco"], "status": "running"}


def test_a_429_is_waited_out_for_its_retry_after_then_the_call_succeeds(gw):
    gw.on("GET /v1/jobs/j1", (429, {"retry-after": "1"}, {"title": "Too many requests"}),
          (429, {"retry-after": "1"}, {"title": "Too many requests"}), (200, {}, JOB))
    with client(gw) as c:
        started = time.monotonic()
        assert c.job("j1").status == "running"
    times = [t for *_, t in gw.calls("GET /v1/jobs/j1")]
    assert len(times) == 3 and times[1] - times[0] >= 0.95 and times[2] - times[1] >= 0.95
    assert time.monotonic() - started >= 1.9


def test_a_429_asking_longer_than_the_client_waits_is_raised_with_its_retry_after(gw):
    gw.on("GET /v1/jobs/j1", (429, {"retry-after": "3600"}, {"title": "Too many requests", "type": "urn:rdx:problem:too-many-requests"}))
    with client(gw) as c, pytest.raises(rdx_client.RateLimited) as limited:
        c.job("j1")
    assert limited.value.retry_after == 3600 and limited.value.type == "urn:rdx:problem:too-many-requests"
    assert len(gw.calls("GET /v1/jobs/j1")) == 1


def test_a_503_is_retried_for_a_read_but_never_for_a_write_sent_blindly(gw):
    gw.on("GET /v1/jobs/j1", (503, {"retry-after": "0"}, {"title": "Chain unavailable"}), (200, {}, JOB))
    gw.on("POST /v1/keys", (503, {}, {"title": "Service unavailable"}))
    with client(gw) as c:
        assert c.job("j1").id == "j1"
        with pytest.raises(rdx_client.Unavailable):
            c.create_key("bank-a", "analyst")
    assert len(gw.calls("GET /v1/jobs/j1")) == 2 and len(gw.calls("POST /v1/keys")) == 1


def test_a_write_whose_answer_is_lost_is_looked_up_by_hash_not_sent_again(gw):
    def committed(handler):
        tx_hash_ = handler.path.rsplit("/", 1)[1]
        body = json.dumps({"tx_hash": tx_hash_, "status": "committed", "height": 9, "code": 0, "log": ""}).encode()
        handler.send_response(200)
        handler.send_header("content-length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    gw.on("GET /v1/accounts/bank-a", (200, {}, ACCOUNT))
    gw.on("POST /v1/access-requests", (503, {}, {"title": "Chain unavailable"}))
    gw.on("GET /v1/tx/*", committed)
    with client(gw) as c:
        done = c.request_access("g1", "telco.x", ["psi"], "p", expires_at=1_900_000_000)
        posts = gw.calls("POST /v1/access-requests")
        assert len(posts) == 1 and done.height == 9
        envelope = json.loads(posts[0][2])["tx"]
        assert done.tx_hash == tx_hash(envelope) and envelope["nonce"] == 5
        # the nonce was spent on chain: the next tx takes the one after, without reading the account
        gw.on("POST /v1/access-requests", (200, {}, {"tx_hash": "A" * 64, "height": 10, "events": []}))
        c.request_access("g2", "telco.x", ["psi"], "p")
        assert json.loads(gw.calls("POST /v1/access-requests")[-1][2])["tx"]["nonce"] == 6
        assert len(gw.calls("GET /v1/accounts/bank-a")) == 1


def test_a_lost_write_is_looked_up_by_the_hash_the_gateway_names(gw):
    traced = "C" * 64  # a tracing gateway broadcast other bytes (the signed tx with its trace context)

    def committed(handler):
        found = handler.path.rsplit("/", 1)[1] == traced
        body = json.dumps({"tx_hash": traced, "status": "committed", "height": 4, "code": 0, "log": ""} if found
                          else {"title": "Not found"}).encode()
        handler.send_response(200 if found else 404)
        handler.send_header("content-length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    gw.on("GET /v1/accounts/bank-a", (200, {}, ACCOUNT))
    gw.on("POST /v1/jobs", (503, {}, {"title": "Chain unavailable", "detail": "the chain did not answer in time; the "
                                      f"tx may still commit: GET /v1/tx/{traced} tells"}))
    gw.on("GET /v1/tx/*", committed)
    with client(gw) as c:
        done = c.submit_job("j8", "psi", [{"asset": "a", "grant": "g"}], 10)
    assert (done.tx_hash, done.height) == (traced, 4) and len(gw.calls("POST /v1/jobs")) == 1


def test_a_lost_write_the_chain_never_saw_is_sent_again_with_the_same_bytes(gw):
    gw.on("GET /v1/accounts/bank-a", (200, {}, ACCOUNT))
    gw.on("POST /v1/jobs", (503, {}, {"title": "Chain unavailable"}), (200, {}, {"tx_hash": "B" * 64, "height": 3, "events": []}))
    gw.on("GET /v1/tx/*", (404, {}, {"title": "Not found"}))
    with client(gw) as c:
        assert c.submit_job("j9", "psi", [{"asset": "a", "grant": "g"}], 10).height == 3
    first, second = (p[2] for p in gw.calls("POST /v1/jobs"))
    assert first == second  # the same signed tx: its nonce makes a second copy harmless


def test_a_refused_tx_drops_the_cached_nonce(gw):
    gw.on("GET /v1/accounts/bank-a", (200, {}, ACCOUNT))
    gw.on("POST /v1/access-requests",
          (200, {}, {"tx_hash": "A" * 64, "height": 1, "events": []}),
          (409, {}, {"type": "urn:rdx:problem:chain:conflict", "title": "Rejected by the chain", "detail": "code 12: taken",
                     "code": 12}),
          (200, {}, {"tx_hash": "C" * 64, "height": 2, "events": []}))
    with client(gw) as c:
        c.request_access("g1", "a", ["psi"], "p")
        with pytest.raises(rdx_client.ChainRefused) as refused:
            c.request_access("g1", "a", ["psi"], "p")
        assert refused.value.code == 12 and refused.value.status == 409
        c.request_access("g2", "a", ["psi"], "p")
    assert len(gw.calls("GET /v1/accounts/bank-a")) == 2  # read again after the refusal


@pytest.mark.parametrize("answer, says", [
    ({**JOB, "participants": "bank-a"}, "participants"),
    ({**JOB, "ended_height": "12"}, "ended_height"),
    ({k: v for k, v in JOB.items() if k != "status"}, "status"),
    ([JOB], "answer"),
    ("job", "answer"),
])
def test_answers_of_the_wrong_shape_are_refused_saying_where(gw, answer, says):
    gw.on("GET /v1/jobs/j1", (200, {}, answer))
    with client(gw) as c, pytest.raises(rdx_client.MalformedAnswer) as bad:
        c.job("j1")
    assert "GET /v1/jobs/j1" in str(bad.value) and says in str(bad.value) and "Job" in str(bad.value)


def test_not_json_huge_and_endless_answers_are_refused_without_holding_them(gw):
    def endless(handler):
        handler.send_response(200)
        handler.send_header("transfer-encoding", "chunked")
        handler.end_headers()
        chunk = b"[" * 65536
        try:
            for _ in range(10_000):  # 640 MB if the client kept reading
                handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except (BrokenPipeError, ConnectionResetError):
            pass

    gw.on("GET /v1/jobs/a", (200, {}, b"<html>not json</html>"))
    gw.on("GET /v1/jobs/b", (200, {"content-length": str(10**9)}, b"{}"))
    gw.on("GET /v1/jobs/c", endless)
    with client(gw, max_answer_bytes=1 << 20) as c:
        with pytest.raises(rdx_client.MalformedAnswer, match="not JSON"):
            c.job("a")
        with pytest.raises(rdx_client.MalformedAnswer, match="limit is 1048576"):
            c.job("b")
        started = time.monotonic()
        with pytest.raises(rdx_client.MalformedAnswer, match="over 1048576 bytes"):
            c.job("c")
        assert time.monotonic() - started < 10


def test_hostile_problem_bodies_give_a_plain_error(gw):
    gw.on("GET /v1/jobs", (200, {"link": '<http://[::1>; rel="next"'}, [JOB]))
    gw.on("GET /v1/jobs/c", (200, {"content-encoding": "gzip"}, b"not gzip at all"))
    gw.on("GET /v1/jobs/a", (403, {}, {"title": 5, "detail": ["x"], "code": "12", "errors": "no", "type": None}))
    gw.on("GET /v1/jobs/b", (500, {}, b"\xff\xfe garbage"))
    with client(gw) as c:
        with pytest.raises(rdx_client.Forbidden) as refused:
            c.job("a")
        assert (refused.value.status, refused.value.title, refused.value.code, refused.value.errors) == (403, "", None, [])
        with pytest.raises(rdx_client.ApiError) as crashed:
            c.job("b")
        assert crashed.value.status == 500
        with pytest.raises(rdx_client.MalformedAnswer, match="Link"):
            c.jobs()
        with pytest.raises(rdx_client.MalformedAnswer, match="does not decode"):
            c.job("c")


def test_wait_helpers_raise_on_timeout_with_the_last_state(gw):
    gw.on("GET /v1/jobs/j1", (200, {}, JOB))
    gw.on("GET /v1/tx/" + "D" * 64, (200, {}, {"tx_hash": "D" * 64, "status": "pending"}))
    with client(gw) as c:
        started = time.monotonic()
        with pytest.raises(rdx_client.WaitTimeout) as late:
            c.wait_for_job("j1", timeout=1.0, poll=0.2)
        assert late.value.last.status == "running" and 0.8 <= time.monotonic() - started < 5
        with pytest.raises(TimeoutError):
            c.wait_for_tx("D" * 64, timeout=0.5, poll=0.1)


def test_an_unreachable_gateway_is_a_transport_error_after_the_retries():
    dead = rdx_client.Client(f"http://127.0.0.1:{free_port()}", api_key="k", retry=Retry(attempts=3, backoff=0.01))
    with dead, pytest.raises(rdx_client.TransportError):
        dead.job("j1")


def test_the_async_client_runs_the_same_operations(gw):
    gw.on("GET /v1/jobs/j1", (429, {"retry-after": "1"}, {"title": "Too many requests"}), (200, {}, {**JOB, "status": "completed"}))
    gw.on("GET /v1/jobs", (200, {"link": '</v1/jobs?after=j1&limit=1>; rel="next"'}, [JOB]))

    async def run():
        async with rdx_client.AsyncClient(gw.url, key=Key.generate("bank-a")) as c:
            started = time.monotonic()
            job = await c.wait_for_job("j1", timeout=10)
            page = await c.jobs(limit=1)
            return job, page, time.monotonic() - started

    job, page, took = asyncio.run(run())
    assert job.status == "completed" and took >= 0.95
    assert [j.id for j in page.items] == ["j1"] and page.next == "j1"


def test_values_a_tx_cannot_hold_are_refused_before_anything_is_sent(gw):
    gw.on("GET /v1/accounts/bank-a", (200, {}, ACCOUNT))
    with client(gw) as c, pytest.raises(rdx_client.EncodingError):
        c.send("assets.List", {"id": "a", "price": {"amount": 1.5}})
    assert gw.calls("POST /v1/tx") == []
    assert canonical({"b": 1, "a": [True, None]}) == b'{"a":[true,null],"b":1}'


def test_a_result_is_fetched_from_the_members_own_node_opened_and_checked(gw):
    """The node side is the servers' own sealing (services/compute/results.py) behind real HTTP."""
    import base64

    from services.compute.results import commit, seal

    node = Key.generate("bank-a.node")
    text = b'{"intersection": ["+41 79 000 00 01"]}'
    commitment, salt = commit(text)
    envelope = base64.b64encode(seal(node.public_key, "j1", "psi", text, salt, commitment, member="bank-a")).decode()
    sealed = {"job": "j1", "type": "psi", "result_hash": "ab" * 32, "sealed_to": node.account, "envelope": envelope}
    gw.on("GET /jobs/j1/result", (409, {}, {"detail": "job j1 is running"}), (200, {}, sealed))
    gw.on("GET /jobs/j2/result", (200, {}, {**sealed, "job": "j2"}))  # another job's envelope under j2's name
    gw.on("GET /datasets", (200, {}, [{"id": "customers", "asset": None, "rows": 3, "commitment": "cd" * 32,
                                       "columns": ["phone"], "error": None, "format": "csv", "key": "phone"}]))
    with client(gw) as c:
        opened = c.result(gw.url, "j1", node, timeout=10)
        assert opened.result == {"intersection": ["+41 79 000 00 01"]} and opened.commitment == commitment
        assert len(gw.calls("GET /jobs/j1/result")) == 2  # waited out the 409
        with pytest.raises(rdx_client.MalformedAnswer, match="j1"):
            c.result(gw.url, "j2", node)
        with pytest.raises(rdx_client.ResultError):
            c.result(gw.url, "j1", Key.generate("telco.node"))
        assert [d.commitment for d in c.datasets(gw.url)] == ["cd" * 32]
    assert gw.headers and all("signature" not in h and "authorization" not in h for h in gw.headers)  # unsigned


def test_the_client_package_imports_nothing_of_the_servers():
    import ast
    from pathlib import Path

    root = Path(rdx_client.__file__).parent
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] in ("services", "rdx") for n in names), (path, names)


def test_a_retry_after_given_as_an_http_date_is_honoured(gw):
    import email.utils

    when = email.utils.formatdate(time.time() + 2, usegmt=True)  # whole seconds: waits 1-2 s
    gw.on("GET /v1/jobs/j1", (503, {"retry-after": when}, {"title": "Service unavailable"}), (200, {}, JOB))
    with client(gw) as c:
        assert c.job("j1").id == "j1"
    first, second = (t for *_, t in gw.calls("GET /v1/jobs/j1"))
    assert 0.9 <= second - first <= 3.5
