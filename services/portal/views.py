"""The pages. Each GET renders a template in the caller's language; each POST carries the session's
CSRF token. A page that needs a person redirects to sign-in; what a person may see is decided by
the Cedar policy in force (read from the gateway) and, again, by the gateway itself."""

from __future__ import annotations

import csv
import difflib
import html
import io
import json
import logging
import re
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.responses import StreamingResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from starlette.exceptions import HTTPException

from services.common import policy as policies
from services.portal import audit as trail, i18n
from services.portal.gateway import GatewayError
from services.portal.oidc import SignInError
from services.portal.sessions import LOGIN_COOKIE, LOGIN_TTL_S, SESSION_COOKIE, PendingLogin, Session, safe_next

log = logging.getLogger("rdx.portal")
FACETS = ("level", "operation", "industry", "region", "price_band", "price_model", "update_cycle", "tag", "provider")
ASSET_ID = re.compile(r"^[a-z0-9][a-z0-9.\-]{2,79}$")
MAX_Q, MAX_VALUES, MAX_VALUE_LENGTH = 200, 20, 100
MAX_FORM_BYTES = 4096
MAX_TX_BYTES = 16_384
ENVELOPE = {"chain_id", "nonce", "payload", "sig", "signer", "type"}
# The signed transactions the portal's pages make: the gateway route each goes to, and the portal
# role that may send it (the chain decides again, from the signer's key).
RELAYED = {"access.Request": "/access-requests", "access.Approve": "/access-requests/{id}/approve",
           "jobs.Submit": "/jobs", "members.Suspend": "/tx", "members.Reinstate": "/tx", "assets.Suspend": "/tx",
           "jobs.Abort": "/tx", "members.Delegate": "/tx", "members.Undelegate": "/tx", "members.Register": "/tx",
           "access.Reject": "/access-requests/{id}/reject", "assets.List": "/tx", "assets.Update": "/tx",
           "governance.PublishPolicy": "/tx"}
SENDER = {"access.Request": ("member_admin",), "access.Approve": ("member_admin", "association_admin"),
          "jobs.Submit": ("member_admin",), "members.Suspend": ("association_admin",),
          "members.Reinstate": ("association_admin",), "assets.Suspend": ("association_admin",),
          "jobs.Abort": ("association_admin",), "members.Delegate": ("member_admin",),
          "members.Undelegate": ("member_admin",), "members.Register": ("association_admin",),
          "access.Reject": ("member_admin", "association_admin"), "assets.List": ("member_admin",), "assets.Update": ("member_admin",),
          "governance.PublishPolicy": ("association_admin",)}
# A tx signed by one of the member's delegated keys (docs/signing.md): only these types, only from the
# member's analysts, whose browsers hold those keys (the chain and the gateway check the powers again).
DELEGATED, DELEGATE_SENDER = ("jobs.Submit", "access.Request"), "analyst"
LABEL = re.compile(r"^[a-z0-9][a-z0-9\-]{0,22}$")  # a delegate's label, as the chain takes it
MAX_ACCOUNT = 64
JOB_ID = re.compile(r"^[a-z0-9][a-z0-9.\-]{2,79}$")
MEMBER = re.compile(r"^[a-z0-9][a-z0-9\-]{1,39}$")
# The roles the admit form offers (the chain takes "association" too: that is not a form's decision).
ADMIT_ROLES = ("provider", "consumer", "compute_operator")
# The computations the jobs form offers: each is a chain job type (jobs.Submit's ``type``), runs on
# grants for one operation, takes one input or one per provider, and has its own params (the compute
# node's job type checks them: services/compute/jobtypes). he_statistics is he_scoring's statistics mode.
JOB_KINDS = {"psi": ("psi", "psi", False), "psi_cardinality": ("psi_cardinality", "psi_cardinality", False),
             "aggregation": ("aggregation", "aggregation", True), "he_scoring": ("he_scoring", "he_scoring", False),
             "he_statistics": ("he_scoring", "he_scoring", False),
             "supply_chain": ("supply_chain", "supply_chain_verification", True)}
STATS = ("count", "sum", "mean", "variance")  # what aggregation and he_statistics compute
RECORD_KINDS = ("contract", "invoice", "logistics", "payment", "delivery", "order", "receipt")  # supply_chain's
MAX_QUOTE_ASSETS = 16  # a job's inputs at most (jobs.Submit)
STATEMENT_DAYS = 90
AUDIT_PAGE, AUDIT_PAGE_MOST = 100, 1000  # audit records a page shows: about, at most (the gateway's page)
MAX_SEQ = 2**62
KEY_ID = re.compile(r"[a-z0-9_]{1,40}")  # the gateway's API key ids
KEY_ROLES = ("member_admin", "analyst", "compute_operator", "auditor")  # what a member admin may issue
POLICY_TTL_S = 30.0
# The listing wizard's form: the listing contract's fields (services/common/listing.py), each checked by
# the catalog's draft validation through the gateway, never here; the columns one per line.
WIZARD_FORM_BYTES, WIZARD_FIELDS = 16_384, 40
LISTING_LEVELS = ("L1", "L2", "L3", "L4")
LISTING_OPERATIONS = ("psi", "psi_cardinality", "aggregation", "he_scoring", "supply_chain_verification", "raw_download")
PRICE_MODELS = ("fixed", "per_record", "subscription", "dynamic", "free")
UPDATE_CYCLES = ("real-time", "hourly", "daily", "weekly", "monthly", "quarterly", "yearly", "irregular", "static")
WIZARD_TEXT = ("asset_id", "commitment", "title", "description", "region", "data_start", "update_cycle",
               "last_updated", "licence", "licence_url", "usage_terms", "contact", "industry", "tags", "columns",
               "level", "price_model", "amount", "period_days", "min_group_size", "row_count")
# where a problem the catalog names (its field path) is shown on the form
PROBLEM_FIELD = {"id": "asset_id", "price": "price_model", "price.model": "price_model", "price.amount": "amount",
                 "price.period_s": "period_days"}
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
       "base-uri 'none'; frame-ancestors 'none'; form-action 'self'")

class Answer(Exception):
    """A page's answer decided before its handler runs (sign in first, not allowed): the request's
    dependencies raise it and the app sends its response."""

    def __init__(self, response: Response):
        super().__init__(response.status_code)
        self.response = response


templates = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                        autoescape=select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)


def highlighted(text: str | None) -> Markup:
    """The catalog's highlight (escaped text with <mark> around matches), escaped again here so that
    nothing but <mark> from another service reaches the page as markup."""
    if not text:
        return Markup("")
    parts = re.split(r"(</?mark>)", text)
    return Markup("".join(p if p in ("<mark>", "</mark>") else html.escape(html.unescape(p)) for p in parts))


def price_text(t, price: dict | None) -> str:
    if not isinstance(price, dict):
        return ""
    model, amount = price.get("model"), price.get("amount", 0)
    if model == "subscription":
        return t("price.subscription", amount=amount, days=(price.get("period_s") or 0) // 86400)
    if model in ("free", "fixed", "per_record", "dynamic"):
        return t(f"price.{model}", amount=amount)
    return str(model)


JOB_SHOWN = ("id", "type", "status", "consumer", "participants", "max_price", "ended_reason", "ended_height",
             "result_hash", "submitted_height")
STATEMENT_COLUMNS = ("height", "time", "kind", "amount", "counterparty", "job", "reference")
INVOICE_COLUMNS = ("height", "time", "job", "asset", "provider", "charge")
# The member's books the pages show: the billing service's document and the rows in it.
BOOKS = {"statements": ("entries", STATEMENT_COLUMNS), "invoices": ("lines", INVOICE_COLUMNS)}


def signer_kind(member: str, signer: object) -> str | None:
    """``member`` for the member's own account, ``delegate`` for one of its delegate accounts
    (``<member>.delegate-<label>``, at most 64 characters), None for any other name."""
    if signer == member:
        return "member"
    prefix = f"{member}.delegate-"
    if isinstance(signer, str) and len(signer) <= MAX_ACCOUNT and signer.startswith(prefix) and \
            LABEL.match(signer[len(prefix):]):
        return "delegate"
    return None


def utc_text(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + " UTC"


def held_terms(grant: dict, member: str) -> dict | None:
    """A grant the member holds (its consumer, granted) with its terms as the chain records them: the
    expiry (``expires_at``, unix seconds, compared with block time) and the runs left (``max_runs``
    less ``runs_used``, which each job submitted on it adds one to); None for any other row, or when
    the chain's record lacks them."""
    if grant.get("consumer") != member or grant.get("status") != "granted":
        return None
    expires, most, used = grant.get("expires_at"), grant.get("max_runs"), grant.get("runs_used")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (expires, most, used)):
        return None
    try:
        expiry = utc_text(expires)
    except (OverflowError, OSError, ValueError):  # past what the C library's gmtime takes
        expiry = str(expires)
    return {"expires": expiry, "left": max(0, most - used), "max": most}


def listing_asset(item: dict) -> policies.AssetView:
    """What the Cedar policy is asked about, from the catalog's listing."""
    return policies.AssetView(item["id"], item["level"], item["provider"]["id"], tuple(item["operations"]),
                              item["status"])


def job_view(record: dict) -> dict:
    """What the pages show of a job record (the record may carry more as its type adds fields)."""
    return {k: record.get(k) for k in JOB_SHOWN}


def table_csv(rows: list[dict], columns: tuple[str, ...]) -> str:
    """Rows as CSV; a text cell that a spreadsheet would run as a formula (=, +, -, @, tab, CR) is
    written with a leading apostrophe (OWASP's CSV injection advice)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["'" + v if isinstance(v, str) and v[:1] in ("=", "+", "-", "@", "\t", "\r") else v
                         for v in (row.get(c) for c in columns)])
    return out.getvalue()


async def small_body(request: Request, limit: int) -> bytes | None:
    """The request's body, or None past ``limit`` bytes (stops reading there: a larger body, declared
    or not, is never held whole)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return body


def policy_diff(a: str, b: str) -> list[tuple[str, str]]:
    """The lines of a unified diff from text ``a`` to ``b``, each with its kind (add, del, at or same):
    the page shows them as text, escaped like any other."""
    lines = difflib.unified_diff(a.splitlines(), b.splitlines(), lineterm="", n=3)
    kinds = []
    for line in lines:
        if line.startswith(("---", "+++")):
            continue
        kinds.append(({"+": "add", "-": "del", "@": "at"}.get(line[:1], "same"), line))
    return kinds


def wizard_number(text: str) -> int | str:
    """A whole number the person typed, or the text itself for the catalog to explain."""
    return int(text) if re.fullmatch(r"[0-9]{1,15}", text) else text


def wizard_draft(form: dict[str, list[str]]) -> dict[str, Any]:
    """The assets.List payload the wizard's form describes, as typed: every rule is the catalog's
    (an empty optional field is left out, numbers are numbers when they are digits)."""
    one = {k: (form.get(k) or [""])[0].strip() for k in WIZARD_TEXT}
    industry, tags = ([v.strip() for v in re.split(r"[,，]", one[k]) if v.strip()] for k in ("industry", "tags"))
    columns = []
    for line in one["columns"].splitlines():
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split("|")]
        column: dict[str, Any] = {k: v for k, v in zip(("name", "type", "sensitivity"), parts) if v}
        column["join_key"] = len(parts) > 3 and parts[3].lower() in ("key", "yes", "true", "是")
        if len(parts) > 4 and parts[4]:
            column["description"] = "|".join(parts[4:])
        columns.append(column)
    price: dict[str, Any] = {"model": one["price_model"]}
    if one["amount"]:
        price["amount"] = wizard_number(one["amount"])
    if one["period_days"]:
        days = wizard_number(one["period_days"])
        price["period_s"] = days * 86400 if isinstance(days, int) else days
    metadata: dict[str, Any] = {k: one[k] for k in ("title", "region", "data_start", "update_cycle", "last_updated",
                                                    "licence")}
    metadata.update({k: (form.get(k) or [""])[0].replace("\r\n", "\n").strip() for k in ("description", "usage_terms")})
    metadata.update(industry=industry, tags=tags, row_count=wizard_number(one["row_count"]), columns=columns)
    metadata.update({k: one[k] for k in ("licence_url", "contact") if one[k]})
    draft: dict[str, Any] = {"id": one["asset_id"], "level": one["level"], "operations": form.get("operations", []),
                             "commitment": one["commitment"].lower(), "price": price, "metadata": metadata}
    if one["min_group_size"]:
        draft["min_group_size"] = wizard_number(one["min_group_size"])
    return draft


def wizard_form_of(item: dict) -> dict[str, list[str]]:
    """The wizard's form filled in from a listing the catalog holds (to draft its next version): the
    inverse of ``wizard_draft`` for what the form has fields for."""
    md, price = item.get("metadata") or {}, item.get("price") or {}
    columns = "\n".join(" | ".join([c.get("name", ""), c.get("type", ""), c.get("sensitivity", ""),
                                     "key" if c.get("join_key") else "", c.get("description", "")]).rstrip(" |")
                        for c in md.get("columns") or [])
    form = {"asset_id": item["id"], "level": item.get("level", ""), "commitment": item.get("commitment", ""),
            "price_model": price.get("model", ""), "amount": str(price.get("amount", "")),
            "period_days": str(price["period_s"] // 86400) if isinstance(price.get("period_s"), int) else "",
            "min_group_size": str(item.get("min_group_size", 1)), "industry": ", ".join(md.get("industry") or []),
            "tags": ", ".join(md.get("tags") or []), "row_count": str(md.get("row_count", "")), "columns": columns}
    form.update({k: str(md.get(k) or "") for k in ("title", "description", "region", "data_start", "update_cycle",
                                                   "last_updated", "licence", "licence_url", "usage_terms", "contact")})
    return {**{k: [v] for k, v in form.items()}, "operations": list(item.get("operations") or [])}


def problems_by_field(problems: list[dict]) -> dict[str, list[str]]:
    """The catalog's problems under the wizard's fields (``metadata.columns[2].type``: the columns, its
    line 3); what no field holds under ``listing``."""
    shown: dict[str, list[str]] = {}
    for p in problems:
        path, message = str(p.get("field", "")), str(p.get("message", ""))
        column = re.match(r"^metadata\.columns\[(\d+)\](?:\.(\w+))?", path)
        if column:
            where, message = "columns", f"{int(column[1]) + 1}{'.' + column[2] if column[2] else ''}: {message}"
        elif path in PROBLEM_FIELD:
            where = PROBLEM_FIELD[path]
        else:
            name = re.sub(r"\[\d+\]$", "", path.removeprefix("metadata."))
            where = name if name in WIZARD_TEXT or name == "operations" else "listing"
            if where == "listing" and path not in ("", "payload", "listing"):
                message = f"{path}: {message}"
        shown.setdefault(where, []).append(message)
    return shown


def _secured(response: Response) -> Response:
    """Every page's security headers: set by the middleware, and by the crash handler, which
    Starlette answers outside it."""
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Frame-Options"] = "DENY"
    if response.headers.get("content-type", "").startswith("text/html"):
        response.headers["Cache-Control"] = "no-store"
    return response


def install(app: FastAPI, portal) -> None:  # portal: services.portal.app.Portal
    settings = portal.settings
    policy_cache: list[Any] = [0.0, None]
    origin = settings.portal_public_url.rstrip("/")

    @app.middleware("http")
    async def headers(request: Request, call_next):
        return _secured(await call_next(request))

    async def form_field(request: Request, name: str) -> str | None:
        """One field of a small urlencoded form (the standard library's parser: the portal's forms
        carry a CSRF token and a few words, so python-multipart is not needed)."""
        if not hasattr(request.state, "form"):
            body = await small_body(request, MAX_FORM_BYTES)
            urlencoded = request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded")
            try:
                request.state.form = parse_qs(body.decode("utf-8", "replace"), max_num_fields=20) \
                    if body is not None and urlencoded else {}
            except ValueError:  # more fields than any form has: read as none (no CSRF token), not a 500
                request.state.form = {}
        values = request.state.form.get(name)
        return values[0] if values else None

    def language(request: Request) -> str:
        return i18n.negotiate(request.headers.get("accept-language"), request.cookies.get("lang"))

    def session_of(request: Request) -> Session | None:
        return portal.sessions.get(request.cookies.get(SESSION_COOKIE))

    def render(request: Request, name: str, status: int = 200, **values: Any) -> HTMLResponse:
        lang = language(request)
        t = i18n.translator(lang)
        body = templates.get_template(name).render(
            t=t, lang=lang, html_lang=i18n.HTML_LANG[lang], session=session_of(request), path=request.url.path,
            here=str(request.url.path) + (f"?{request.url.query}" if request.url.query else ""),
            price_text=lambda p: price_text(t, p), **values)
        return HTMLResponse(body, status_code=status)

    def error(request: Request, status: int, kind: str) -> HTMLResponse:
        return render(request, "error.html", status=status, message=kind)

    def sign_in_first(request: Request) -> RedirectResponse:
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse("/login?" + urlencode({"next": here}), status_code=303)

    def cookie(response: Response, name: str, value: str, max_age: int) -> None:
        response.set_cookie(name, value, max_age=max_age, path="/", httponly=True, samesite="lax",
                            secure=settings.portal_cookie_secure)

    async def policy(s: Session) -> policies.Policy:
        """The policy in force, as the gateway reports it (cached briefly)."""
        if policy_cache[1] is None or time.monotonic() - policy_cache[0] > POLICY_TTL_S:
            doc = await portal.gateway.get(s.member, s.role, "/policy")
            policy_cache[:] = [time.monotonic(), policies.Policy(doc["text"], doc.get("version", 1))]
        return policy_cache[1]

    def staff(pol: policies.Policy, s: Session) -> bool:
        """The member register is the association's: Cedar's ``suspend`` on a resource it owns."""
        return pol.decide(policies.Caller(s.member, s.role), "suspend",
                          policies.AssetView("member-register", "L1", "association", ())).allowed

    def problem(status: int, kind: str, lang: str) -> JSONResponse:
        return JSONResponse({"detail": i18n.translator(lang)(kind)}, status_code=status)

    @app.exception_handler(Answer)
    async def answered(request: Request, exc: Answer) -> Response:
        return exc.response

    @app.exception_handler(HTTPException)
    async def no_page(request: Request, exc: HTTPException) -> Response:
        """A path or method the portal has no page for (``/listings/a%2Fb``, ``GET /logout``): the
        portal's error page in the person's language, not the framework's JSON."""
        page = error(request, exc.status_code, "error.no_page" if exc.status_code == 404 else "error.bad_request")
        page.headers.update(exc.headers or {})  # a 405's Allow
        return page

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> Response:
        """Anything unforeseen (a gateway answer of another shape than the page reads): the error page,
        never a trace. It is answered outside the middleware above, so it carries their headers itself."""
        log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path)
        return _secured(error(request, 500, "error.internal"))

    # -- who is asking: each page names the dependency it needs, and nothing else checks ----------
    # (async: a plain def would run in a thread, and the session store is the event loop's)
    async def person(request: Request) -> Session:
        """A page's signed-in person; anyone else goes to sign-in and back."""
        s = session_of(request)
        if s is None:
            raise Answer(sign_in_first(request))
        return s

    async def api_person(request: Request) -> Session:
        """The signed-in person behind a page script's call (a JSON 401 for anyone else)."""
        s = session_of(request)
        if s is None:
            raise Answer(problem(401, "error.signin", language(request)))
        return s

    def role_in(*roles: str, member: str | None = None):
        """A person of one of ``roles`` (of ``member``, if named); anyone else gets a 403 page."""
        async def check(request: Request, s: Session = Depends(person)) -> Session:
            if s.role not in roles or member not in (None, s.member):
                raise Answer(error(request, 403, "error.forbidden"))
            return s
        return Depends(check)

    # The roles that sign their member's transactions (the member's key is in their browser), and the
    # analysts, who sign some of them with a key the member delegated to theirs.
    Signer = role_in("member_admin", "association_admin", "analyst")
    # The whole audit trail, which the gateway gives only the association's staff and auditors (a
    # member's people get their own calls, with gaps no anchor can be checked over). The Cedar policy
    # has no action for the audit trail or for API keys: these two are the gateway's own rules.
    TrailReader = role_in("association_admin", "auditor", member="association")
    KeyAdmin = role_in("member_admin")

    async def staff_person(request: Request, s: Session = Depends(person)) -> Session:
        """Association staff, as the Cedar policy in force decides (``staff``)."""
        try:
            allowed = staff(await policy(s), s)
        except GatewayError as exc:
            raise Answer(error(request, exc.status, exc.kind)) from None
        if not allowed:
            raise Answer(error(request, 403, "error.forbidden"))
        return s

    async def key_change(request: Request, s: Session = KeyAdmin) -> Session:
        """A change to the member's API keys: a small form from this portal's origin with the session's CSRF token."""
        if not s.csrf_ok(await form_field(request, "csrf")) or request.headers.get("origin", origin) != origin:
            raise Answer(error(request, 403, "error.csrf"))
        return s

    Person, ApiPerson, Staff, KeyChange = Depends(person), Depends(api_person), Depends(staff_person), Depends(key_change)

    # -- language ---------------------------------------------------------------------------------
    @app.get("/lang/{code}", include_in_schema=False)
    async def switch_language(code: str, next: str | None = None) -> Response:
        response = RedirectResponse(safe_next(next), status_code=303)
        if code in i18n.LANGUAGES:
            response.set_cookie("lang", code, max_age=365 * 86400, path="/", samesite="lax",
                                secure=settings.portal_cookie_secure)
        return response

    # -- sign-in ----------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def home() -> Response:
        return RedirectResponse("/search", status_code=303)

    @app.get("/login", include_in_schema=False)
    async def login(request: Request, next: str | None = None) -> Response:
        try:
            url, state, nonce, verifier = await portal.oidc.start()
        except Exception:  # the IdP away or answering nonsense: a page that says so, not a 500
            return error(request, 503, "error.signin")
        key = portal.logins.put(PendingLogin(state, nonce, verifier, safe_next(next), time.time() + LOGIN_TTL_S))
        response = RedirectResponse(url, status_code=303)
        cookie(response, LOGIN_COOKIE, key, LOGIN_TTL_S)
        return response

    @app.get("/callback", include_in_schema=False)
    async def callback(request: Request, code: str | None = None, state: str | None = None) -> Response:
        pending = portal.logins.pop(request.cookies.get(LOGIN_COOKIE))
        if pending is None or not state or state != pending.state or not code or len(code) > 2000:
            return error(request, 400, "error.signin")
        try:
            who = await portal.oidc.finish(code, pending.nonce, pending.verifier)
        except SignInError:
            return error(request, 400, "error.signin")
        except Exception:
            return error(request, 503, "error.signin")
        sid = portal.sessions.put(Session(who.subject, who.name, who.member, who.role,
                                          time.time() + settings.portal_session_ttl_s))
        response = RedirectResponse(pending.next_path, status_code=303)
        cookie(response, SESSION_COOKIE, sid, settings.portal_session_ttl_s)
        response.delete_cookie(LOGIN_COOKIE, path="/")
        return response

    @app.post("/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        s = session_of(request)
        if s is not None and not s.csrf_ok(await form_field(request, "csrf")):
            return error(request, 403, "error.csrf")
        portal.sessions.pop(request.cookies.get(SESSION_COOKIE))
        response = RedirectResponse("/signed-out", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    @app.get("/signed-out", include_in_schema=False)
    async def signed_out(request: Request) -> Response:
        return render(request, "signed_out.html")

    async def one_record(request: Request, s: Session, key: str, pattern: re.Pattern, path: str, missing: str) -> dict:
        """The gateway's record at ``path`` (``{}``: the key, checked against ``pattern`` first); a page
        that says ``missing`` for a bad or unknown key, or the gateway's refusal."""
        if not pattern.match(key):
            raise Answer(error(request, 404, missing))
        try:
            return await portal.gateway.get(s.member, s.role, path.format(key))
        except GatewayError as exc:
            raise Answer(error(request, exc.status, missing if exc.status == 404 else exc.kind)) from None

    # -- who signs: the member's key (its admin's browser) or a delegate's (an analyst's browser) -----
    async def delegates_of(s: Session) -> list[dict]:
        """The member's delegated keys on chain (the gateway's list, in account order)."""
        found = await portal.gateway.get(s.member, s.role, f"/members/{s.member}/delegates")
        return [d for d in found if isinstance(d, dict) and signer_kind(s.member, d.get("id")) == "delegate"]

    def usable(delegate: dict, power: str) -> bool:
        return delegate.get("status") == "active" and power in (delegate.get("powers") or []) and \
            isinstance(delegate.get("expires_at"), int) and delegate["expires_at"] > time.time()

    async def signers_for(s: Session, power: str) -> list[str]:
        """The accounts a page's form may sign a ``power`` tx with for this person: the member's own
        for its admin; for an analyst, the member's delegates that may sign it now."""
        if s.role == "member_admin":
            return [s.member]
        if s.role == DELEGATE_SENDER:
            return [d["id"] for d in await delegates_of(s) if usable(d, power)]
        return []

    # -- catalog ----------------------------------------------------------------------------------
    @app.get("/search", include_in_schema=False)
    async def search(request: Request, s: Session = Person) -> Response:
        query = request.query_params
        q = (query.get("q") or "").strip()
        if len(q) > MAX_Q:
            return error(request, 400, "error.bad_request")
        params: list[tuple[str, str]] = [("limit", "20")]
        if q:
            params.append(("q", q))
        if query.get("cursor"):
            params.append(("cursor", query["cursor"][:1000]))
        chosen: dict[str, list[str]] = {}
        for name in FACETS:
            values = [v for v in query.getlist(name) if v][:MAX_VALUES]
            if any(len(v) > MAX_VALUE_LENGTH for v in values):
                return error(request, 400, "error.bad_request")
            chosen[name] = values
            params += [(name, v) for v in values]
        try:
            if not (await policy(s)).decide(policies.Caller(s.member, s.role), "search",
                                            policies.AssetView("*", "L1", "", ())).allowed:
                return error(request, 403, "error.forbidden")
            found = await portal.gateway.get(s.member, s.role, "/listings", params)
        except GatewayError as exc:
            return error(request, exc.status, exc.kind)
        keep = [(k, v) for k, v in params if k not in ("cursor", "limit")]
        next_url = ("/search?" + urlencode(keep + [("cursor", found["next_cursor"])])) if found.get("next_cursor") else None
        return render(request, "search.html", q=q, found=found, chosen=chosen, facets=FACETS,
                      highlighted=highlighted, next_url=next_url)

    @app.get("/listings/{asset_id}", include_in_schema=False)
    async def listing(request: Request, asset_id: str, s: Session = Person) -> Response:
        if not ASSET_ID.match(asset_id):
            return error(request, 404, "error.not_found")
        try:
            item = await portal.gateway.get(s.member, s.role, f"/listings/{asset_id}")
            asset, pol, who = listing_asset(item), await policy(s), policies.Caller(s.member, s.role)
            if not pol.decide(who, "view", asset).allowed:
                return error(request, 403, "error.forbidden")
            try:
                quote = await portal.gateway.get(s.member, s.role, "/billing/quote", {"asset": asset_id})
            except GatewayError:
                quote = None  # the listing still shows; the page says there is no quote
            # The member's key (in its admin's browser) or a delegate's that may ask for access.
            try:
                signers = await signers_for(s, "access.Request") if item["provider"]["id"] != s.member else []
            except GatewayError:
                signers = []  # the listing still shows, without the form
        except GatewayError as exc:
            return error(request, exc.status, exc.kind)
        # The kill switch on a listing: Cedar's ``suspend`` on it, from the role whose tx the relay takes.
        may_suspend = item["status"] == "listed" and s.role in SENDER["assets.Suspend"] and \
            pol.decide(who, "suspend", asset).allowed
        return render(request, "listing.html", item=item, quote=quote, signers=signers,
                      may_suspend=may_suspend, grant_id=f"g-{secrets.token_hex(4)}-{asset_id}"[:80])

    # -- keys stay with their owners (services/portal/static/signer.js) ----------------------------
    @app.get("/keys", include_in_schema=False)
    async def browser_key(request: Request, label: str | None = None, s: Session = Signer) -> Response:
        """The member's key (admins, staff); for an analyst, a key for the delegate account it asks
        its admin for, ``<member>.delegate-<label>``, once it has chosen a label."""
        if s.role != DELEGATE_SENDER:
            return render(request, "keys.html", account=s.member)
        account = f"{s.member}.delegate-{label}" if label is not None else None
        if account is not None and signer_kind(s.member, account) != "delegate":
            return render(request, "keys.html", status=400, account=None, label=label[:MAX_ACCOUNT], bad_label=True)
        return render(request, "keys.html", account=account, label=label or "")

    @app.get("/api/account", include_in_schema=False)
    async def account(request: Request, account: str | None = None, s: Session = ApiPerson) -> Response:
        """What the browser needs to sign the next tx of ``account`` (the member's own, or one of its
        delegates): the chain id and the account's nonce."""
        account = s.member if account is None else account
        if signer_kind(s.member, account) is None:
            return problem(400, "error.bad_request", language(request))
        try:
            acc = await portal.gateway.get(s.member, s.role, f"/accounts/{account}")
        except GatewayError as exc:
            return problem(exc.status, exc.kind, language(request))
        return JSONResponse({"chain_id": settings.chain_id, "nonce": acc["nonce"]})

    @app.post("/api/tx", include_in_schema=False)
    async def relay_tx(request: Request, s: Session = ApiPerson) -> Response:
        """A tx the browser signed, relayed to the gateway as it is: the portal neither holds nor
        sees a key, and the gateway and the chain check the signature against the signer's key. The
        signer is the session's member, or one of its delegates for the types a delegate may sign."""
        lang = language(request)
        if not s.csrf_ok(request.headers.get("x-csrf-token")) or request.headers.get("origin", origin) != origin:
            return problem(403, "error.csrf", lang)
        body = await small_body(request, MAX_TX_BYTES)
        try:
            tx = json.loads(body)["tx"] if body is not None else None
        except (ValueError, KeyError, TypeError, RecursionError):  # RecursionError: JSON nested thousands deep
            tx = None
        kind = signer_kind(s.member, tx["signer"]) if isinstance(tx, dict) and set(tx) == ENVELOPE else None
        if kind is None or not isinstance(tx["payload"], dict) or tx["type"] not in RELAYED:
            return problem(400, "error.bad_request", lang)
        if kind == "delegate" and tx["type"] not in DELEGATED or \
                s.role not in ((DELEGATE_SENDER,) if kind == "delegate" else SENDER[tx["type"]]):
            return problem(403, "error.forbidden", lang)
        path = RELAYED[tx["type"]]
        if "{id}" in path:
            grant = tx["payload"].get("id")
            if not isinstance(grant, str) or not ASSET_ID.match(grant):
                return problem(400, "error.bad_request", lang)
            path = path.format(id=grant)
        try:
            done = await portal.gateway.post(s.member, s.role, path, {"tx": tx})
        except GatewayError as exc:
            return problem(exc.status, exc.kind, lang)
        return JSONResponse({"tx_hash": done["tx_hash"], "height": done["height"]})

    # -- the listing wizard: the catalog's draft validation, then assets.List signed in the browser ---
    async def lister(request: Request, s: Session = role_in("member_admin")) -> Session:
        """A provider's member admin whom the policy in force lets list an asset of its own (Cedar's
        ``list_asset``); the chain takes ``assets.List`` from a provider only."""
        try:
            allowed = (await policy(s)).decide(policies.Caller(s.member, s.role), "list_asset",
                                               policies.AssetView("*", "L1", s.member, ())).allowed
            members = await portal.gateway.get(s.member, s.role, "/members", {"limit": "1000"}) \
                if allowed else []
        except GatewayError as exc:
            raise Answer(error(request, exc.status, exc.kind)) from None
        if not any(m.get("id") == s.member and "provider" in (m.get("roles") or []) for m in members):
            raise Answer(error(request, 403, "error.forbidden"))
        return s

    def wizard_page(request: Request, form: dict[str, list[str]], status: int = 200, **values: Any) -> Response:
        return render(request, "wizard.html", status=status, form={k: (v[0] if v else "") for k, v in form.items()},
                      chosen_ops=form.get("operations", []), levels=LISTING_LEVELS, operations=LISTING_OPERATIONS,
                      price_models=PRICE_MODELS, cycles=UPDATE_CYCLES, **values)

    @app.get("/listing-wizard", include_in_schema=False)
    async def wizard(request: Request, asset: str | None = None, s: Session = Depends(lister)) -> Response:
        """A new listing's form; with ``asset``, one of the member's listings to draft its next version
        (``assets.Update``), the form filled in from the catalog."""
        if asset is None:
            return wizard_page(request, {"level": ["L2"], "price_model": ["fixed"], "update_cycle": ["monthly"],
                                         "min_group_size": ["1"], "type": ["assets.List"]}, problems={})
        item = await one_record(request, s, asset, ASSET_ID, "/listings/{}", "error.not_found")
        if (item.get("provider") or {}).get("id") != s.member:
            return error(request, 403, "error.forbidden")
        if (item.get("metadata") or {}).get("sample"):  # the form has no sample: its next version would lose it
            return error(request, 409, "wizard.has_sample")
        budget = await kept_budget(request, s, asset)
        return wizard_page(request, {**wizard_form_of(item), "type": ["assets.Update"]}, problems={}, budget=budget)

    async def kept_budget(request: Request, s: Session, asset: str) -> dict | None:
        """The privacy budget the listing has on chain (the gateway's ``GET /v1/assets/{id}``; the catalog
        does not show it), which its next version carries over unchanged: ``assets.Update`` replaces
        every field, so a version without it would drop the budget. None: the listing has none, or it
        is not the member's or not on chain (the catalog's draft validation then says so)."""
        if not ASSET_ID.match(asset):
            return None
        try:
            record = await portal.gateway.get(s.member, s.role, f"/assets/{asset}")
        except GatewayError as exc:
            if exc.status in (403, 404):  # another member's or no listing: the catalog's validation refuses it
                return None
            raise Answer(error(request, exc.status, exc.kind)) from None
        budget = record.get("privacy_budget") if isinstance(record, dict) else None
        return budget if isinstance(budget, dict) and budget else None

    @app.post("/listing-wizard", include_in_schema=False)
    async def wizard_check(request: Request, s: Session = Depends(lister)) -> Response:
        """The draft checked by the catalog (through the gateway, the member as signer): every problem
        shown at its field; a valid draft's canonical payload offered for signing in the browser."""
        body = await small_body(request, WIZARD_FORM_BYTES)
        if body is None:
            return error(request, 413, "error.bad_request")
        if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            return error(request, 400, "error.bad_request")
        try:
            form = parse_qs(body.decode("utf-8"), max_num_fields=WIZARD_FIELDS, strict_parsing=False)
        except (UnicodeDecodeError, ValueError):
            return error(request, 400, "error.bad_request")
        if not s.csrf_ok((form.get("csrf") or [None])[0]) or request.headers.get("origin", origin) != origin:
            return error(request, 403, "error.csrf")
        kind = (form.get("type") or ["assets.List"])[0]
        if kind not in ("assets.List", "assets.Update"):
            return error(request, 400, "error.bad_request")
        draft = wizard_draft(form)
        budget = await kept_budget(request, s, draft["id"]) \
            if kind == "assets.Update" and isinstance(draft.get("id"), str) else None
        if budget is not None:  # carried over from the chain as it is, never from the form
            draft["privacy_budget"] = budget
        try:
            verdict = await portal.gateway.post(s.member, s.role, "/drafts/validate",
                                                {"type": kind, "listing": draft})
        except GatewayError as exc:
            return error(request, exc.status, exc.kind)
        valid = verdict.get("valid") is True and isinstance(verdict.get("payload"), dict)
        return wizard_page(request, form, status=200 if valid else 422, problems=problems_by_field(
            verdict.get("problems") or []), payload=verdict["payload"] if valid else None,
            approvals=verdict.get("approvals") or {}, budget=budget)

    # -- the access inbox -------------------------------------------------------------------------
    @app.get("/access", include_in_schema=False)
    async def access(request: Request, s: Session = Person) -> Response:
        try:
            grants = await portal.gateway.get(s.member, s.role, "/access-requests", {"limit": "200"})
        except GatewayError as exc:
            return error(request, exc.status, exc.kind)
        grants.sort(key=lambda g: (g["status"] != "pending", g["id"]))
        return render(request, "access.html", grants=grants, held=held_terms)

    # -- jobs: submission with the quote, live progress, the member's own results --------------------
    async def runnable(s: Session) -> list[dict]:
        """The member's grants that the policy in force lets it run now, each with its listing's quote."""
        grants = await portal.gateway.get(s.member, s.role, "/access-requests", {"status": "granted", "limit": "200"})
        now, pol, found = int(time.time()), await policy(s), []
        for g in grants:
            if g["consumer"] != s.member:
                continue
            try:
                item = await portal.gateway.get(s.member, s.role, f"/listings/{g['asset']}")
            except GatewayError as exc:
                if exc.status != 404:
                    raise
                continue  # not in the catalog (yet, or any more): nothing to run it on here
            asset = listing_asset(item)
            ops = {op for op in g["operations"] if pol.decide(
                policies.Caller(s.member, s.role), "run", asset, operation=op,
                grant=policies.GrantView.of(g, now)).allowed}
            kinds = [k for k, (_, op, _) in JOB_KINDS.items() if op in ops]
            if kinds:
                quote = await portal.gateway.get(s.member, s.role, "/billing/quote", {"asset": g["asset"]})
                found.append({"grant": g["id"], "asset": g["asset"], "title": item["metadata"].get("title", g["asset"]),
                              "provider": g["provider"], "kinds": kinds, "quote": quote["max_price"]})
        return found

    @app.get("/api/quote", include_in_schema=False)
    async def quote_of(request: Request, s: Session = ApiPerson) -> Response:
        """The billing service's quote for a job on these listings (the jobs form's price for a job with
        an input from each of several providers)."""
        assets = request.query_params.getlist("asset")
        if not 1 <= len(assets) <= MAX_QUOTE_ASSETS or len(set(assets)) != len(assets) or \
                not all(ASSET_ID.match(a) for a in assets):
            return problem(400, "error.bad_request", language(request))
        try:
            quote = await portal.gateway.get(s.member, s.role, "/billing/quote", [("asset", a) for a in assets])
        except GatewayError as exc:
            return problem(exc.status, exc.kind, language(request))
        return JSONResponse({"max_price": quote["max_price"]})

    @app.get("/jobs", include_in_schema=False)
    async def jobs(request: Request, s: Session = Person) -> Response:
        """The member's jobs; the form for its admin (the member's key) and for its analysts (signed
        by one of the member's delegates that may submit jobs, whose key is in the analyst's browser)."""
        try:
            mine = await portal.gateway.get(s.member, s.role, "/jobs", {"limit": "200"})
            signers = await signers_for(s, "jobs.Submit")
            offers = await runnable(s) if signers else []
        except GatewayError as exc:
            return error(request, exc.status, exc.kind)
        mine.sort(key=lambda j: -(j.get("submitted_height") or 0))
        kinds = [k for k in JOB_KINDS if any(k in o["kinds"] for o in offers)]
        # the price shown first: the first grant's quote for the first computation, when it takes one input
        first_quote = next((o["quote"] for o in offers if kinds and kinds[0] in o["kinds"]
                            and not JOB_KINDS[kinds[0]][2]), 0)
        return render(request, "jobs.html", jobs=[job_view(j) for j in mine], offers=offers, signers=signers,
                      job_id=f"job-{secrets.token_hex(4)}", kinds=kinds, job_kinds=JOB_KINDS, stats=STATS,
                      record_kinds=RECORD_KINDS, first_quote=first_quote,
                      multi_kinds=[k for k, (_, _, multi) in JOB_KINDS.items() if multi])

    # -- delegated keys: the member admin lets an analyst's browser key sign jobs or access requests --
    @app.get("/delegates", include_in_schema=False)
    async def delegates(request: Request, s: Session = KeyAdmin) -> Response:
        try:
            found = await delegates_of(s)
        except GatewayError as exc:
            return error(request, exc.status, exc.kind)
        return render(request, "delegates.html", delegates=found, powers=DELEGATED, max_days=90, utc=utc_text,
                      now=time.time())

    @app.get("/jobs/{job_id}", include_in_schema=False)
    async def job(request: Request, job_id: str, s: Session = Person) -> Response:
        record = await one_record(request, s, job_id, JOB_ID, "/jobs/{}", "error.no_job")
        return render(request, "job.html", job=job_view(record), inputs=record.get("inputs") or [])

    @app.get("/jobs/{job_id}/events", include_in_schema=False)
    async def job_events(request: Request, job_id: str, s: Session = ApiPerson):
        """The job's record as it changes, from the gateway's stream, to the page's EventSource."""
        if not JOB_ID.match(job_id):
            return problem(404, "error.no_job", language(request))
        try:
            await portal.gateway.get(s.member, s.role, f"/jobs/{job_id}")  # a clear 404 before the stream opens
        except GatewayError as exc:
            return problem(exc.status, "error.no_job" if exc.status == 404 else exc.kind, language(request))

        async def follow():
            # the wire format written here (event and data lines, a blank line): a response that
            # decides its status before streaming does not fit FastAPI's generator-endpoint SSE
            try:
                async for record in portal.gateway.events(s.member, s.role, f"/jobs/{job_id}/events"):
                    view = job_view(record) if isinstance(record, dict) else {}
                    yield f"event: job\ndata: {json.dumps(view)}\n\n"
            except GatewayError:
                yield "event: gone\ndata: {}\n\n"  # the page says so; its EventSource tries again

        return StreamingResponse(follow(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    # -- statements and invoices (the billing service's, through the gateway) ------------------------
    async def books_of(request: Request, s: Session, kind: str) -> dict:
        since = int(time.time()) - STATEMENT_DAYS * 86400
        try:
            return await portal.gateway.get(s.member, s.role, f"/billing/{kind}/{s.member}", {"since": str(since)})
        except GatewayError as exc:
            raise Answer(error(request, exc.status, exc.kind)) from None

    @app.get("/statements", include_in_schema=False)
    @app.get("/invoices", include_in_schema=False)
    async def books(request: Request, s: Session = Person) -> Response:
        kind = request.url.path[1:]
        doc, (table, _) = await books_of(request, s, kind), BOOKS[kind]
        return render(request, f"{kind}.html", kind=kind, doc=doc, table=table, rows=doc[table], days=STATEMENT_DAYS)

    @app.get("/statements.csv", include_in_schema=False)
    @app.get("/invoices.csv", include_in_schema=False)
    async def books_download(request: Request, s: Session = Person) -> Response:
        kind = request.url.path[1:-len(".csv")]
        rows, columns = BOOKS[kind]
        text = table_csv((await books_of(request, s, kind))[rows], columns)
        return Response(text, media_type="text/csv; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="{kind[:-1]}-{s.member}.csv"'})

    # -- staff: members (admit: members.Register with the key the new member made; suspend, resume) --
    @app.get("/staff/members", include_in_schema=False)
    async def staff_members(request: Request, s: Session = Staff) -> Response:
        try:
            members = await portal.gateway.get(s.member, s.role, "/members", {"limit": "1000"})
            running = await portal.gateway.get(s.member, s.role, "/jobs", {"status": "running", "limit": "500"})
        except GatewayError as exc:
            return error(request, exc.status, exc.kind)
        busy: dict[str, int] = {}
        for j in running:
            for m in j["participants"]:
                busy[m] = busy.get(m, 0) + 1
        return render(request, "staff_members.html", members=members, busy=busy, admit_roles=ADMIT_ROLES)

    @app.get("/staff/approvals", include_in_schema=False)
    async def staff_approvals(request: Request, s: Session = Staff) -> Response:
        """The access requests waiting for the association's approval (the policy asks for it on L4
        data: the chain's grant ``needs`` it), each approved here with ``access.Approve`` or rejected with
        ``access.Reject`` (after a confirmation that asks for the reason), the association's key."""
        try:
            pending = await portal.gateway.get(s.member, s.role, "/access-requests", {"status": "pending", "limit": "1000"})
        except GatewayError as exc:
            return error(request, exc.status, exc.kind)
        waiting = [g for g in pending if "association" in (g.get("needs") or []) and
                   "association" not in (g.get("approvals") or [])]
        return render(request, "staff_approvals.html", grants=sorted(waiting, key=lambda g: g["id"]))

    @app.get("/staff/network", include_in_schema=False)
    async def staff_network(request: Request, s: Session = Staff) -> Response:
        """The chain's health as the gateway's chain node reports it (the gateway's ``GET /v1/network``)."""
        try:
            health = await portal.gateway.get(s.member, s.role, "/network")
        except GatewayError as exc:
            return error(request, exc.status, exc.kind)
        return render(request, "staff_network.html", health=health, read_at=utc_text(time.time()))

    @app.get("/staff/reconciliation", include_in_schema=False)
    async def staff_reconciliation(request: Request, s: Session = Staff) -> Response:
        """Billing's reconciliation of its read model with the chain, run when the page asks (the
        gateway's ``GET /v1/billing/reconciliation``): when billing answered and the differences."""
        try:
            found = await portal.gateway.get(s.member, s.role, "/billing/reconciliation")
        except GatewayError as exc:
            return error(request, exc.status, exc.kind)
        checked = found.get("checked_at")
        differences = [str(d) for d in found.get("differences") or []]
        return render(request, "staff_reconciliation.html", equal=found.get("equal") is True and not differences,
                      differences=differences,
                      checked_at=utc_text(checked) if isinstance(checked, (int, float)) and 0 < checked < 1e11 else "?")

    @app.get("/staff/policy", include_in_schema=False)
    async def staff_policy(request: Request, a: str | None = None, b: str | None = None, s: Session = Staff) -> Response:
        """The policy's versions the chain keeps (the gateway's ``GET /v1/policy/versions``), the
        differences between two of them (``a`` to ``b``; by default the one before the latest to the
        latest), and a form to publish the next (``governance.PublishPolicy``, the association's key)."""
        try:
            versions = await portal.gateway.get(s.member, s.role, "/policy/versions")
            numbers = [v["version"] for v in versions]
            if not numbers:
                return error(request, 502, "error.gateway")
            older, newer = (numbers[-2] if len(numbers) > 1 else numbers[-1]), numbers[-1]
            for text in (a, b):
                if text is not None and not (re.fullmatch(r"[0-9]{1,12}", text) and int(text) in numbers):
                    return error(request, 400, "error.bad_request")
            a_n, b_n = int(a) if a else older, int(b) if b else newer
            texts = {n: (await portal.gateway.get(s.member, s.role, f"/policy/versions/{n}"))["text"]
                     for n in {a_n, b_n, newer}}
        except GatewayError as exc:
            return error(request, exc.status, exc.kind)
        return render(request, "staff_policy.html", versions=versions, a=a_n, b=b_n, current=newer,
                      diff=policy_diff(texts[a_n], texts[b_n]), current_text=texts[newer], next_version=newer + 1)

    @app.get("/staff/jobs", include_in_schema=False)
    async def staff_jobs(request: Request, s: Session = Staff) -> Response:
        """Every running or locked job, each with the kill switch (``jobs.Abort``, the association's key)."""
        try:
            found = [job_view(j) for status in ("running", "locked") for j in await portal.gateway.get(
                s.member, s.role, "/jobs", {"status": status, "limit": "500"})]
        except GatewayError as exc:
            return error(request, exc.status, exc.kind)
        found.sort(key=lambda j: -(j.get("submitted_height") or 0))
        return render(request, "staff_jobs.html", jobs=found)

    # -- the audit trail and its anchors on chain ---------------------------------------------------
    @app.get("/audit", include_in_schema=False)
    async def audit_trail(request: Request, after: str = "0", s: Session = TrailReader) -> Response:
        """The records after record ``after`` up to the end of an anchored batch (about AUDIT_PAGE),
        each with whether an anchor covers it and the batch hashes to the anchored digest
        (services/portal/audit.py says what that shows)."""
        if not re.fullmatch(r"[0-9]{1,19}", after) or int(after) > MAX_SEQ:
            return error(request, 400, "error.bad_request")
        first = int(after)
        try:
            # anchors are kept on chain under their last record's number: those ending after ``first``
            anchors = trail.parse_anchors(await portal.gateway.get(s.member, s.role, "/audit/anchors", {
                "after": f"audit/anchors/{first:012d}", "limit": str(AUDIT_PAGE_MOST)}))
            limit = trail.page_end(first, anchors, AUDIT_PAGE, AUDIT_PAGE_MOST) - first
            records = trail.parse_records(await portal.gateway.get(s.member, s.role, "/audit", {
                "after_seq": str(first), "limit": str(limit)}))
            checks, rows = trail.check(records, anchors, after=first)
        except GatewayError as exc:
            return error(request, exc.status, exc.kind)
        except trail.BadTrail:
            return error(request, 502, "error.gateway")
        later = rows[-1].record.seq if len(rows) == limit else None
        return render(request, "audit.html", checks=checks, rows=rows, after=first, later=later,
                      earlier=max(0, first - AUDIT_PAGE) if first else None, utc=utc_text)

    # -- the member's API keys at the gateway ---------------------------------------------------------
    async def keys_page(request: Request, s: Session, new: dict | None = None, status: int = 200) -> Response:
        """The member's keys; ``new``: a key just made, whose token this one page shows (never again)."""
        try:
            found = await portal.gateway.get(s.member, s.role, "/keys")
        except GatewayError as exc:
            return error(request, exc.status, exc.kind)
        found.sort(key=lambda k: (k.get("revoked_at") is not None, -(k.get("created_at") or 0)))
        return render(request, "api_keys.html", status=status, keys=found, new=new, roles=KEY_ROLES,
                      portal_keys=portal.gateway.own_key_ids(s.member), utc=utc_text)

    @app.get("/api-keys", include_in_schema=False)
    async def api_keys(request: Request, s: Session = KeyAdmin) -> Response:
        return await keys_page(request, s)

    @app.post("/api-keys", include_in_schema=False)
    async def new_api_key(request: Request, s: Session = KeyChange) -> Response:
        role = await form_field(request, "role")
        if role not in KEY_ROLES:
            return error(request, 400, "error.bad_request")
        try:
            made = await portal.gateway.post(s.member, s.role, "/keys", {"member": s.member, "role": role})
        except GatewayError as exc:
            return error(request, exc.status, exc.kind)
        return await keys_page(request, s, new=made, status=201)

    @app.post("/api-keys/{key_id}/{change}", include_in_schema=False)
    async def change_api_key(request: Request, key_id: str, change: str, s: Session = KeyChange) -> Response:
        """``revoke`` or ``rotate`` (a new token, the old one revoked) one of the member's keys; never
        a key this portal itself calls the gateway with."""
        if not KEY_ID.fullmatch(key_id) or change not in ("revoke", "rotate"):
            return error(request, 404, "error.not_found")
        if key_id in portal.gateway.own_key_ids(s.member):
            return error(request, 403, "error.portal_key")
        try:
            if change == "revoke":
                await portal.gateway.delete(s.member, s.role, f"/keys/{key_id}")
            else:
                made = await portal.gateway.post(s.member, s.role, f"/keys/{key_id}/rotate")
        except GatewayError as exc:
            return error(request, exc.status, exc.kind)
        if change == "revoke":
            return RedirectResponse("/api-keys", status_code=303)
        return await keys_page(request, s, new=made, status=201)
