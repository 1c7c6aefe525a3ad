"""The portal as people use it: a real Chromium (Playwright) against a local exchange (`rdx up`), signed
in through a real OpenID Connect provider (Ory Hydra with its login app, rdx/portal_toolchain.py).

Screenshots are kept under the pytest temporary directory (printed at the end of the module), or
under ``$RDX_TEST_ARTIFACTS`` when set."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import sqlite3
import time
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest
from nacl.signing import VerifyKey
from playwright.sync_api import Page, sync_playwright
from portkit import free_offset
from test_local_exchange import rdx

from rdx.components import LOOPBACK, ServiceProcess, free_port, http_ok
from rdx.portal_login import user_record
from rdx.portal_toolchain import CHROMIUM_ARGS, Hydra, LoginApp, axe_script, ensure_all
from rdx.sdk import Gateway
from rdx_client.errors import Forbidden
from rdx.supervisor import NodeSpec, write_member_nodes
from services.common import canonicaljson
from services.common.identity import Identity
from services.common.listing import example_metadata
from services.compute.datasets import Datasets

pytestmark = [pytest.mark.e2e, pytest.mark.built_tools]  # Hydra

PASSWORD = "correct horse battery staple"
CHINESE_TITLE = "移动用户画像（按区县）"
PHONE = {"width": 390, "height": 844}


SMALL, LARGE, OVERLAP = 2_000, 100_000, 700
WEIGHTS = {"income": 0.8, "debt": -1.2, "age": 0.3, "__intercept__": 0.1}
APPLICANTS = [(0.5, -0.25, 1.0), (-1.0, 0.75, 0.0), (0.0, 0.0, 0.0), (1.5, 1.0, -0.5)]


def retried(send, seconds: float = 30):
    """``send()``, again while the gateway's view of the chain does not yet hold what the last block
    committed (it reads the state a block behind the node's latest and caches answers for 2 s, so it
    answers 403 "unknown ..." until then: docs/gateway.md)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return send()
        except Forbidden as exc:
            if "unknown" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def write_datasets(state: Path, telco: str, bank: str) -> dict[str, Path]:
    """Each member's data on its own premises: the telco's phone numbers (listed), the bank's
    customers (a small set for the journey's job, a large one for a job that runs long enough
    to be aborted)."""
    phones = [f"+86-139{i:08d}" for i in range(SMALL)]
    sets = {telco: {"phones": phones},
            bank: {"customers": phones[:OVERLAP] + [f"+86-150{i:08d}" for i in range(SMALL - OVERLAP)],
                   "everyone": phones[:OVERLAP] + [f"+86-151{i:08d}" for i in range(LARGE)]}}
    found = {}
    for member, named in sets.items():
        folder = state / "member-data" / member
        folder.mkdir(parents=True, exist_ok=True)
        entries = []
        for name, rows in named.items():
            (folder / f"{name}.csv").write_text("phone\n" + "\n".join(rows) + "\n")
            entry = {"id": name, "format": "csv", "path": f"{name}.csv", "key": "phone"}
            if member == telco:
                entry["asset"] = f"{telco}.phones"
            entries.append(entry)
        # the telco's scoring model (listed) and the bank's applicants: an HE scoring job on them
        if member == telco:
            (folder / "model.csv").write_text("feature,weight\n" + "".join(f"{k},{v}\n" for k, v in WEIGHTS.items()))
            entries.append({"id": "model", "asset": f"{telco}.model", "format": "csv", "path": "model.csv"})
        else:
            (folder / "applicants.csv").write_text("id,income,debt,age\n" + "".join(
                f"app-{j},{a},{b},{c}\n" for j, (a, b, c) in enumerate(APPLICANTS)))
            entries.append({"id": "applicants", "format": "csv", "path": "applicants.csv"})
        (folder / "datasets.json").write_text(json.dumps({"datasets": entries}))
        found[member] = folder / "datasets.json"
    return found


class Site:
    def __init__(self, root: Path):
        self.root = root
        self.shots = Path(os.environ["RDX_TEST_ARTIFACTS"]) / "portal" if os.environ.get("RDX_TEST_ARTIFACTS") \
            else root / "screenshots"
        self.shots.mkdir(parents=True, exist_ok=True)

    def shot(self, page: Page, name: str) -> None:
        page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)


@pytest.fixture(scope="module")
def site(toolchain, tmp_path_factory):
    ensure_all()
    root = tmp_path_factory.mktemp("portal")
    state = root / "state"
    args = ("--state-dir", str(state))
    for _ in range(3):  # a port found free can be taken by another process before the exchange binds it
        started = rdx("up", "--detach", "--port-offset", str(free_offset()), *args)
        if "already in use" not in started.stderr:
            break
    assert started.returncode == 0, started.stderr + started.stdout
    processes = []
    try:
        eps = json.loads((state / "endpoints.json").read_text())
        admin_token = (state / "keys" / "admin.token").read_text().strip()
        association = Identity.load(state / "keys" / "association.json")
        run = str(int(time.time()))
        telco, bank = Identity.generate(f"telco{run}"), Identity.generate(f"bank{run}")
        phones_asset, datasets = f"{telco.account}.phones", write_datasets(state, telco.account, bank.account)
        grpc = {m.account: free_port() for m in (telco, bank)}
        for member in (telco, bank):  # each member's compute node, run by the local supervisor (below)
            Identity.generate(f"{member.account}.node").save(state / "keys" / f"{member.account}.node.json")
        node = {m.account: {"public_key": Identity.load(state / "keys" / f"{m.account}.node.json").public_key,
                            "endpoint": f"{LOOPBACK}:{grpc[m.account]}"} for m in (telco, bank)}
        with Gateway(eps["gateway"], identity=association, api_key=admin_token, chain_id="rdx-local",
                     timeout=60) as admin:
            admin.send("members.Register", {"id": telco.account, "name": "华南电信", "roles": ["provider"],
                                            "public_key": telco.public_key, "node": node[telco.account]})
            admin.send("members.Register", {"id": bank.account, "name": "Bank of the Bay", "roles": ["consumer"],
                                            "public_key": bank.public_key, "node": node[bank.account]})
            admin.send("bank.Deposit", {"to": bank.account, "amount": 10_000, "reference": f"portal-{run}"})
            keys = {f"{telco.account}/member_admin": admin.create_key(telco.account, "member_admin")["token"],
                    f"{bank.account}/analyst": admin.create_key(bank.account, "analyst")["token"],
                    f"{bank.account}/member_admin": admin.create_key(bank.account, "member_admin")["token"],
                    "association/association_admin": admin_token,
                    "association/auditor": admin.create_key("association", "auditor")["token"]}
        specs = [NodeSpec(member=m, http_port=free_port(), grpc_port=grpc[m], key_file=f"keys/{m}.node.json",
                          datasets=str(datasets[m].relative_to(state))) for m in grpc]
        write_member_nodes(state, specs)
        asset = f"{telco.account}.subscribers"
        with Gateway(eps["gateway"], identity=telco, chain_id="rdx-local", timeout=60) as provider:
            provider.send("assets.List", {
                "id": asset, "level": "L3", "operations": ["psi", "psi_cardinality"],
                "commitment": hashlib.sha256(b"rows").hexdigest(), "price": {"model": "fixed", "amount": 40},
                "metadata": example_metadata(CHINESE_TITLE, description="每位移动用户一行：在网时长、套餐与所在区县。")})
            commitment, rows = Datasets.from_path(datasets[telco.account]).get("model").summary()
            provider.send("assets.List", {
                "id": f"{telco.account}.model", "level": "L3", "operations": ["he_scoring"], "commitment": commitment,
                "price": {"model": "fixed", "amount": 30},
                "metadata": example_metadata("Churn scoring model", row_count=rows)})
            provider.send("assets.List", {  # core data: a grant on it needs the association's approval too
                "id": f"{telco.account}.core", "level": "L4", "operations": ["he_scoring"], "commitment": commitment,
                "price": {"model": "fixed", "amount": 50},
                "metadata": example_metadata("Core churn model", row_count=rows)})
            commitment, rows = Datasets.from_path(datasets[telco.account]).get("phones").summary()
            provider.send("assets.List", {
                "id": phones_asset, "level": "L3", "operations": ["psi"], "commitment": commitment,
                "price": {"model": "fixed", "amount": 25},
                "metadata": example_metadata("Subscribers' phone numbers", row_count=rows)})
            with Gateway(eps["gateway"], identity=bank, chain_id="rdx-local", timeout=60) as consumer:
                retried(lambda: consumer.request_access(f"g-phones-{run}", phones_asset, ["psi"], "joint marketing",
                                                        max_runs=5))
                retried(lambda: consumer.request_access(f"g-scoring-{run}", f"{telco.account}.model", ["he_scoring"],
                                                        "credit scoring", max_runs=5))
                retried(lambda: consumer.request_access(f"g-vip-{run}", f"{telco.account}.core", ["he_scoring"],
                                                        "core scoring", max_runs=1))
                retried(lambda: consumer.request_access(f"g-vipx-{run}", f"{telco.account}.core", ["he_scoring"],
                                                        "core scoring, again", max_runs=1))
            retried(lambda: provider.approve(f"g-phones-{run}"))
            retried(lambda: provider.approve(f"g-scoring-{run}"))
            for grant_id in (f"g-vip-{run}", f"g-vipx-{run}"):  # the provider's approval; the association's is the portal's
                retried(lambda: provider.approve(grant_id))
        deadline = time.monotonic() + 120
        while not all(http_ok(f"http://{LOOPBACK}:{spec.http_port}/readyz") for spec in specs):
            assert time.monotonic() < deadline, "the members' compute nodes did not become ready"
            time.sleep(0.5)
        with Gateway(eps["gateway"], api_key=keys[f"{bank.account}/analyst"], timeout=30) as reader:
            deadline = time.monotonic() + 60
            while not (reader.search(CHINESE_TITLE[:2])["items"] and reader.search("phone numbers")["items"]) \
                    and time.monotonic() < deadline:
                time.sleep(0.5)
        keys_file = root / "portal-keys.json"
        keys_file.write_text(json.dumps(keys))
        keys_file.chmod(0o600)
        users_file = root / "users.json"
        users_file.write_text(json.dumps({"users": {
            "li.na": user_record(PASSWORD, bank.account, "analyst", "李娜"),
            "ann": user_record(PASSWORD, bank.account, "member_admin", "Ann Lee"),
            "audrey": user_record(PASSWORD, bank.account, "auditor", "Audrey"),  # no gateway key for her role
            "robot": user_record(PASSWORD, bank.account, "compute_operator", "A machine"),
            "mei": user_record(PASSWORD, f"shop{run}", "member_admin", "王美"),  # admitted during a test
            "tang": user_record(PASSWORD, telco.account, "member_admin", "唐工"),
            "zhou": user_record(PASSWORD, "association", "association_admin", "周主任"),
            "shen": user_record(PASSWORD, "association", "auditor", "沈审计"),
            "hua": user_record(PASSWORD, f"orchard{run}", "member_admin", "华果园"),  # admitted during a test
        }}))

        login_port, portal_port = free_port(), free_port()
        # Each is in the list before it starts: one that fails to become ready is stopped all the same.
        hydra = Hydra(root, f"http://{LOOPBACK}:{login_port}")
        processes.append(hydra)
        hydra.start()
        login = LoginApp(root, hydra.admin, port=login_port)
        processes.append(login)
        login.start(users_file)
        portal_url = f"http://{LOOPBACK}:{portal_port}"
        client_id, secret = hydra.add_client(f"{portal_url}/callback")
        portal = ServiceProcess("portal", portal_port, {
            "RDX_STATE_ROOT": str(root / "portal-state"), "RDX_GATEWAY_URL": eps["gateway"],
            "RDX_PORTAL_PUBLIC_URL": portal_url, "RDX_PORTAL_OIDC_ISSUER": hydra.issuer,
            "RDX_PORTAL_OIDC_CLIENT_ID": client_id, "RDX_PORTAL_OIDC_CLIENT_SECRET": secret,
            "RDX_PORTAL_GATEWAY_KEYS_FILE": str(keys_file)}, root / "logs")
        processes.append(portal)
        portal.start()
        s = Site(root)
        s.url, s.asset, s.bank, s.hydra, s.portal = portal_url, asset, bank.account, hydra, portal
        s.shop, s.keys_file, s.keys, s.gateway, s.admin_token = f"shop{run}", keys_file, keys, eps["gateway"], admin_token
        s.association, s.state, s.telco = association, state, telco
        s.bank_identity, s.phones_asset, s.phones_grant = bank, phones_asset, f"g-phones-{run}"
        s.scoring_grant, s.model_asset, s.l4_grant = f"g-scoring-{run}", f"{telco.account}.model", f"g-vip-{run}"
        s.orchard = f"orchard{run}"
        yield s
        print(f"\nportal screenshots: {s.shots}")
    finally:
        for p in reversed(processes):
            p.stop()
        rdx("down", *args)


@pytest.fixture(scope="module")
def browser(site):
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def context(browser, site, tmp_path, locale: str, phone: bool = False):
    # bypass_csp: axe-core is injected as a script of its own, which the portal's CSP (self only) refuses;
    # the CSP itself is checked on the response headers.
    return browser.new_context(locale=locale, viewport=PHONE if phone else {"width": 1280, "height": 900},
                               is_mobile=phone, has_touch=phone, bypass_csp=True)


def sign_in(page: Page, site: Site, user: str, password: str = PASSWORD, start: str = "/search",
            back: bool = True) -> None:
    """Through Hydra and its login app; ``back``: wait until the portal shows the search page."""
    page.goto(site.url + start)
    try:
        page.wait_for_selector("#username")  # Hydra sent the browser to its login app
    except Exception:
        raise AssertionError(f"no login form at {page.url}: {page.content()[:1000]}") from None
    page.fill("#username", user)
    page.fill("#password", password)
    page.click("#sign-in")
    if back:
        page.wait_for_url(re.compile(r".*/search.*"))


def jar(cookies: dict[str, str]) -> dict[str, str]:
    """A Cookie header (httpx deprecates per-request cookies)."""
    return {"cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())} if cookies else {}


def session_id(ctx) -> str:
    return next(c["value"] for c in ctx.cookies() if c["name"] == "rdx_portal")


def serious_violations(page: Page) -> list[dict]:
    page.add_script_tag(path=str(axe_script()))
    result = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    return [{"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]][:3]}
            for v in result["violations"] if v["impact"] in ("serious", "critical")]


def fits_width(page: Page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def test_sign_in_search_in_chinese_and_open_the_listing_at_phone_width(browser, site, tmp_path):
    ctx = context(browser, site, tmp_path, "zh-CN", phone=True)
    page = ctx.new_page()
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.url))
    sign_in(page, site, "li.na")
    assert page.locator("h1").inner_text() == "搜索数据产品"
    assert "李娜" in page.locator(".who").inner_text()
    site.shot(page, "01-search-zh-phone")

    page.fill("#q", "用户")  # a two-character Chinese word
    page.click("form#search-form button[type=submit] >> nth=0")
    page.wait_for_url(re.compile(r".*q=.*"))
    link = page.locator(f"a[href='/listings/{site.asset}']")
    assert link.count() == 1 and "用户" in link.inner_text()
    assert page.locator(".card mark").first.inner_text() == "用户"
    assert fits_width(page)
    assert serious_violations(page) == []
    site.shot(page, "02-results-zh-phone")

    link.click()
    page.wait_for_url(re.compile(f".*/listings/{re.escape(site.asset)}$"))
    assert page.locator("h1").inner_text() == CHINESE_TITLE
    assert page.locator("#level").inner_text() == "L3"
    assert page.locator("#price").inner_text() == "每次作业 40 积分"
    assert re.fullmatch(r"\d+ 积分", page.locator("#quote").inner_text())
    assert page.locator("#commitment").inner_text() == hashlib.sha256(b"rows").hexdigest()
    assert page.locator("#versions tbody tr").count() >= 1
    assert fits_width(page)
    assert serious_violations(page) == []
    site.shot(page, "03-listing-zh-phone")

    # The session cookie: HttpOnly, SameSite=Lax, gone with the session's lifetime.
    [cookie] = [c for c in ctx.cookies() if c["name"] == "rdx_portal"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    assert 0 < cookie["expires"] - time.time() <= 900 + 5
    assert not any("rdx_portal_login" == c["name"] for c in ctx.cookies())
    # The browser spoke to the portal and the IdP only, never the gateway.
    gateway_port = site.portal.process.env["RDX_GATEWAY_URL"].rsplit(":", 1)[1]
    assert not [u for u in sent if f":{gateway_port}/" in u]
    ctx.close()


def test_english_from_the_browser_and_the_switch(browser, site, tmp_path):
    ctx = context(browser, site, tmp_path, "en-US")
    page = ctx.new_page()
    sign_in(page, site, "ann")
    assert page.locator("h1").inner_text() == "Search listings"
    assert page.locator("html").get_attribute("lang") == "en"
    assert serious_violations(page) == []
    site.shot(page, "04-search-en")
    page.click("#lang-switch")
    page.wait_for_url(re.compile(r".*/search.*"))
    assert page.locator("h1").inner_text() == "搜索数据产品"
    assert page.locator("html").get_attribute("lang") == "zh-CN"
    site.shot(page, "05-search-switched-zh")

    # Sign out (a POST with the CSRF token): the session is gone on the server, not only in the browser.
    sid = session_id(ctx)
    page.click("form[action='/logout'] button")
    page.wait_for_url(re.compile(r".*/signed-out$"))
    answer = httpx.get(f"{site.url}/search", headers=jar({"rdx_portal": sid}), follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"].startswith("/login")
    ctx.close()


def test_wrong_password_and_roles_the_portal_refuses(browser, site, tmp_path):
    ctx = context(browser, site, tmp_path, "en-US")
    page = ctx.new_page()
    sign_in(page, site, "li.na", password="wrong", back=False)
    page.wait_for_selector("p[role=alert]")
    assert "Wrong user name or password" in page.locator("p[role=alert]").inner_text()
    assert not [c for c in ctx.cookies() if c["name"] == "rdx_portal"]

    sign_in(page, site, "robot", back=False)  # a machine role has no place in the portal
    page.wait_for_selector("p.problem")
    assert "Sign-in failed" in page.locator("p.problem").inner_text()
    assert not [c for c in ctx.cookies() if c["name"] == "rdx_portal"]

    sign_in(page, site, "audrey", back=False)  # signed in, but the association gave the portal no key for her role
    page.wait_for_selector("p.problem")
    assert "no gateway access" in page.locator("p.problem").inner_text()
    site.shot(page, "06-no-key-en")
    ctx.close()


def test_hostile_requests_get_clear_answers(browser, site, tmp_path):
    ctx = context(browser, site, tmp_path, "en-US")
    page = ctx.new_page()
    sign_in(page, site, "li.na")
    sid = session_id(ctx)
    ctx.close()

    with httpx.Client(base_url=site.url, follow_redirects=False, timeout=30) as http:
        # A callback this browser did not start, or with another state, signs nobody in.
        for params, cookies in (({"code": "x", "state": "y"}, {}),
                                ({"code": "x", "state": "y"}, {"rdx_portal_login": "forged"}),
                                ({"error": "access_denied"}, {})):
            answer = http.get("/callback", params=params, headers=jar(cookies))
            assert answer.status_code == 400 and "rdx_portal=" not in answer.headers.get("set-cookie", "")
            assert "Traceback" not in answer.text
        # A forged or missing session: back to sign-in, with where to return.
        for cookies in ({"rdx_portal": "forged"}, {"rdx_portal": "x" * 5000}, {}):
            answer = http.get("/search?q=a", headers=jar(cookies))
            assert answer.status_code == 303 and answer.headers["location"].startswith("/login?next=")
        me = {"rdx_portal": sid}
        assert http.get("/search", params={"q": "x" * 201}, headers=jar(me)).status_code == 400
        assert http.get("/search", params=[("level", "L" * 101)], headers=jar(me)).status_code == 400
        assert http.get("/search", params={"cursor": "not-a-cursor"}, headers=jar(me)).status_code in (400, 422)
        assert http.get("/listings/NOT..valid", headers=jar(me)).status_code == 404
        assert http.get(f"/listings/{site.asset}x", headers=jar(me)).status_code == 404
        page_html = http.get("/search", params={"q": "<script>alert(1)</script>"}, headers=jar(me)).text
        assert "<script>alert(1)</script>" not in page_html
        # The language switch never sends the browser to another origin.
        for target in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
            answer = http.get("/lang/en", params={"next": target})
            assert answer.status_code == 303 and answer.headers["location"] == "/search"
        # Signing out needs the session's CSRF token.
        assert http.post("/logout", data={"csrf": "wrong"}, headers=jar(me)).status_code == 403
        assert http.post("/logout", content=b"\xff" * 10_000,
                         headers={**jar(me), "content-type": "application/x-www-form-urlencoded"}).status_code == 403
        assert http.get("/search", headers=jar(me)).status_code == 200  # still signed in
        answer = http.get("/search", headers=jar(me))
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
    assert site.portal.process.alive()


def make_browser_key(page: Page, site: Site) -> str:
    page.goto(f"{site.url}/keys")
    page.click("#make-key")
    page.wait_for_function("document.getElementById('public-key').textContent.endsWith('=')")
    return page.locator("#public-key").inner_text()


def held_key(page: Page, account: str) -> dict:
    """What the page can learn of ``account``'s private key in this browser's IndexedDB."""
    return page.evaluate("""async (account) => {
        const db = await new Promise((ok, no) => { const r = indexedDB.open("rdx-portal-keys"); r.onsuccess = () => ok(r.result); r.onerror = no; });
        const pair = await new Promise((ok) => { const r = db.transaction("keys").objectStore("keys").get(account); r.onsuccess = () => ok(r.result); });
        let exported = "refused";
        try { await crypto.subtle.exportKey("pkcs8", pair.privateKey); exported = "exported"; } catch (e) { exported = e.name; }
        return {extractable: pair.privateKey.extractable, algorithm: pair.privateKey.algorithm.name, exported};
    }""", account)


NOT_EXTRACTABLE = {"extractable": False, "algorithm": "Ed25519", "exported": "InvalidAccessError"}


def test_keys_stay_in_the_browser_that_signs(browser, site, tmp_path):
    """A member admin makes the member's signing key in the browser (WebCrypto Ed25519, not
    extractable), the association admits the member with its public key, and an access request is
    signed in the browser and relayed by the portal: no request carries a private key, and none can."""
    ctx = context(browser, site, tmp_path, "zh-CN")
    page = ctx.new_page()
    bodies: list[tuple[str, str]] = []
    page.on("request", lambda r: bodies.append((r.url, r.post_data or "")) if r.method != "GET" else None)
    sign_in(page, site, "mei")
    public_key = make_browser_key(page, site)
    assert serious_violations(page) == []
    site.shot(page, "07-browser-key-zh")
    assert held_key(page, site.shop) == NOT_EXTRACTABLE

    # The association admits the member with the key its admin made; the portal gets an API key for it.
    with Gateway(site.gateway, identity=site.association, chain_id="rdx-local", timeout=60) as admin:
        admin.send("members.Register", {"id": site.shop, "name": "小店", "roles": ["consumer"],
                                        "public_key": public_key})
        token = admin.create_key(site.shop, "member_admin")["token"]
    site.keys_file.write_text(json.dumps({**site.keys, f"{site.shop}/member_admin": token}))

    page.goto(f"{site.url}/listings/{site.asset}")
    grant = page.locator("#grant").input_value()
    page.fill("#purpose", "联合营销 joint marketing")
    page.click("#send-request")
    page.wait_for_selector("#request-status[data-state]")
    assert page.locator("#request-status").get_attribute("data-state") == "done", page.locator("#request-status").inner_text()
    site.shot(page, "08-access-requested-zh")
    with Gateway(site.gateway, api_key=token, timeout=30) as shop:
        [mine] = [g for g in shop.my_access() if g["id"] == grant]
    assert mine["consumer"] == site.shop and mine["asset"] == site.asset and mine["purpose"] == "联合营销 joint marketing"
    site.grant, site.shop_token = grant, token

    # Every body the browser sent: the sign-in form, the sign-out-free journey's one signed tx. The
    # tx is the six envelope fields, signed by the browser's key (checked here with libsodium).
    posted = [(u, b) for u, b in bodies if u.endswith("/api/tx")]
    assert len(posted) == 1
    tx = json.loads(posted[0][1])["tx"]
    assert set(tx) == {"chain_id", "nonce", "payload", "sig", "signer", "type"} and tx["signer"] == site.shop
    signed = {k: v for k, v in tx.items() if k != "sig"}
    VerifyKey(base64.b64decode(public_key)).verify(canonicaljson.dump_bytes(signed), base64.b64decode(tx["sig"]))
    others = [b for u, b in bodies if not u.endswith("/api/tx")]
    assert all(set(parse_qs(b)) <= {"challenge", "username", "password", "csrf"} for b in others), others
    # The servers keep nothing of it but the public key on chain: the portal writes no file at all.
    assert not [p for p in (site.root / "portal-state").rglob("*") if p.is_file()]
    ctx.close()


def test_the_provider_approves_in_its_own_browser(browser, site, tmp_path):
    """The provider's admin moves the member's key into its browser (the old key signs members.RotateKey,
    as the member's own signer would) and approves the request from the access inbox."""
    ctx = context(browser, site, tmp_path, "zh-CN", phone=True)
    page = ctx.new_page()
    sign_in(page, site, "tang")
    public_key = make_browser_key(page, site)
    with Gateway(site.gateway, identity=site.telco, chain_id="rdx-local", timeout=60) as telco:
        telco.send("members.RotateKey", {"public_key": public_key})
    page.goto(f"{site.url}/access")
    row = page.locator(f"tr[id='grant-{site.grant}']")
    assert row.locator(".status").inner_text() == "pending"
    assert fits_width(page)
    assert serious_violations(page) == []
    site.shot(page, "09-access-inbox-zh-phone")
    row.locator("button[data-approve]").click()
    page.wait_for_selector("#approve-status[data-state]")
    assert page.locator("#approve-status").get_attribute("data-state") == "done", page.locator("#approve-status").inner_text()
    with Gateway(site.gateway, api_key=site.shop_token, timeout=30) as shop:
        [grant] = [g for g in shop.my_access() if g["id"] == site.grant]
    assert grant["status"] == "granted"
    page.reload()
    assert page.locator(f"tr[id='grant-{site.grant}'] .status").inner_text() == "granted"
    site.shot(page, "10-access-granted-zh-phone")
    ctx.close()


def signed_after_confirming(page: Page, sent: list[str], button: str, status: str) -> dict:
    """Clicks ``button`` and cancels the confirmation (nothing is sent), then clicks it again and
    confirms: the one tx the browser sent, once ``status`` says it is done."""
    page.click(button)
    page.click("#ask-cancel")
    assert sent == []
    page.click(button)
    page.click("#ask-ok")
    page.wait_for_selector(f"{status}[data-state]", timeout=60_000)
    assert page.locator(status).get_attribute("data-state") == "done", page.locator(status).inner_text()
    [body] = sent
    return json.loads(body)["tx"]


def test_a_provider_s_admin_lists_a_dataset_with_the_wizard(browser, site, tmp_path):
    """A new provider's admin makes the member's key in the browser (the association admits the member
    with it), fills in the listing wizard, sees the catalog's problems at their fields, fixes them, and
    publishes: assets.List is signed in the browser with the catalog's canonical payload and the
    listing is on chain and in the catalog."""
    ctx = context(browser, site, tmp_path, "zh-CN", phone=True)
    page = ctx.new_page()
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.post_data or "") if r.url.endswith("/api/tx") else None)
    sign_in(page, site, "hua")
    public_key = make_browser_key(page, site)
    with Gateway(site.gateway, identity=site.association, api_key=site.admin_token, chain_id="rdx-local",
                 timeout=60) as admin:
        retried(lambda: admin.send("members.Register", {"id": site.orchard, "name": "华南果园", "roles": ["provider"],
                                                        "public_key": public_key}))
        token = admin.create_key(site.orchard, "member_admin")["token"]
    site.keys_file.write_text(json.dumps({**json.loads(site.keys_file.read_text()), f"{site.orchard}/member_admin": token}))

    asset = f"{site.orchard}.harvest"
    page.goto(f"{site.url}/listing-wizard")
    fields = {"#w-asset_id": asset, "#w-commitment": "xyz", "#w-amount": "12", "#w-title": "荔枝产量（按果园）",
              "#w-description": "每个果园每月一行：品种、面积与产量。", "#w-industry": "agriculture",
              "#w-tags": "lychee, 产量", "#w-region": "CN-GD", "#w-data_start": "2024-01-01",
              "#w-last_updated": "2025-06-30", "#w-row_count": "500", "#w-licence": "CC-BY-4.0",
              "#w-usage_terms": "仅限隐私计算。",
              "#w-columns": "orchard_id | string | identifier | key | 果园编号\nvariety | category\nyield_kg | integer | internal"}
    for selector, value in fields.items():
        page.fill(selector, value)
    page.check("#w-op-psi")
    page.check("#w-op-aggregation")
    page.click("#check-draft")
    page.wait_for_selector("#problems")
    # the catalog's problems, each at its field: the commitment, a column without its sensitivity, a tag
    assert page.locator("#problem-commitment li").count() == 1
    assert page.locator("#problem-columns").inner_text().startswith("2")
    assert page.locator("#problem-tags").count() == 1
    assert page.locator("#w-title").input_value() == "荔枝产量（按果园）"  # what was typed stays
    assert page.locator("#publish-listing").count() == 0 and sent == []
    assert fits_width(page) and serious_violations(page) == []
    site.shot(page, "32-wizard-problems-zh-phone")
    commitment = hashlib.sha256(b"orchard rows").hexdigest()
    page.fill("#w-commitment", commitment)
    page.fill("#w-tags", "lychee, yield")
    page.fill("#w-columns", "orchard_id | string | identifier | key | 果园编号\nvariety | category | public\n"
                            "yield_kg | integer | internal")
    page.click("#check-draft")
    page.wait_for_selector("#publish-listing")
    payload = json.loads(page.locator("#publish-listing").get_attribute("data-payload"))
    assert payload["id"] == asset and payload["operations"] == ["aggregation", "psi"]
    assert payload["metadata"]["columns"][0] == {"name": "orchard_id", "type": "string", "description": "果园编号",
                                                 "sensitivity": "identifier", "join_key": True}
    assert fits_width(page) and serious_violations(page) == []
    site.shot(page, "33-wizard-valid-zh-phone")
    tx = signed_after_confirming(page, sent, "#publish-listing", "#publish-status")
    assert page.locator("#published").is_visible()
    assert (tx["type"], tx["signer"], tx["payload"]) == ("assets.List", site.orchard, payload)
    VerifyKey(base64.b64decode(public_key)).verify(
        canonicaljson.dump_bytes({k: v for k, v in tx.items() if k != "sig"}), base64.b64decode(tx["sig"]))
    with Gateway(site.gateway, api_key=token, timeout=30) as orchard:
        deadline = time.monotonic() + 60
        while True:
            try:
                listed = orchard.request("GET", f"/v1/listings/{asset}")
                break
            except Exception:
                assert time.monotonic() < deadline, "the published listing is not in the catalog"
                time.sleep(0.5)
    assert listed["provider"]["id"] == site.orchard and listed["commitment"] == commitment
    assert listed["metadata"]["title"] == "荔枝产量（按果园）" and listed["status"] == "listed"
    page.click("#published a")
    page.wait_for_selector("#commitment")
    assert page.locator("#commitment").inner_text() == commitment
    site.shot(page, "34-wizard-listed-zh-phone")

    # Its next version, from the listing's page: the wizard filled in from the catalog, one field changed.
    sent.clear()
    page.click("#update-listing")
    page.wait_for_selector("#updating")
    assert page.locator("#w-title").input_value() == "荔枝产量（按果园）"
    assert page.locator("#w-columns").input_value().splitlines()[0] == "orchard_id | string | identifier | key | 果园编号"
    page.fill("#w-title", "荔枝与龙眼产量（按果园）")
    page.click("#check-draft")
    page.wait_for_selector("#publish-listing")
    tx = signed_after_confirming(page, sent, "#publish-listing", "#publish-status")
    assert (tx["type"], tx["signer"], tx["payload"]["metadata"]["title"]) == ("assets.Update", site.orchard,
                                                                             "荔枝与龙眼产量（按果园）")
    assert {k: v for k, v in tx["payload"].items() if k != "metadata"} == \
        {k: v for k, v in payload.items() if k != "metadata"}  # nothing else changed
    with Gateway(site.gateway, api_key=token, timeout=30) as orchard:
        deadline = time.monotonic() + 60
        while (listed := orchard.request("GET", f"/v1/listings/{asset}"))["version"] < 2:
            assert time.monotonic() < deadline, "the listing's new version is not in the catalog"
            time.sleep(0.5)
    assert listed["metadata"]["title"] == "荔枝与龙眼产量（按果园）" and listed["commitment"] == commitment
    assert not [p for p in (site.root / "portal-state").rglob("*") if p.is_file()]
    ctx.close()


def test_relay_refuses_what_it_should_not_carry(browser, site, tmp_path):
    ctx = context(browser, site, tmp_path, "en-US")
    page = ctx.new_page()
    sign_in(page, site, "ann")  # the bank's member admin
    sid, csrf = session_id(ctx), page.locator("meta[name=csrf]").get_attribute("content")
    ctx.close()
    good = {"chain_id": "rdx-local", "nonce": 1, "payload": {}, "sig": "AA==", "signer": site.bank,
            "type": "access.Request"}
    headers = {**jar({"rdx_portal": sid}), "x-csrf-token": csrf, "origin": site.url}
    with httpx.Client(base_url=site.url, timeout=30) as http:
        assert http.post("/api/tx", json={"tx": good},
                         headers={**headers, "x-csrf-token": "no"}).status_code == 403
        assert http.post("/api/tx", json={"tx": good},
                         headers={**headers, "origin": "http://evil.example"}).status_code == 403
        for bad in ({**good, "signer": site.shop}, {**good, "type": "members.Rotate"}, {**good, "extra": 1},
                    {**good, "type": "access.Approve", "payload": {"id": "../../keys"}},
                    {**good, "payload": "not an object"}, "not a tx", None):
            assert http.post("/api/tx", json={"tx": bad}, headers=headers).status_code == 400
        # admitting a member is the association's: a member admin's members.Register is refused
        assert http.post("/api/tx", json={"tx": {**good, "type": "members.Register"}}, headers=headers).status_code == 403
        assert http.post("/api/tx", content=b"{" * 20_000, headers=headers).status_code == 400
        assert http.post("/api/tx", content=b"\xff\xfe", headers=headers).status_code == 400
        # A well-formed tx with a bad signature: the gateway refuses it, the portal says so.
        answer = http.post("/api/tx", json={"tx": good}, headers=headers)
        assert 400 <= answer.status_code < 500 and "detail" in answer.json()
    assert site.portal.process.alive()


def shown_within(page: Page, url: str, selector: str, seconds: float = 30):
    """Opens ``url`` again until ``selector`` is on it (the billing and catalog read models trail the
    chain a little); returns its locator, found or not."""
    deadline = time.monotonic() + seconds
    while True:
        page.goto(url)
        found = page.locator(selector)
        if found.count() or time.monotonic() > deadline:
            return found
        time.sleep(1)


def downloaded(page: Page) -> str:
    """The text of the page's CSV download (its #download link)."""
    with page.expect_download() as download:
        page.click("#download")
    return Path(download.value.path()).read_text()


def submit_job(page: Page) -> str:
    """Submits the jobs page's form; the browser goes on to the job's page."""
    job_id = page.locator("#job-id").input_value()
    page.click("#send-job")
    page.wait_for_function(f"location.pathname === '/jobs/{job_id}' || "
                           "document.getElementById('job-submit-status')?.dataset.state === 'failed'", timeout=60_000)
    assert page.url.endswith(f"/jobs/{job_id}"), page.locator("#job-submit-status").inner_text()
    return job_id


def test_a_job_signed_in_the_browser_followed_live_then_the_statement(browser, site, tmp_path):
    """The bank's admin moves the bank's key into its browser, submits a PSI job on its grant from the
    jobs page (the quote as its price), follows it live to completed (server-sent events, no polling
    by the page), sees its result on chain, then reads the statement and downloads it as CSV."""
    ctx = context(browser, site, tmp_path, "en-US")
    page = ctx.new_page()
    page.on("console", lambda m: print("browser:", m.text))
    fetched: list[str] = []
    page.on("request", lambda r: fetched.append(r.url))
    sign_in(page, site, "ann")
    public_key = make_browser_key(page, site)
    with Gateway(site.gateway, identity=site.bank_identity, chain_id="rdx-local", timeout=60) as bank:
        bank.send("members.RotateKey", {"public_key": public_key})
    page.goto(f"{site.url}/jobs")
    grant = page.locator("#job-grant option").first
    assert grant.get_attribute("value") == site.phones_grant
    quote = int(grant.get_attribute("data-quote"))
    assert quote >= 25 and page.locator("#job-price").input_value() == str(quote)
    assert serious_violations(page) == []
    site.shot(page, "11-jobs-new-en")
    job_id = submit_job(page)
    page.wait_for_function("document.getElementById('job').dataset.status === 'completed'", timeout=180_000)
    assert page.locator("#job-status").inner_text() == "completed"
    assert re.fullmatch(r"[0-9a-f]{64}", page.locator("#job-result-hash").inner_text())
    assert serious_violations(page) == []
    site.shot(page, "12-job-completed-en")
    # Live by one stream: the page asked for the job's events once and never polled its record.
    assert [u for u in fetched if u.endswith(f"/jobs/{job_id}/events")] == [f"{site.url}/jobs/{job_id}/events"]
    assert len([u for u in fetched if u == f"{site.url}/jobs/{job_id}"]) == 1
    with Gateway(site.gateway, api_key=site.keys[f"{site.bank}/member_admin"], timeout=30) as bank:
        record = bank.request("GET", f"/v1/jobs/{job_id}")
    assert record["status"] == "completed" and record["result_hash"] == page.locator("#job-result-hash").inner_text()

    # The statement: the job's charge is there (the billing read model trails the chain a little).
    shown_within(page, f"{site.url}/statements", f"#entries a[href='/jobs/{job_id}']")
    assert page.locator(f"#entries a[href='/jobs/{job_id}']").count() >= 1
    assert page.locator("#closing").inner_text() != page.locator("#opening").inner_text()
    assert serious_violations(page) == []
    site.shot(page, "13-statement-en")
    text = downloaded(page)
    assert text.splitlines()[0] == "height,time,kind,amount,counterparty,job,reference" and job_id in text
    # The invoice: the job's charge on the telco's listing, on the page and in its CSV.
    line = shown_within(page, f"{site.url}/invoices", f"#lines tr:has(a[href='/jobs/{job_id}'])")
    assert line.count() == 1 and site.phones_asset in line.inner_text()
    assert serious_violations(page) == []
    site.shot(page, "13b-invoice-en")
    text = downloaded(page)
    assert text.splitlines()[0] == "height,time,job,asset,provider,charge" and job_id in text
    # The access inbox: the grant the job ran on, with its expiry and runs left as the chain records them.
    with Gateway(site.gateway, api_key=site.keys[f"{site.bank}/member_admin"], timeout=30) as bank:
        [held] = [g for g in bank.my_access() if g["id"] == site.phones_grant]
    assert held["status"] == "granted" and held["max_runs"] == 5 and held["runs_used"] >= 1  # this job counted
    page.goto(f"{site.url}/access")
    row = page.locator(f"tr[id='grant-{site.phones_grant}']")
    assert row.locator(".runs-left").inner_text() == f"{5 - held['runs_used']} of 5"
    assert row.locator(".expires").inner_text() == \
        time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(held["expires_at"]))
    assert serious_violations(page) == []
    site.shot(page, "13c-access-runs-left-en")
    site.bank_ctx, site.bank_page = ctx, page  # the next journey's running job is signed in this browser


def test_an_he_scoring_job_from_the_jobs_form(browser, site, tmp_path):
    """The jobs form beyond PSI: the bank's admin chooses HE scoring, the form shows that computation's
    fields and the grant it may run on (not the PSI grant) with its quote as the price; the job, signed in
    the browser, runs on the telco's model and the bank's applicants to completed."""
    page = site.bank_page
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.post_data or "") if r.url.endswith("/api/tx") else None)
    page.goto(f"{site.url}/jobs")
    page.select_option("#job-type", "he_scoring")
    assert page.locator("#job-features").is_visible() and page.locator("#job-key").is_hidden()
    assert page.locator(f"#job-grant option[value='{site.phones_grant}']").is_disabled()
    assert page.locator("#job-grant").input_value() == site.scoring_grant
    quote = int(page.locator(f"#job-grant option[value='{site.scoring_grant}']").get_attribute("data-quote"))
    assert quote >= 30 and page.locator("#job-price").input_value() == str(quote)
    page.fill("#job-dataset", "applicants")
    page.fill("#job-features", "income, debt, age")
    page.fill("#job-id-column", "id")
    assert serious_violations(page) == []
    site.shot(page, "13c-jobs-he-scoring-en")
    job_id = submit_job(page)
    [body] = sent
    tx = json.loads(body)["tx"]
    assert tx["type"] == "jobs.Submit" and tx["payload"]["type"] == "he_scoring" and tx["payload"]["max_price"] == quote
    assert tx["payload"]["inputs"] == [{"asset": site.model_asset, "grant": site.scoring_grant}]
    assert tx["payload"]["params"] == {"dataset": "applicants", "features": ["income", "debt", "age"], "id": "id"}
    page.wait_for_function("['completed', 'failed', 'aborted'].includes(document.getElementById('job').dataset.status)",
                           timeout=180_000)
    assert page.locator("#job").get_attribute("data-status") == "completed", page.locator("#job-reason").inner_text()
    with Gateway(site.gateway, api_key=site.keys[f"{site.bank}/member_admin"], timeout=30) as bank:
        record = bank.request("GET", f"/v1/jobs/{job_id}")
    assert record["type"] == "he_scoring" and record["status"] == "completed" and record["consumer"] == site.bank
    assert re.fullmatch(r"[0-9a-f]{64}", record["result_hash"])
    site.shot(page, "13d-he-scoring-completed-en")


def test_the_association_suspends_a_member_and_its_running_job_is_aborted(browser, site, tmp_path):
    """Association staff (their role from the IdP, Cedar deciding) suspend the bank from the members page
    after a confirmation, signed with the association's key in their browser: the bank's running job,
    followed live in the bank admin's browser, is aborted. Then they resume the bank."""
    staff = context(browser, site, tmp_path, "zh-CN")
    page = staff.new_page()
    sign_in(page, site, "zhou")
    public_key = site.staff_key = make_browser_key(page, site)
    with Gateway(site.gateway, identity=site.association, chain_id="rdx-local", timeout=60) as officer:
        officer.send("members.RotateKey", {"public_key": public_key})  # the officer's key moves to the browser
    # A member's admin has no staff page.
    bank_page = site.bank_page
    assert httpx.get(f"{site.url}/staff/members", headers=jar({"rdx_portal": session_id(site.bank_ctx)})).status_code == 403

    bank_page.goto(f"{site.url}/jobs")
    bank_page.fill("#job-dataset", "everyone")  # the large set: the job runs for a while
    job_id = submit_job(bank_page)
    assert bank_page.locator("#job").get_attribute("data-status") == "running"

    page.goto(f"{site.url}/staff/members")
    row = page.locator(f"tr[id='member-{site.bank}']")
    assert row.locator(".status").inner_text() == "active" and int(row.locator(".running").inner_text()) >= 1
    assert serious_violations(page) == []
    site.shot(page, "14-staff-members-zh")
    row.locator("button[data-member-action]").click()
    assert page.locator("#confirm").is_visible()
    page.locator("#confirm-cancel").click()  # cancelling sends nothing
    assert page.locator("#member-status").inner_text() == ""
    row.locator("button[data-member-action]").click()
    page.fill("#confirm-reason", "审计发现异常 audit finding")
    site.shot(page, "15-staff-confirm-zh")
    page.locator("#confirm-ok").click()
    page.wait_for_selector("#member-status[data-state]", timeout=60_000)
    assert page.locator("#member-status").get_attribute("data-state") == "done", page.locator("#member-status").inner_text()

    bank_page.wait_for_function("document.getElementById('job').dataset.status === 'aborted'", timeout=30_000)
    assert bank_page.locator("#job-status").inner_text() == "aborted"
    site.shot(bank_page, "16-job-aborted-en")
    page.reload()
    row = page.locator(f"tr[id='member-{site.bank}']")
    assert row.locator(".status").inner_text() == "suspended"
    row.locator("button[data-member-action]").click()
    page.locator("#confirm-reason").fill("复核完毕")
    page.locator("#confirm-ok").click()
    page.wait_for_selector("#member-status[data-state]", timeout=60_000)
    assert page.locator("#member-status").get_attribute("data-state") == "done", page.locator("#member-status").inner_text()
    page.reload()
    assert page.locator(f"tr[id='member-{site.bank}'] .status").inner_text() == "active"
    site.shot(page, "17-staff-resumed-zh")
    site.staff_ctx, site.staff_page = staff, page  # the next journey's kill switches are signed in this browser


def test_the_association_admits_a_member_from_the_members_page(browser, site, tmp_path):
    """Association staff admit a new member from the members page: its id, name, roles, the public key
    its admin made, its compute node's key and endpoint; members.Register is signed in their browser with
    the association's key (after a confirmation, cancelled once) and the member is on chain as given."""
    page = site.staff_page
    newcomer = f"farm{site.shop[len('shop'):]}"
    member_key, node_key = Identity.generate(newcomer).public_key, Identity.generate(f"{newcomer}.node").public_key
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.post_data or "") if r.url.endswith("/api/tx") else None)
    page.goto(f"{site.url}/staff/members")
    page.fill("#admit-id", newcomer)
    page.fill("#admit-name", "丰收农场")
    page.fill("#admit-key", member_key)
    page.fill("#admit-node-key", node_key)
    page.click("#admit")  # no role chosen: the page says so and sends nothing
    assert page.locator("#admit-status").get_attribute("data-state") == "failed"
    page.check("#admit-role-provider")
    page.check("#admit-role-consumer")
    page.click("#admit")  # a node key without its endpoint: refused the same way
    assert page.locator("#admit-status").get_attribute("data-state") == "failed"
    page.fill("#admit-endpoint", "farm-node.example:50051")
    page.click("#admit")
    assert page.locator("#ask").is_visible() and newcomer in page.locator("#ask-text").inner_text()
    page.click("#ask-cancel")  # cancelling sends nothing
    assert sent == [] and page.locator("#admit-status").inner_text() == ""
    assert serious_violations(page) == []
    site.shot(page, "17b-admit-form-zh")
    page.click("#admit")
    page.click("#ask-ok")
    page.wait_for_selector("#admit-status[data-state]", timeout=60_000)
    assert page.locator("#admit-status").get_attribute("data-state") == "done", page.locator("#admit-status").inner_text()
    [body] = sent
    tx = json.loads(body)["tx"]
    assert tx["type"] == "members.Register" and tx["signer"] == "association"
    VerifyKey(base64.b64decode(site.staff_key)).verify(
        canonicaljson.dump_bytes({k: v for k, v in tx.items() if k != "sig"}), base64.b64decode(tx["sig"]))

    with Gateway(site.gateway, api_key=site.admin_token, timeout=30) as admin:
        deadline = time.monotonic() + 30
        while not [m for m in admin.request("GET", "/v1/members") if m["id"] == newcomer]:
            assert time.monotonic() < deadline, "the admitted member is not on chain"
            time.sleep(0.5)
        [member] = [m for m in admin.request("GET", "/v1/members") if m["id"] == newcomer]
        account = admin.request("GET", f"/v1/accounts/{newcomer}")
        node = admin.request("GET", f"/v1/accounts/{newcomer}.node")
    assert member == {"id": newcomer, "name": "丰收农场", "roles": ["consumer", "provider"], "status": "active",
                      "public_key": member_key, "node": {"account": f"{newcomer}.node",
                                                         "endpoint": "farm-node.example:50051", "public_key": node_key}}
    assert account["public_key"] == member_key and account["kind"] == "member"
    assert node["public_key"] == node_key and node["member"] == newcomer
    page.goto(f"{site.url}/staff/members")
    assert page.locator(f"tr[id='member-{newcomer}'] .status").inner_text() == "active"
    row = page.locator(f"tr[id='member-{newcomer}']")  # its key and its node's, as the chain has them
    assert row.locator(".key").inner_text() == member_key
    assert "farm-node.example:50051" in row.locator(".node").inner_text() and node_key in row.locator(".node").inner_text()
    page.set_viewport_size(PHONE)
    assert fits_width(page)
    site.shot(page, "17c-admitted-zh-phone")
    page.set_viewport_size({"width": 1280, "height": 900})


def test_the_association_approves_an_l4_request_from_its_queue(browser, site, tmp_path):
    """The bank asked for the telco's L4 (core) listing and the telco approved: the grant waits for the
    association. Staff see it on the approval queue (not the requests that need only a provider) and
    approve it, signed with the association's key in their browser; the grant is then granted on chain.
    A second such request is rejected with a reason: it is rejected on chain. Then the network page and
    billing's reconciliation (equal to the chain, checked when the page asked)."""
    page = site.staff_page
    page.goto(f"{site.url}/staff/approvals")
    row = page.locator(f"tr[id='grant-{site.l4_grant}']")
    assert row.count() == 1 and row.locator(".approvals").inner_text() == "provider"
    assert page.locator(f"tr[id='grant-{site.scoring_grant}']").count() == 0  # L3: the provider's approval only
    assert serious_violations(page) == []
    page.set_viewport_size(PHONE)
    assert fits_width(page)
    site.shot(page, "17d-approvals-zh-phone")
    page.set_viewport_size({"width": 1280, "height": 900})
    row.locator("button[data-approve]").click()
    page.wait_for_selector("#approve-status[data-state]", timeout=60_000)
    assert page.locator("#approve-status").get_attribute("data-state") == "done", page.locator("#approve-status").inner_text()
    with Gateway(site.gateway, api_key=site.keys[f"{site.bank}/member_admin"], timeout=30) as bank:
        [grant] = [g for g in bank.my_access() if g["id"] == site.l4_grant]
    assert grant["status"] == "granted" and grant["approvals"] == ["association", "provider"]
    page.reload()
    assert page.locator(f"tr[id='grant-{site.l4_grant}']").count() == 0
    # The other request is rejected, after the confirmation that asks for the reason.
    other = f"g-vipx-{site.l4_grant[len('g-vip-'):]}"
    page.locator(f"tr[id='grant-{other}'] button[data-tx='access.Reject']").click()
    page.fill("#confirm-reason", "用途不符 purpose does not fit")
    page.locator("#confirm-ok").click()
    page.wait_for_selector("#approve-status[data-state]", timeout=60_000)
    assert page.locator("#approve-status").get_attribute("data-state") == "done", page.locator("#approve-status").inner_text()
    with Gateway(site.gateway, api_key=site.keys[f"{site.bank}/member_admin"], timeout=30) as bank:
        [grant] = [g for g in bank.my_access() if g["id"] == other]
    assert grant["status"] == "rejected"
    page.reload()
    assert page.locator(f"tr[id='grant-{other}']").count() == 0

    # The network page: the local exchange's one validator and its latest block, as the chain node says.
    page.goto(f"{site.url}/staff/network")
    assert page.locator("#network").inner_text() == "rdx-local" and int(page.locator("#height").inner_text()) > 0
    assert page.locator("#validators tbody tr").count() == int(page.locator("#validators-total").inner_text()) == 1
    # ...and what Kafka holds: the relay's lag in blocks, and the dead letters per dead-letter topic.
    assert re.fullmatch(r"\d+ 个区块（中继最后发布的链上事件来自区块 \d+）", page.locator("#relay-lag").inner_text())
    assert page.locator("#dead-letters td.topic").all_inner_texts() == [
        "rdx.audit.v1.dlq", "rdx.chain.events.v1.dlq", "rdx.jobs.status.v1.dlq"]
    assert all(c.isdigit() for c in page.locator("#dead-letters td.count").all_inner_texts())
    assert serious_violations(page) == []
    site.shot(page, "17e-network-zh")

    # Billing's reconciliation, run when the page asks: after every journey's jobs, deposits and aborts,
    # the billing read model equals the chain (it trails the chain a little: the page is opened again).
    asked = time.time()
    assert shown_within(page, f"{site.url}/staff/reconciliation", "#equal").count() == 1
    assert page.locator("#differences").count() == 0
    checked = re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", page.locator("#checked-at").inner_text())
    assert checked and time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(asked - 1)) <= checked.group(0)
    assert serious_violations(page) == []
    site.shot(page, "17f-reconciliation-zh")


def test_the_association_publishes_a_policy_version_and_compares_it(browser, site, tmp_path):
    """Staff open the policy's versions, publish the next one from their browser (governance.PublishPolicy
    signed with the association's key, after a confirmation, cancelled once) and see it on chain, listed,
    and its change from the version before shown as a diff."""
    page = site.staff_page
    with Gateway(site.gateway, api_key=site.admin_token, timeout=30) as admin:
        before = admin.request("GET", "/v1/policy")
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.post_data or "") if r.url.endswith("/api/tx") else None)
    page.goto(f"{site.url}/staff/policy")
    assert page.locator(f"tr[id='version-{before['version']}']").count() == 1
    assert page.locator("#policy-text").input_value() == before["text"]
    assert serious_violations(page) == []
    added = "// 门户发布的版本 published from the portal"
    text = before["text"].rstrip("\n") + "\n" + added + "\n"
    page.fill("#policy-text", text)
    tx = signed_after_confirming(page, sent, "#publish-policy-send", "#policy-status")
    assert (tx["type"], tx["signer"], tx["payload"]["version"]) == ("governance.PublishPolicy", "association",
                                                                    before["version"] + 1)
    VerifyKey(base64.b64decode(site.staff_key)).verify(
        canonicaljson.dump_bytes({k: v for k, v in tx.items() if k != "sig"}), base64.b64decode(tx["sig"]))
    with Gateway(site.gateway, api_key=site.admin_token, timeout=30) as admin:
        deadline = time.monotonic() + 30
        while (now := admin.request("GET", "/v1/policy"))["version"] == before["version"]:
            assert time.monotonic() < deadline, "the new policy version is not in force"
            time.sleep(0.5)
        versions = [v["version"] for v in admin.request("GET", "/v1/policy/versions")]
    assert now["version"] == before["version"] + 1 and now["text"] == text
    assert versions[-2:] == [before["version"], now["version"]]
    page.goto(f"{site.url}/staff/policy")
    assert page.locator(f"tr[id='version-{now['version']}']").count() == 1
    assert page.locator("#diff .add").all_inner_texts() == ["+" + added]
    assert page.locator("#diff .del").count() == 0
    assert serious_violations(page) == []
    page.set_viewport_size(PHONE)
    assert fits_width(page)
    site.shot(page, "17f-policy-versions-zh-phone")
    page.set_viewport_size({"width": 1280, "height": 900})


def test_staff_abort_a_running_job_and_suspend_a_listing(browser, site, tmp_path):
    """The kill switch for one job and for one listing: association staff abort the bank's running job
    from the running-jobs page (the bank admin's open job page turns to aborted by itself), then suspend
    a listing from its page, each after a confirmation, signed with the association's key in their browser."""
    page, bank_page = site.staff_page, site.bank_page
    bank_page.goto(f"{site.url}/jobs")
    bank_page.fill("#job-dataset", "everyone")  # the large set: the job runs for a while
    job_id = submit_job(bank_page)
    page.goto(f"{site.url}/staff/jobs")
    row = page.locator(f"tr[id='job-{job_id}']")
    assert row.locator(".status").inner_text() == "运行中"
    assert serious_violations(page) == []
    site.shot(page, "21-staff-jobs-zh")
    page.set_viewport_size(PHONE)
    assert fits_width(page)
    site.shot(page, "21b-staff-jobs-zh-phone")
    page.set_viewport_size({"width": 1280, "height": 900})
    row.locator("button[data-tx]").click()
    page.fill("#confirm-reason", "紧急停止 kill switch")
    page.locator("#confirm-ok").click()
    page.wait_for_selector("#abort-status[data-state]", timeout=60_000)
    assert page.locator("#abort-status").get_attribute("data-state") == "done", page.locator("#abort-status").inner_text()
    bank_page.wait_for_function("document.getElementById('job').dataset.status === 'aborted'", timeout=30_000)
    assert "紧急停止" in bank_page.locator("#job-reason").inner_text()
    with Gateway(site.gateway, api_key=site.keys[f"{site.bank}/member_admin"], timeout=30) as bank:
        record = bank.request("GET", f"/v1/jobs/{job_id}")  # the chain's record, through the gateway
    assert record["status"] == "aborted" and record["ended_reason"] == "紧急停止 kill switch"
    page.reload()
    assert page.locator(f"tr[id='job-{job_id}']").count() == 0

    page.goto(f"{site.url}/listings/{site.asset}")
    assert page.locator("#status").inner_text() == "listed"
    assert serious_violations(page) == []
    page.click("#suspend-listing")
    page.fill("#confirm-reason", "数据来源存疑")
    page.locator("#confirm-ok").click()
    page.wait_for_selector("#suspend-status[data-state]", timeout=60_000)
    assert page.locator("#suspend-status").get_attribute("data-state") == "done", page.locator("#suspend-status").inner_text()
    # the catalog follows the chain's AssetSuspended event
    shown_within(page, f"{site.url}/listings/{site.asset}", "#versions td:text-is('AssetSuspended')")
    assert page.locator("#status").inner_text() == "suspended" and page.locator("#suspend-listing").count() == 0
    site.shot(page, "22-listing-suspended-zh")
    site.staff_ctx.close()  # the bank admin's browser, which holds the bank's key, serves the last journey


def test_jobs_and_statement_pages_at_phone_width(browser, site, tmp_path):
    ctx = context(browser, site, tmp_path, "zh-CN", phone=True)
    page = ctx.new_page()
    sign_in(page, site, "ann")
    for path, shot in (("/jobs", "18-jobs-zh-phone"), ("/statements", "19-statement-zh-phone"),
                       ("/invoices", "19b-invoice-zh-phone")):
        page.goto(site.url + path)
        assert fits_width(page) and serious_violations(page) == [], path
        site.shot(page, shot)
    page.goto(site.url + "/jobs")
    page.locator("#jobs a").first.click()
    page.wait_for_url(re.compile(r".*/jobs/job-[0-9a-f]+$"))
    assert page.locator("#job-status").inner_text() in ("已完成", "已中止")
    assert fits_width(page) and serious_violations(page) == []
    site.shot(page, "20-job-zh-phone")
    ctx.close()


def test_jobs_statements_and_staff_pages_refuse_what_they_should(browser, site, tmp_path):
    sessions = {}
    for user in ("li.na", "ann"):
        ctx = context(browser, site, tmp_path, "en-US")
        page = ctx.new_page()
        sign_in(page, site, user)
        sessions[user] = (session_id(ctx), page.locator("meta[name=csrf]").get_attribute("content"))
        ctx.close()
    analyst, admin = ({"rdx_portal": sessions[u][0]} for u in ("li.na", "ann"))
    with httpx.Client(base_url=site.url, follow_redirects=False, timeout=30) as http:
        for path in ("/jobs", "/statements", "/statements.csv", "/invoices", "/invoices.csv", "/staff/members",
                     "/staff/jobs", "/staff/approvals", "/audit", "/jobs/job-x"):
            answer = http.get(path)  # no session: to sign-in, with the way back
            assert answer.status_code == 303 and answer.headers["location"].startswith("/login?next=")
        assert http.get("/jobs/job-x/events").status_code == 401
        for bad in ("NOT..valid", "a" * 81, "no-such-job", "..%2F..%2Fkeys"):
            assert http.get(f"/jobs/{bad}", headers=jar(analyst)).status_code == 404
            assert http.get(f"/jobs/{bad}/events", headers=jar(analyst)).status_code == 404
        # a member's people have no staff page, whatever their role
        for who in (analyst, admin):
            assert http.get("/staff/members", headers=jar(who)).status_code == 403
            assert http.get("/staff/jobs", headers=jar(who)).status_code == 403
            assert http.get("/staff/approvals", headers=jar(who)).status_code == 403
            assert http.get("/audit", headers=jar(who)).status_code == 403
        # the analyst's page lists jobs but offers no form until its member delegates a key to it
        assert 'id="submit-job"' not in http.get("/jobs", headers=jar(analyst)).text
        # the relay takes each type only from the role that makes it
        tx = {"chain_id": "rdx-local", "nonce": 1, "sig": "AA==", "signer": site.bank}
        for user, type_, payload in (("li.na", "jobs.Submit", {"id": "job-x"}),
                                     ("ann", "members.Suspend", {"member": site.telco.account, "reason": "x"}),
                                     ("ann", "members.Reinstate", {"member": site.bank}),
                                     ("ann", "jobs.Abort", {"job": "job-x", "reason": "x"}),
                                     ("ann", "assets.Suspend", {"id": site.phones_asset, "reason": "x"})):
            sid, csrf = sessions[user]
            answer = http.post("/api/tx", json={"tx": {**tx, "type": type_, "payload": payload}},
                               headers={**jar({"rdx_portal": sid}), "x-csrf-token": csrf, "origin": site.url})
            assert answer.status_code == 403 and "detail" in answer.json()
        csv_text = http.get("/statements.csv", headers=jar(admin)).text
        assert csv_text.startswith("height,time,kind,amount,counterparty,job,reference")
    assert site.portal.process.alive()


def test_the_association_s_auditor_checks_the_audit_trail_against_its_anchors(browser, site, tmp_path):
    """The association's auditor reads the gateway's audit trail at phone width: the anchors on chain
    that the page's records fully cover are recomputed and match. A record then changed in the
    gateway's own database (as a dishonest operator would) is shown as not matching, itself and its
    anchor; put back, it matches again."""
    ctx = context(browser, site, tmp_path, "zh-CN", phone=True)
    page = ctx.new_page()
    sign_in(page, site, "shen")
    page.goto(f"{site.url}/audit")
    verified = page.locator("#anchors tr[data-verdict='verified']")
    assert verified.count() >= 1 and page.locator("[data-verdict='mismatch']").count() == 0
    assert page.locator("#records tr[data-intact='no']").count() == 0
    assert page.locator("#records tr[data-verdict='verified']").count() >= 1
    assert fits_width(page) and serious_violations(page) == []
    site.shot(page, "23-audit-zh-phone")

    anchor_first = int(verified.first.locator("td").first.inner_text().split("–")[0])
    seq = anchor_first  # a record under a verified anchor, in the gateway's database
    with sqlite3.connect(site.state / "gateway" / "audit.sqlite") as db:
        [(decision,)] = db.execute("SELECT decision FROM audit WHERE seq = ?", (seq,)).fetchall()
        db.execute("UPDATE audit SET decision = ? WHERE seq = ?", ("deny" if decision != "deny" else "allow", seq))
    try:
        page.reload()
        assert page.locator(f"#record-{seq}").get_attribute("data-intact") == "no"
        assert page.locator("#anchors tr[data-verdict='mismatch']").count() == 1
        site.shot(page, "24-audit-tampered-zh-phone")
    finally:
        with sqlite3.connect(site.state / "gateway" / "audit.sqlite") as db:
            db.execute("UPDATE audit SET decision = ? WHERE seq = ?", (decision, seq))
    page.reload()
    assert page.locator("[data-verdict='mismatch']").count() == 0
    with httpx.Client(base_url=site.url, follow_redirects=False, timeout=30) as http:
        assert http.get("/audit").status_code == 303
        assert http.get("/audit", params={"after": "-1"}, headers=jar({"rdx_portal": session_id(ctx)})).status_code == 400
    ctx.close()


def test_a_member_admin_makes_rotates_and_revokes_an_api_key(browser, site, tmp_path):
    """The bank's admin makes an analyst key on the API keys page (phone width): its token is shown once
    and works at the gateway; replacing it gives a new token and the old one stops working; revoking
    the new one stops it too. The portal's own key for the bank has no button to revoke it."""
    def works(token: str) -> int:
        return httpx.get(f"{site.gateway}/v1/policy", headers={"authorization": f"Bearer {token}"}, timeout=30).status_code

    ctx = context(browser, site, tmp_path, "en-US", phone=True)
    page = ctx.new_page()
    sign_in(page, site, "ann")
    page.goto(f"{site.url}/api-keys")
    own = site.keys[f"{site.bank}/member_admin"][4:].split(".")[0]
    assert page.locator(f"tr[id='key-{own}'] button").count() == 0
    page.select_option("#key-role", "analyst")
    page.click("#make-api-key")
    page.wait_for_selector("#new-token")
    token = page.locator("#new-token").inner_text()
    key_id = token[4:].split(".")[0]
    assert works(token) == 200
    assert fits_width(page) and serious_violations(page) == []
    site.shot(page, "25-api-key-made-en-phone")
    page.goto(f"{site.url}/api-keys")
    assert page.locator("#new-token").count() == 0 and token not in page.content()  # shown once

    page.locator(f"tr[id='key-{key_id}'] button.rotate").click()
    page.wait_for_selector("#new-token")
    replaced = page.locator("#new-token").inner_text()
    assert replaced != token and works(replaced) == 200 and works(token) == 401
    page.locator(f"tr[id='key-{replaced[4:].split('.')[0]}'] button.revoke").click()
    page.wait_for_url(re.compile(r".*/api-keys$"))
    assert works(replaced) == 401
    assert "revoked" in page.locator(f"tr[id='key-{replaced[4:].split('.')[0]}'] .status").inner_text()
    site.shot(page, "26-api-key-revoked-en-phone")
    ctx.close()


def sent_envelopes(bodies: list[tuple[str, str]]) -> list[dict]:
    """The signed txs among the bodies a browser sent; every other body must be the IdP's sign-in form."""
    others = [b for u, b in bodies if not u.endswith("/api/tx")]
    assert all(set(parse_qs(b)) <= {"challenge", "username", "password", "csrf"} for b in others), others
    txs = [json.loads(b)["tx"] for u, b in bodies if u.endswith("/api/tx")]
    assert all(set(tx) == {"chain_id", "nonce", "payload", "sig", "signer", "type"} for tx in txs)
    return txs


def test_an_analyst_submits_a_job_with_a_key_its_member_admin_delegated(browser, site, tmp_path):
    """The bank's analyst makes its own key in its browser (phone width) for the account
    <bank>.delegate-lina; the bank's admin delegates that public key (jobs and access requests, 30
    days) after a confirmation, signed with the bank's key in its browser; the analyst submits a PSI job
    signed by the delegate key and it runs to completed as the bank's job, then asks for access from a
    listing's page. No private key leaves either browser. The admin then ends the delegate, and the
    analyst's forms are gone."""
    ctx = context(browser, site, tmp_path, "zh-CN", phone=True)
    page = ctx.new_page()
    bodies: list[tuple[str, str]] = []
    page.on("request", lambda r: bodies.append((r.url, r.post_data or "")) if r.method != "GET" else None)
    sign_in(page, site, "li.na")
    page.goto(f"{site.url}/jobs")
    assert page.locator("#no-delegate").count() == 1 and page.locator("#submit-job").count() == 0
    page.goto(f"{site.url}/keys")
    page.fill("#label", "lina")
    page.click("#choose-label")
    page.wait_for_url(re.compile(r".*/keys\?label=lina$"))
    account = f"{site.bank}.delegate-lina"
    assert page.locator("#account-name").inner_text() == account
    page.click("#make-key")
    page.wait_for_function("document.getElementById('public-key').textContent.endsWith('=')")
    public_key = page.locator("#public-key").inner_text()
    assert held_key(page, account) == NOT_EXTRACTABLE
    assert fits_width(page) and serious_violations(page) == []
    site.shot(page, "27-analyst-key-zh-phone")

    admin = site.bank_page  # the bank's admin, whose browser holds the bank's key (an earlier journey)
    admin_bodies: list[tuple[str, str]] = []
    admin.on("request", lambda r: admin_bodies.append((r.url, r.post_data or "")) if r.method != "GET" else None)
    admin.goto(f"{site.url}/delegates")
    assert admin.locator(f"tr[id='delegate-{account}']").count() == 0
    admin.fill("#delegate-label", "lina")
    admin.fill("#delegate-key", public_key)
    admin.fill("#delegate-days", "30")
    admin.check("#power-2")  # access requests too
    admin.click("#delegate")
    assert admin.locator("#ask").is_visible() and account in admin.locator("#ask-text").inner_text()
    admin.click("#ask-cancel")  # cancelling sends nothing
    assert admin.locator("#delegate-status").inner_text() == ""
    admin.click("#delegate")
    site.shot(admin, "28-delegate-confirm-en")
    admin.click("#ask-ok")
    admin.wait_for_selector("#delegate-status[data-state]", timeout=60_000)
    assert admin.locator("#delegate-status").get_attribute("data-state") == "done", admin.locator("#delegate-status").inner_text()
    admin.reload()
    row = admin.locator(f"tr[id='delegate-{account}']")
    assert row.locator(".status").inner_text() == "active" and "access.Request, jobs.Submit" in row.inner_text()
    assert serious_violations(admin) == []
    admin.set_viewport_size(PHONE)
    assert fits_width(admin)
    site.shot(admin, "29-delegates-en-phone")
    admin.set_viewport_size({"width": 1280, "height": 900})

    page.goto(f"{site.url}/jobs")
    assert page.locator("#job-signer").input_value() == account
    assert page.locator("#job-grant option").first.get_attribute("value") == site.phones_grant
    assert fits_width(page) and serious_violations(page) == []
    site.shot(page, "30-analyst-jobs-zh-phone")
    job_id = submit_job(page)
    page.wait_for_function("document.getElementById('job').dataset.status === 'completed'", timeout=180_000)
    site.shot(page, "31-analyst-job-completed-zh-phone")
    with Gateway(site.gateway, api_key=site.keys[f"{site.bank}/member_admin"], timeout=30) as bank:
        record = bank.request("GET", f"/v1/jobs/{job_id}")
    assert record["status"] == "completed" and record["consumer"] == site.bank  # the delegate acts as its member

    page.goto(f"{site.url}/listings/{site.phones_asset}")
    assert page.locator("#request-signer").input_value() == account
    grant = page.locator("#grant").input_value()
    page.fill("#purpose", "分析师申请 analyst's request")
    page.click("#send-request")
    page.wait_for_selector("#request-status[data-state]", timeout=60_000)
    assert page.locator("#request-status").get_attribute("data-state") == "done", page.locator("#request-status").inner_text()
    with Gateway(site.gateway, api_key=site.keys[f"{site.bank}/member_admin"], timeout=30) as bank:
        [asked] = [g for g in bank.my_access() if g["id"] == grant]
    assert (asked["consumer"], asked["asset"], asked["status"]) == (site.bank, site.phones_asset, "pending")

    # What left the browsers: signed envelopes and the sign-in form, nothing else; the job's tx is
    # signed by the delegate account with the key made in the analyst's browser.
    job_tx, request_tx = sent_envelopes(bodies)
    assert (job_tx["type"], job_tx["signer"], job_tx["payload"]["id"]) == ("jobs.Submit", account, job_id)
    assert (request_tx["type"], request_tx["signer"], request_tx["payload"]["id"]) == ("access.Request", account, grant)
    for tx in (job_tx, request_tx):
        VerifyKey(base64.b64decode(public_key)).verify(
            canonicaljson.dump_bytes({k: v for k, v in tx.items() if k != "sig"}), base64.b64decode(tx["sig"]))
    [delegated] = sent_envelopes(admin_bodies)
    assert (delegated["type"], delegated["signer"]) == ("members.Delegate", site.bank)
    assert delegated["payload"]["public_key"] == public_key
    assert delegated["payload"]["powers"] == ["jobs.Submit", "access.Request"]
    assert not [p for p in (site.root / "portal-state").rglob("*") if p.is_file()]

    # The admin ends the delegate (after a confirmation): the analyst's forms are gone.
    admin.locator(f"tr[id='delegate-{account}'] button[data-undelegate]").click()
    admin.click("#ask-ok")
    admin.wait_for_selector("#undelegate-status[data-state]", timeout=60_000)
    assert admin.locator("#undelegate-status").get_attribute("data-state") == "done", admin.locator("#undelegate-status").inner_text()
    admin.reload()
    assert admin.locator(f"tr[id='delegate-{account}'] .status").inner_text() == "ended"
    assert admin.locator(f"tr[id='delegate-{account}'] button").count() == 0
    page.goto(f"{site.url}/jobs")
    assert page.locator("#no-delegate").count() == 1 and page.locator("#submit-job").count() == 0
    page.goto(f"{site.url}/listings/{site.phones_asset}")
    assert page.locator("#request-access").count() == 0
    ctx.close()
    site.bank_ctx.close()



# What a private Ed25519 key looks like when written down: WebCrypto's PKCS#8 export (DER, and that DER
# in base64, base64url or hex), a PEM block, a JWK's private part, an rdx key file's field.
PKCS8_ED25519 = bytes.fromhex("302e020100300506032b657004220420")
KEY_MARKERS = [PKCS8_ED25519, base64.b64encode(PKCS8_ED25519)[:20], base64.urlsafe_b64encode(PKCS8_ED25519)[:20],
               PKCS8_ED25519.hex().encode(), b"PRIVATE KEY", b'"secret_key"', b"privateKey"]
JWK_PRIVATE = re.compile(rb'"d"\s*:\s*"[A-Za-z0-9_-]{43}"')


def secret_forms(seed: bytes) -> list[bytes]:
    """A 32-byte Ed25519 seed as it could be stored: raw, base64, base64url (padded or not), hex."""
    return [seed, base64.b64encode(seed), base64.urlsafe_b64encode(seed).rstrip(b"="), seed.hex().encode(),
            seed.hex().upper().encode()]


def private_key_material_in(folders: list[Path], seeds: dict[str, bytes]) -> list[str]:
    """Every file under ``folders`` (SQLite databases with their -wal and -shm files, anything else)
    read as bytes: where a known seed in any of its forms, or a private key marker, occurs."""
    found = []
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            data = path.read_bytes()
            found += [f"{path}: {name}'s private key" for name, seed in seeds.items()
                      if any(form in data for form in secret_forms(seed))]
            found += [f"{path}: {marker!r}" for marker in KEY_MARKERS if marker in data]
            found += [f"{path}: a JWK's private part" for _ in JWK_PRIVATE.finditer(data)][:1]
    return found


def test_the_servers_storage_holds_no_private_key(browser, site, tmp_path):
    """After the journeys (this test runs last): the association's servers' storage, i.e. the gateway's
    state (its API keys, audit trail and webhook databases), the catalog's and billing's, holds no member's
    private key. The keys made in the browsers cannot be read (not extractable, above), so the scan looks
    for any private key written down (PKCS#8, PEM, JWK, a key file's field); the keys the test's members
    hold in the SDK (the telco's, the bank's, their nodes', the association's) it looks for as they are."""
    folders = [site.state / name for name in ("gateway", "catalog", "billing")]
    files = {f.relative_to(site.state).as_posix() for folder in folders for f in folder.rglob("*") if f.is_file()}
    assert {"gateway/keys.sqlite", "gateway/audit.sqlite", "catalog/catalog.sqlite", "billing/ledger.sqlite"} <= files
    seeds = {i.account: bytes(i.signing_key) for i in (site.telco, site.bank_identity, site.association)}
    for member in (site.telco.account, site.bank):
        node = Identity.load(site.state / "keys" / f"{member}.node.json")
        seeds[node.account] = bytes(node.signing_key)
    assert private_key_material_in(folders, seeds) == []
    # The scan reads what the databases hold: the bank's account, written by its calls, is found in them.
    assert any(site.bank.encode() in f.read_bytes() for folder in folders[:1] for f in folder.rglob("*") if f.is_file())
    # ...and would find a seed or a browser's exported key written there.
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "leak.json").write_text(json.dumps({"k": base64.b64encode(seeds[site.bank]).decode()}))
    (probe / "jwk.json").write_text(json.dumps({"kty": "OKP", "crv": "Ed25519", "d": "A" * 43}))
    (probe / "export.der").write_bytes(PKCS8_ED25519 + bytes(32))
    assert sorted(private_key_material_in([probe], seeds)) == [
        f"{probe}/export.der: {PKCS8_ED25519!r}", f"{probe}/jwk.json: a JWK's private part",
        f"{probe}/leak.json: {site.bank}'s private key"]
