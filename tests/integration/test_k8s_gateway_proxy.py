"""Signed requests behind the Ingress: the trusted-proxy setting the gateway's manifest carries.

A member signs (RFC 9421) the URL it calls, ``https://<host>/...``; the ingress controller ends
TLS and calls the gateway over http, adding ``X-Forwarded-Proto: https`` and the Host it was sent.
infra/base/gateway.yaml sets ``FORWARDED_ALLOW_IPS`` (uvicorn's list of proxies whose forwarding
headers it believes) to the controller's addresses. Here the real gateway runs on the real chain
with that variable set to the address the test's "ingress controller" (a client bound to
127.0.0.2) sends from; another loopback address (127.0.0.3) is any other pod.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from test_gateway import start_gateway
from test_k8s_manifests import ROOT, render

from services.common import httpsig
from services.common.chain import ChainClient
from services.common.identity import Identity

PROXY, OTHER = "127.0.0.2", "127.0.0.3"
HOST = "exchange.example.org"


def manifest_env() -> dict[str, str]:
    gateway = next(d for d in render(ROOT / "infra" / "overlays" / "prod")
                   if d["kind"] == "Deployment" and d["metadata"]["name"] == "gateway")
    (container,) = gateway["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value") for e in container["env"]}


@pytest.fixture(scope="module")
def gw(chain, tmp_path_factory):
    assert "FORWARDED_ALLOW_IPS" in manifest_env()  # what the deployed gateway gets; its value is the cluster's
    root = tmp_path_factory.mktemp("gateway-proxy")
    member = Identity.generate(f"proxied-{int(time.time()) % 100000}")

    async def register():
        async with ChainClient(chain.rpc_url, chain.chain_id) as c:
            await c.submit(chain.association, "members.Register", {
                "id": member.account, "name": member.account, "roles": ["consumer"], "public_key": member.public_key})

    asyncio.run(register())
    proc = start_gateway(chain, root, FORWARDED_ALLOW_IPS=PROXY)
    try:
        yield proc, member
    finally:
        proc.stop()


def call(gw, source: str, url_signed: str, **headers: str) -> httpx.Response:
    proc, member = gw
    path = url_signed.split(HOST, 1)[-1] if HOST in url_signed else url_signed.split(proc.url, 1)[-1]
    signed = httpsig.sign(member, "GET", url_signed, b"")
    with httpx.Client(transport=httpx.HTTPTransport(local_address=source)) as client:
        return client.get(f"{proc.url}{path}", headers={**signed, **headers})


def test_a_request_signed_for_the_public_https_url_is_accepted_through_the_trusted_proxy(gw):
    resp = call(gw, PROXY, f"https://{HOST}/v1/policy", host=HOST, **{"x-forwarded-proto": "https",
                                                                      "x-forwarded-for": "198.51.100.7"})
    assert resp.status_code == 200, resp.text


def test_the_same_request_from_any_other_address_is_refused(gw):
    """Without the trusted-proxy setting (or from a pod it does not name) the gateway sees http://
    and the signature, made over https://, does not match: what the issue saw behind the Ingress."""
    resp = call(gw, OTHER, f"https://{HOST}/v1/policy", host=HOST, **{"x-forwarded-proto": "https"})
    assert resp.status_code == 401, resp.text


def test_forwarding_headers_from_an_untrusted_pod_change_nothing(gw):
    """A pod that is not the proxy cannot make the gateway believe another scheme: a request signed
    over what the gateway really serves (http) still verifies, whatever the forged headers say."""
    proc, _ = gw
    resp = call(gw, OTHER, f"{proc.url}/v1/policy", **{"x-forwarded-proto": "https", "x-forwarded-for": "10.0.0.1"})
    assert resp.status_code == 200, resp.text
