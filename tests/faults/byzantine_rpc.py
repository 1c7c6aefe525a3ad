"""A byzantine validator's RPC for the fault tests: an HTTP proxy in front of a real CometBFT node
that rewrites its answers to ``abci_query`` (issue 18, part 5).

``ByzantineRpc(upstream)`` listens on a free loopback port (``.url``) and forwards JSON-RPC to the
real node. ``.mode`` says what it lies about (``None``: nothing, an honest proxy); ``.target`` is
the state key it lies about (others pass through):

- ``key``: the value's ``public_key`` becomes ``.fake_key`` (a member's key swapped for the attacker's);
- ``balance``: a number value (a ``bank/balance/`` entry) grows by a million;
- ``grant``: the value's ``status`` becomes ``.fake_status``;
- ``absent``: a present key is answered NOT_FOUND with its real (presence) proof;
- ``stale``: the first answer it saw for the key, replayed later with its own (old) height;
- ``relabelled``: that first answer with the current height (a proof from another height);
- ``garbage``: answers of the wrong shape (``.garbage``: the method and which of its ``GARBAGE`` answers);
- ``forged_header``: the value rewritten as ``key``/``balance``/``grant`` would, and the header of the
  next height given the app hash that the real proof's siblings lead to for the forged value (the
  lie a client that checks proofs but not signatures would take);
- ``omit``: an answer listing a prefix (``.target``, e.g. ``bank/balance/``) leaves out the
  entries whose key ends with ``/`` + ``.omit`` (an account hidden from a reconciliation);
- ``lagging_status``: not a lie but a race every node's answers run: the next ``status`` says the
  height before the node's latest, as a ``status`` answered just before a block committed does;
- ``block_results``: in ``block_results``, the digest of the chain event whose id is ``.target``
  becomes ``.fake_digest`` (vouching for a forged event that a hostile relay published).

Every lie is counted in ``.lies`` so a test can show it was told.
"""

from __future__ import annotations

import base64
import copy
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from rdx.components import LOOPBACK, free_port
from services.common import proofs

MODES = (None, "key", "balance", "grant", "absent", "stale", "relabelled", "forged_header", "garbage", "block_results", "omit",
         "lagging_status")
GARBAGE = {"abci_query": [{"response": {"height": "x"}}, {"response": []}, [], {"response": {"height": "1", "code": 0,
           "value": "!!", "proofOps": {"ops": [{"type": 3}]}}}],
           "commit": [{"signed_header": None}, {"signed_header": {"header": {"height": "x"}, "commit": {}}}],
           "validators": [{"validators": None, "total": "1"}, {"validators": [{"pub_key": 5}], "total": "x"}]}


class ByzantineRpc:
    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.mode: str | None = None
        self.target = ""
        self.fake_key = base64.b64encode(b"\x07" * 32).decode()
        self.fake_status = "granted"
        self.fake_digest = "00" * 32
        self.omit = ""
        self.lies = 0
        self.garbage = ("abci_query", 0)
        self._first: dict[str, dict] = {}
        self._forged_root: dict[int, str] = {}  # height of the header -> app hash hex to put in it
        self._http = httpx.Client(timeout=30)
        self._server = ThreadingHTTPServer((LOOPBACK, free_port()), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://{LOOPBACK}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> "ByzantineRpc":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._http.close()

    def __enter__(self) -> "ByzantineRpc":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def lie(self, mode: str | None, target: str = "") -> None:
        assert mode in MODES, mode
        self.mode, self.target, self._forged_root = mode, target.lstrip("/"), {}

    # -- rewriting --------------------------------------------------------------------------------
    def _rewrite(self, method: str, params: dict, result: Any) -> Any:
        if self.mode == "garbage" and method == self.garbage[0]:
            self.lies += 1
            return copy.deepcopy(GARBAGE[method][self.garbage[1]])
        if method == "abci_query":
            key = str(params.get("path", "")).lstrip("/")
            response = result["response"]
            if key == self.target and response.get("code", 0) == 0:
                self._first.setdefault(key, copy.deepcopy(result))
            if self.mode == "omit" and key.split("?")[0] == self.target and response.get("code", 0) == 0:
                return self._omit(result)
            if self.mode is None or key != self.target or response.get("code", 0) != 0:
                return result
            return self._lie_about(key, result)
        if method == "status" and self.mode == "lagging_status":
            self.mode = None  # once
            self.lies += 1
            sync = result["sync_info"]
            sync["latest_block_height"] = str(int(sync["latest_block_height"]) - 1)
            return result
        if method == "block_results" and self.mode == "block_results":
            events = list(result.get("finalize_block_events") or [])
            for tx in result.get("txs_results") or []:
                events += tx.get("events") or []
            for event in events:
                attrs = event.get("attributes") or []
                if any(a.get("key") == "id" and a.get("value") == self.target for a in attrs):
                    for a in attrs:
                        if a.get("key") == "digest":
                            a["value"] = self.fake_digest
                            self.lies += 1
            return result
        if method in ("commit", "header") and self.mode == "forged_header":
            header = result["signed_header"]["header"] if method == "commit" else result["header"]
            forged = self._forged_root.get(int(header["height"]))
            if forged:
                header["app_hash"] = forged
                self.lies += 1
        return result

    def _omit(self, result: dict) -> dict:
        page = json.loads(base64.b64decode(result["response"]["value"]))  # {"items": {key: value}, "next": ...}
        kept = {k: v for k, v in page["items"].items() if not k.endswith("/" + self.omit)}
        self.lies += len(page["items"]) - len(kept)
        result["response"]["value"] = base64.b64encode(json.dumps({**page, "items": kept}).encode()).decode()
        return result

    def _lie_about(self, key: str, result: dict) -> dict:
        response = result["response"]
        if self.mode in ("stale", "relabelled"):
            old = copy.deepcopy(self._first[key])
            if self.mode == "relabelled":
                old["response"]["height"] = response["height"]
            self.lies += 1
            return old
        if self.mode == "absent":
            response.update(code=11, value="", log="not found")
            self.lies += 1
            return result
        value = json.loads(base64.b64decode(response["value"]))
        if isinstance(value, int):
            value += 1_000_000
        elif self.mode == "grant" or (self.mode == "forged_header" and "status" in value and "public_key" not in value):
            value["status"] = self.fake_status
        else:
            value["public_key"] = self.fake_key
        forged = json.dumps(value, separators=(",", ":"), sort_keys=True).encode()
        response["value"] = base64.b64encode(forged).decode()
        if self.mode == "forged_header":
            op = response["proofOps"]["ops"][0]
            root = proofs.Proof.decode(base64.b64decode(op["data"])).root(proofs.path_of(key), forged)
            self._forged_root[int(response["height"]) + 1] = root.hex().upper()
        self.lies += 1
        return result

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                upstream = proxy._http.post(proxy.upstream + "/", content=body,
                                            headers={"content-type": "application/json"})
                out = upstream.content
                try:
                    request, answer = json.loads(body), upstream.json()
                    if "result" in answer:
                        answer["result"] = proxy._rewrite(request.get("method", ""), request.get("params") or {},
                                                          answer["result"])
                        out = json.dumps(answer).encode()
                except (ValueError, KeyError, TypeError, AttributeError):
                    pass  # not JSON-RPC this proxy understands: passed through as it came
                self.send_response(upstream.status_code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        return Handler
