"""What the portal's browser tests need, installed once and started by the tests: a real OpenID Connect
provider (Ory Hydra, built from the Go module proxy into ``~/.cache/rdx``), its login and consent
app, Debian's Chromium (apt-get) and axe-core (npm) for the accessibility check.

Hydra v2.3.0 cannot be ``go install``-ed: its go.mod points ``github.com/ory/hydra-client-go/v2``
at ``./internal/httpclient``, a nested module that the module zip leaves out. So its source is
copied from the module cache into ``~/.cache/rdx/hydra-<version>/src`` and that one replace line
is pointed at the same client's published module, then it is built there with cgo and the
``sqlite`` tag (its in-memory database, ``DSN=memory``, is SQLite).

Hydra has no users and no login page by design: a login and consent app does that part. Here it is
:mod:`rdx.portal_login` (a real process: a password form, Hydra's admin API to accept the login, and
the consent that puts the person's member and role into the ID token as ``rdx_member`` and
``rdx_role``). ``python -m rdx.portal_toolchain`` installs everything (``make setup-portal``).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from rdx.components import LOOPBACK, Managed, Process, free_port, wait_until
from rdx.k8s_toolchain import GO_HINT, _go_env, _module_gomod, _run
from rdx.toolchain import SetupError, _go_module_dir, apt_install, build_lock, cache_root, require

HYDRA_MODULE = "github.com/ory/hydra/v2"
HYDRA_VERSION = "v2.3.0"
# hydra-client-go's published module at the version Hydra v2.3.0's go.mod requires.
HYDRA_CLIENT_MODULE = "github.com/ory/hydra-client-go/v2"
AXE_VERSION = "4.14.1"
CHROMIUM = Path("/usr/bin/chromium")
DEBIAN_PACKAGES = ("chromium", "fonts-noto-cjk")  # the CJK fonts: Chinese pages render (and screenshot) as text
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def hydra_bin() -> Path:
    return cache_root() / f"hydra-{HYDRA_VERSION}" / "bin" / "hydra"


def axe_script() -> Path:
    return cache_root() / f"axe-core-{AXE_VERSION}" / "node_modules" / "axe-core" / "axe.min.js"


def ensure_hydra(log=print) -> Path:
    binary = hydra_bin()
    if binary.exists():
        return binary
    with build_lock(binary.parent.parent):
        if binary.exists():
            return binary
        go = require("go", f"once, to build Ory Hydra {HYDRA_VERSION} for the portal's sign-in tests", GO_HINT)
        log(f"building Ory Hydra {HYDRA_VERSION} from the Go module proxy (once; several minutes) ...")
        started = time.monotonic()
        gomod = _module_gomod(HYDRA_MODULE, HYDRA_VERSION)
        client_version = next((line.split()[1] for line in gomod.splitlines()
                               if line.strip().startswith(HYDRA_CLIENT_MODULE + " ")), None)
        if client_version is None:
            raise SetupError(f"{HYDRA_MODULE} {HYDRA_VERSION}'s go.mod does not require {HYDRA_CLIENT_MODULE}")
        src = binary.parent.parent / "src"
        shutil.rmtree(src, ignore_errors=True)
        shutil.copytree(_go_module_dir(HYDRA_MODULE, HYDRA_VERSION, _go_env()), src)
        for path in [src, *src.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)  # the module cache is read-only
        local = f"replace {HYDRA_CLIENT_MODULE} => ./internal/httpclient"
        text = (src / "go.mod").read_text()
        if local not in text:
            raise SetupError(f"{HYDRA_MODULE} {HYDRA_VERSION}'s go.mod has no line {local!r} to rewrite")
        (src / "go.mod").write_text(text.replace(local, f"replace {HYDRA_CLIENT_MODULE} => {HYDRA_CLIENT_MODULE} "
                                                        f"{client_version}"))
        binary.parent.mkdir(parents=True, exist_ok=True)
        staging = binary.parent / ".hydra.partial"
        _run([go, "build", "-trimpath", "-tags", "sqlite,sqlite_omit_load_extension", "-ldflags", "-s -w",
              "-o", str(staging), "."], f"building Hydra {HYDRA_VERSION}", src, _go_env({"CGO_ENABLED": "1"}), log)
        staging.rename(binary)
        (binary.parent.parent / "build-seconds").write_text(f"{time.monotonic() - started:.0f}\n")
        return binary


def ensure_chromium(log=print) -> Path:
    """Debian's Chromium and CJK fonts, apt-get installed when missing (root; browsers cannot be downloaded)."""
    apt_install([p for p in DEBIAN_PACKAGES
                 if subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True).stdout
                 != "install ok installed"], "portal", log)
    return CHROMIUM


def ensure_axe(log=print) -> Path:
    script = axe_script()
    if script.exists():
        return script
    npm = require("npm", "once, to fetch axe-core for the portal's accessibility check", "Install Node.js 20+ with npm.")
    prefix = script.parents[2]
    with build_lock(prefix):
        if not script.exists():
            log(f"portal: npm install axe-core@{AXE_VERSION}")
            _run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(prefix), f"axe-core@{AXE_VERSION}"],
                 "installing axe-core", prefix, dict(os.environ), log)
    return script


def ensure_all(log=print) -> None:
    ensure_chromium(log)
    ensure_axe(log)
    ensure_hydra(log)


# --------------------------------------------------------------------------------------------
# Running Hydra and its login app


def _http_json(method: str, url: str, body: dict | None = None, timeout: float = 10.0) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return json.loads(answer.read() or b"{}")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status == 200
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class Hydra(Managed):
    """``hydra serve all`` on loopback free ports, its database in memory (gone when it stops)."""

    root: Path
    login_url: str  # the login app's base URL
    public_port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    process: Process | None = field(default=None, init=False)

    @property
    def issuer(self) -> str:
        return f"http://{LOOPBACK}:{self.public_port}/"

    @property
    def admin(self) -> str:
        return f"http://{LOOPBACK}:{self.admin_port}"

    def start(self, timeout: float = 120.0) -> None:
        # A SQLite file of its own: Hydra's "memory" DSN loses its tables whenever its pool closes the
        # last connection (it then migrates again and again, and its signing keys vanish).
        self.root.mkdir(parents=True, exist_ok=True)
        env = {
            "DSN": f"sqlite://{self.root / 'hydra.sqlite'}?_fk=true&mode=rwc",
            "URLS_SELF_ISSUER": self.issuer,
            "URLS_LOGIN": f"{self.login_url}/login",
            "URLS_CONSENT": f"{self.login_url}/consent",
            "URLS_ERROR": f"{self.login_url}/error",
            "SECRETS_SYSTEM": secrets.token_urlsafe(32),
            "SERVE_PUBLIC_HOST": LOOPBACK, "SERVE_PUBLIC_PORT": str(self.public_port),
            "SERVE_ADMIN_HOST": LOOPBACK, "SERVE_ADMIN_PORT": str(self.admin_port),
            "SQA_OPT_OUT": "true",  # no usage statistics sent anywhere
            "LOG_LEVEL": "info",
        }
        migrate = subprocess.run([str(hydra_bin()), "migrate", "sql", "up", "-e", "--yes"], capture_output=True,
                                 text=True, env={**os.environ, **env}, timeout=timeout)
        if migrate.returncode != 0:
            raise SetupError(f"hydra migrate failed:\n{(migrate.stdout + migrate.stderr)[-2000:]}")
        # --dev: the issuer and the portal are plain HTTP on loopback here; a deployment serves both over TLS.
        self.process = Process("hydra", [str(hydra_bin()), "serve", "all", "--dev"], self.root / "hydra.log", env=env)
        self.process.start()
        wait_until(lambda: _answers(f"{self.admin}/health/ready"), timeout, "Hydra", self.process)
        # The first discovery makes the signing keys (RSA 4096: seconds on a busy machine); a request
        # that gives up first cancels that, so ask once with time to spare.
        for path in (".well-known/openid-configuration", ".well-known/jwks.json"):
            with urllib.request.urlopen(self.issuer + path, timeout=timeout) as answer:
                answer.read()

    def add_client(self, redirect_uri: str) -> tuple[str, str]:
        """A confidential client for the portal: (client id, client secret)."""
        secret = secrets.token_urlsafe(32)
        made = _http_json("POST", f"{self.admin}/admin/clients", {
            "client_name": "rdx portal", "client_secret": secret, "grant_types": ["authorization_code"],
            "response_types": ["code"], "redirect_uris": [redirect_uri], "scope": "openid profile",
            "token_endpoint_auth_method": "client_secret_basic", "skip_consent": True})
        return made["client_id"], secret


@dataclass
class LoginApp(Managed):
    """``python -m rdx.portal_login``: the people (``users``, written with hashed passwords) and the pages."""

    root: Path
    hydra_admin: str
    port: int = field(default_factory=free_port)
    process: Process | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self, users_file: Path, timeout: float = 30.0) -> None:
        env = {"RDX_LOGIN_PORT": str(self.port), "RDX_LOGIN_HYDRA_ADMIN": self.hydra_admin,
               "RDX_LOGIN_USERS_FILE": str(users_file), "PYTHONUNBUFFERED": "1"}
        self.process = Process("login", [sys.executable, "-m", "rdx.portal_login"], self.root / "login.log", env=env,
                               cwd=Path(__file__).resolve().parent.parent)
        self.process.start()
        wait_until(lambda: _answers(f"{self.url}/healthz"), timeout, "the login app", self.process)


if __name__ == "__main__":
    try:
        ensure_all()
    except SetupError as exc:
        print(textwrap.indent(str(exc), "  "), file=sys.stderr)
        sys.exit(1)
    print(f"portal toolchain: Hydra {HYDRA_VERSION} at {hydra_bin()}, {CHROMIUM}, axe-core {AXE_VERSION}")
