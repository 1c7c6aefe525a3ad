"""Real PostgreSQL and Redis servers from Debian's packages, as local processes: the shared state of
replicated gateways (``RDX_GATEWAY_DATABASE_URL``, ``RDX_GATEWAY_REDIS_URL``), started the way the
tests and an operator's trial run start them: on loopback, on a free port, in a fresh directory,
each with a random password.

PostgreSQL refuses to run as root; as root, the server runs as Debian's ``postgres`` user
(``setpriv``, which execs the server itself, so SIGTERM reaches it directly) in a directory owned
by that user. ``python -m rdx.stores`` installs the two servers with apt-get when they are missing.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from rdx.components import LOOPBACK, Managed, Process, free_port, wait_until
from rdx.toolchain import SetupError, apt_install

POSTGRES_MAJOR = 15
PG_BIN = Path(f"/usr/lib/postgresql/{POSTGRES_MAJOR}/bin")
DEBIAN_PACKAGES = {"postgres": f"postgresql-{POSTGRES_MAJOR}", "redis-server": "redis-server"}
PG_USER = "postgres"  # Debian's postgresql package makes this system user


def _tool(name: str) -> str:
    path = PG_BIN / name if name != "redis-server" else shutil.which(name)
    if path is None or not Path(path).exists():
        raise SetupError(f"`{name}` is not installed; run `make setup-stores` (apt-get install {DEBIAN_PACKAGES.get(name, name)})")
    return str(path)


def ensure_installed(log=print) -> None:
    """apt-get install what is missing (the project's machines are Debian bookworm; root installs)."""
    apt_install([pkg for tool, pkg in DEBIAN_PACKAGES.items()
                 if not (PG_BIN / tool).exists() and shutil.which(tool) is None], "stores", log)


def _as_postgres_user() -> tuple[list[str], int | None, int | None]:
    """The argv prefix, uid and gid to run PostgreSQL's programs with (not root)."""
    if os.geteuid() != 0:
        return [], None, None
    try:
        user = pwd.getpwnam(PG_USER)
    except KeyError:
        raise SetupError(f"PostgreSQL refuses to run as root and there is no `{PG_USER}` user; "
                         f"install {DEBIAN_PACKAGES['postgres']} (it makes one)") from None
    return ([shutil.which("setpriv") or "setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
             "--init-groups", "--"], user.pw_uid, user.pw_gid)


@dataclass
class _Server(Managed):
    """A server on a free loopback port with a random password, logging under ``root``."""

    root: Path
    port: int = field(default_factory=free_port)
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    process: Process | None = field(default=None, init=False)


class PostgresServer(_Server):
    """One PostgreSQL cluster: superuser ``rdx`` with a random password (scram-sha-256), TCP on loopback only."""

    @property
    def url(self) -> str:
        return f"postgresql://rdx:{self.password}@{LOOPBACK}:{self.port}/postgres"

    def start(self, timeout: float = 60.0) -> None:
        prefix, uid, gid = _as_postgres_user()
        # Its own directory, reachable by the server's user (a pytest tmp dir is root's, mode 0700).
        self.data = Path(tempfile.mkdtemp(prefix="rdx-pg-"))
        if uid is not None:
            os.chown(self.data, uid, gid)
        pwfile = self.data / "pw"
        pwfile.write_text(self.password)
        if uid is not None:
            os.chown(pwfile, uid, gid)
        pwfile.chmod(0o600)
        cluster = self.data / "cluster"
        result = subprocess.run([*prefix, _tool("initdb"), "-D", str(cluster), "-U", "rdx", f"--pwfile={pwfile}",
                                 "--auth=scram-sha-256", "-E", "UTF8", "--no-sync"], capture_output=True, text=True)
        pwfile.unlink()
        if result.returncode != 0:
            raise SetupError(f"initdb failed:\n{(result.stdout + result.stderr)[-2000:]}")
        self.process = Process("postgres", [*prefix, _tool("postgres"), "-D", str(cluster), "-p", str(self.port),
                                            "-c", f"listen_addresses={LOOPBACK}", "-c", f"unix_socket_directories={self.data}",
                                            "-c", "fsync=off", "-c", "max_connections=200"],
                               self.root / "postgres.log")
        self.process.start()
        wait_until(self.healthy, timeout, "PostgreSQL", self.process)

    def healthy(self) -> bool:
        return subprocess.run([_tool("pg_isready"), "-h", LOOPBACK, "-p", str(self.port), "-q"]).returncode == 0

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(getattr(self, "data", ""), ignore_errors=True)


class RedisServer(_Server):
    """One Redis server: loopback only, a random password, no persistence (the state it holds is short-lived)."""

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@{LOOPBACK}:{self.port}/0"

    def start(self, timeout: float = 30.0) -> None:
        (self.root / "redis").mkdir(parents=True, exist_ok=True)
        conf = self.root / "redis" / "redis.conf"  # the password in a 0600 file, not on the command line
        conf.write_text(f"bind {LOOPBACK}\nport {self.port}\nprotected-mode yes\nsave \"\"\nappendonly no\n"
                        f"dir {self.root / 'redis'}\nrequirepass {self.password}\n")
        conf.chmod(0o600)
        self.process = Process("redis", [_tool("redis-server"), str(conf)], self.root / "redis.log")
        self.process.start()
        wait_until(self.healthy, timeout, "Redis", self.process)

    def healthy(self) -> bool:
        import redis

        with redis.Redis.from_url(self.url, socket_timeout=1) as client:
            return bool(client.ping())


if __name__ == "__main__":
    try:
        ensure_installed()
    except SetupError as exc:
        raise SystemExit(str(exc)) from None
