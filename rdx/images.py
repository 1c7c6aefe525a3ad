"""``make images``: rdx's container images, built here from Debian only, and the Docker engine.

No registry but Debian's apt mirror is used (Docker Hub may be unreachable): a base image made with
``debootstrap`` and ``docker import``, and on it (``BASE`` build argument, so an operator may name
an official ``debian:bookworm`` instead):

- ``rdx-python``  every rdx Python service, which differ only by their command
  (docker/python.Dockerfile): Debian's python3, this project's wheel and its dependencies' wheels
  (built here by pip, cached by pyproject.toml's hash), the ABCI modules ``rdx setup`` generated;
- ``rdx-kafka``   Debian's OpenJDK 17 and the Kafka jars ``rdx setup`` fetched (docker/kafka.Dockerfile);
- ``rdx-cometbft`` the patched CometBFT ``rdx setup`` built (docker/cometbft-debian.Dockerfile);
- ``rdx-<service>`` (gateway, catalog, billing, compute, consensus) ``rdx-python`` with that
  service's command: the names infra/'s manifests give their containers, with no command.

Everything is cached outside the checkout under ``$RDX_CACHE/images`` (the base's root file system
as a tarball, the wheels) and in the engine's data root ``$RDX_CACHE/docker``. An image is rebuilt
only when its inputs change: each carries the digest of its inputs as a label, and a build whose
digest matches the existing image's is skipped, so a second ``make images`` takes seconds.

The base's suite is pinned (bookworm). snapshot.debian.org would pin the date too; where it is
reachable, set ``RDX_DEBIAN_SNAPSHOT=20261201T000000Z`` and the base and every apt-get in the
images read that snapshot. Where it is not (this project's CI: its name does not resolve), the
base is the mirror's bookworm of the day it was made, and the date of the mirror's Release file
is written beside the tarball (``base-bookworm.release``) and as the image's label.

The engine: Debian's ``docker.io`` (``/usr/bin/docker``, ``/usr/sbin/dockerd``), installed with
apt-get when missing and started here when not running (no systemd is assumed), with its own
socket and data root so it does not touch another engine on the machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rdx import pins
from rdx import toolchain as tc

ROOT = Path(__file__).resolve().parent.parent
DOCKER_DIR = ROOT / "docker"
NATIVE = ROOT / "native" / "ed25519"  # the chain's ZIP-215 signature checks (Rust), a wheel of its own
SUITE = "bookworm"
MIRROR = os.environ.get("RDX_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SNAPSHOT = os.environ.get("RDX_DEBIAN_SNAPSHOT")  # e.g. 20261201T000000Z; unset: the mirror's current suite
DEBIAN_PACKAGES = {"/usr/sbin/dockerd": "docker.io", "/usr/bin/docker-compose": "docker-compose",
                   "/usr/sbin/debootstrap": "debootstrap"}
DOCKER = "/usr/bin/docker"  # Debian's client: another `docker` first on PATH may lack the classic builder
SOCKET = Path(os.environ.get("RDX_DOCKER_SOCKET", "/run/rdx-docker.sock"))

BASE_TAG = f"rdx-base:{SUITE}"
PYTHON_TAG = "rdx-python:dev"
KAFKA_TAG = f"rdx-kafka:{pins.KAFKA_VERSION}"
COMETBFT_TAG = f"rdx-cometbft:{pins.COMETBFT_VERSION}"
SERVICES = ("gateway", "catalog", "billing", "compute", "consensus")
INPUTS_LABEL = "io.rdx.inputs"


class ImageError(RuntimeError):
    """The engine or a build failed; the message says what and where to look."""


def images_cache() -> Path:
    path = tc.cache_root() / "images"
    path.mkdir(parents=True, exist_ok=True)
    return path


def env() -> dict[str, str]:
    """The environment for docker and docker-compose: this engine's socket, no BuildKit (Debian's
    client has no buildx; the classic builder is enough for these single-stage files)."""
    return {**os.environ, "DOCKER_HOST": f"unix://{SOCKET}", "DOCKER_BUILDKIT": "0", "COMPOSE_DOCKER_CLI_BUILD": "0"}


def run(cmd: list[str], what: str, *, extra_env: dict[str, str] | None = None) -> str:
    result = subprocess.run(cmd, env={**env(), **(extra_env or {})}, capture_output=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).decode(errors="replace").strip().splitlines()[-25:])
        raise ImageError(f"{what} failed (exit {result.returncode}): {' '.join(cmd[:4])} ...\n{tail}")
    return result.stdout.decode(errors="replace")


# -- the engine -------------------------------------------------------------------------------------------
def ensure_installed(log=print) -> None:
    tc.apt_install([pkg for path, pkg in DEBIAN_PACKAGES.items() if not Path(path).exists()], "images", log)


def engine_running() -> bool:
    if not SOCKET.exists():
        return False
    return subprocess.run([DOCKER, "info", "--format", "{{.ID}}"], env=env(), capture_output=True).returncode == 0


def start_engine(log=print, timeout: float = 60.0) -> subprocess.Popen | None:
    """Start dockerd when it is not running; returns the process this call started (None: it was running).

    overlay2, or RDX_DOCKER_STORAGE_DRIVER (vfs where the kernel refuses overlay2: slower and bigger);
    iptables on, so each Docker network is isolated from the others as compose's networks must be."""
    ensure_installed(log)
    if engine_running():
        return None
    data_root = tc.cache_root() / "docker"
    data_root.mkdir(parents=True, exist_ok=True)
    # The engine's network store: an engine killed mid-`compose up` can leave a network in it without
    # its address pools, and Debian's dockerd 20.10 then panics at every start (libnetwork
    # reservePools). This data root is rdx's alone and compose makes its networks anew each run, so
    # the store is dropped before the engine starts.
    (data_root / "network" / "files" / "local-kv.db").unlink(missing_ok=True)
    log_path = images_cache() / "dockerd.log"
    driver = os.environ.get("RDX_DOCKER_STORAGE_DRIVER", "overlay2")
    argv = ["/usr/sbin/dockerd", "--host", f"unix://{SOCKET}", "--data-root", str(data_root),
            "--exec-root", "/run/rdx-docker", "--pidfile", "/run/rdx-docker.pid", "--storage-driver", driver]
    log(f"images: starting dockerd (data root {data_root}, {driver}; log {log_path})")
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-10:]
            raise ImageError("dockerd exited at start (exit {}):\n{}".format(proc.returncode, "\n".join(tail)))
        if engine_running():
            return proc
        time.sleep(0.5)
    stop_engine(proc)
    raise ImageError(f"dockerd did not answer on {SOCKET} within {timeout:.0f} s (see {log_path})")


def stop_engine(proc: subprocess.Popen | None) -> None:
    """Stop an engine start_engine started (its containers are already down); never raises."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- inputs and labels -------------------------------------------------------------------------------------
def digest_paths(paths: list[Path], extra: str = "") -> str:
    """sha256 over the files' relative names and bytes (directories walked in sorted order, Python's
    bytecode caches left out)."""
    h = hashlib.sha256(extra.encode())
    for top in paths:
        files = sorted(p for p in top.rglob("*") if p.is_file() and "__pycache__" not in p.parts) \
            if top.is_dir() else [top]
        for f in files:
            h.update(str(f.relative_to(top.parent)).encode() + b"\0")
            with open(f, "rb") as stream:
                for block in iter(lambda: stream.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def image_label(tag: str) -> str | None:
    result = subprocess.run([DOCKER, "image", "inspect", "--format", f'{{{{index .Config.Labels "{INPUTS_LABEL}"}}}}', tag],
                            env=env(), capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else None


def image_id(tag: str) -> str:
    return run([DOCKER, "image", "inspect", "--format", "{{.Id}}", tag], f"inspect {tag}").strip()


def build(tag: str, dockerfile: Path, sources: list[Path], context, base: str, log=print) -> bool:
    """Build ``tag`` unless an image of the same inputs exists; True when it built. ``sources``: the
    files the image is made of (what its digest covers); ``context()`` makes the build context,
    called only when a build is needed (for rdx-python it builds the project's wheel)."""
    inputs = digest_paths([dockerfile, *sources], extra=f"{tag}\0{image_id(base)}\0{SNAPSHOT}")
    if image_label(tag) == inputs:
        log(f"images: {tag} is up to date")
        return False
    log(f"images: building {tag} on {base} ...")
    started = time.monotonic()
    cmd = [DOCKER, "build", "--network", "host", "--build-arg", f"BASE={base}", "--label", f"{INPUTS_LABEL}={inputs}",
           "-f", str(dockerfile), "-t", tag, str(context())]
    run(cmd, f"docker build {tag}")
    log(f"images: {tag} built in {time.monotonic() - started:.0f} s")
    return True


# -- the base ---------------------------------------------------------------------------------------------
def sources_list() -> str:
    if SNAPSHOT:
        url = f"http://snapshot.debian.org/archive/debian/{SNAPSHOT}"
        sec = f"http://snapshot.debian.org/archive/debian-security/{SNAPSHOT}"
        return (f"deb [check-valid-until=no] {url} {SUITE} main\n"
                f"deb [check-valid-until=no] {url} {SUITE}-updates main\n"
                f"deb [check-valid-until=no] {sec} {SUITE}-security main\n")
    security = MIRROR.replace("/debian", "/debian-security")
    return (f"deb {MIRROR} {SUITE} main\ndeb {MIRROR} {SUITE}-updates main\n"
            f"deb {security} {SUITE}-security main\n")


def ensure_base(log=print) -> str:
    """The debootstrap base (minbase variant), imported once; its tarball is cached."""
    name = f"base-{SUITE}-{SNAPSHOT or 'mirror'}"
    tarball = images_cache() / f"{name}.tar"
    if not tarball.exists():
        mirror = f"http://snapshot.debian.org/archive/debian/{SNAPSHOT}" if SNAPSHOT else MIRROR
        rootfs = Path(tempfile.mkdtemp(prefix="rootfs.", dir=images_cache()))
        try:
            log(f"images: debootstrap --variant=minbase {SUITE} from {mirror} (a few minutes, once) ...")
            started = time.monotonic()
            run(["debootstrap", "--variant=minbase", SUITE, str(rootfs), mirror], "debootstrap")
            (rootfs / "etc/apt/sources.list").write_text(sources_list())
            dates = [line[len("Date: "):] for f in (rootfs / "var/lib/apt/lists").glob("*_Release")
                     for line in f.read_text(errors="replace").splitlines() if line.startswith("Date: ")]
            (images_cache() / f"{name}.release").write_text((dates[0] if dates else "unknown") + "\n")
            # Nothing of the build host's run stays in the image: apt's lists and caches are dropped.
            for junk in ("var/lib/apt/lists", "var/cache/apt/archives"):
                shutil.rmtree(rootfs / junk, ignore_errors=True)
                (rootfs / junk / "partial").mkdir(parents=True, exist_ok=True)
            partial = tarball.with_suffix(".tar.partial")
            run(["tar", "--numeric-owner", "--sort=name", "-C", str(rootfs), "-cf", str(partial), "."], "tar the base")
            partial.rename(tarball)
            log(f"images: base root file system made in {time.monotonic() - started:.0f} s ({tarball})")
        finally:
            shutil.rmtree(rootfs, ignore_errors=True)
    inputs = digest_paths([tarball])
    if image_label(BASE_TAG) != inputs:
        release_file = images_cache() / f"{name}.release"
        release = release_file.read_text().strip() if release_file.exists() else "unknown"
        log(f"images: docker import {tarball.name} as {BASE_TAG}")
        run([DOCKER, "import", "--change", f"LABEL {INPUTS_LABEL}={inputs}",
             "--change", f'LABEL io.rdx.debian="{SUITE} {SNAPSHOT or "mirror " + release}"',
             "--change", 'CMD ["/bin/bash"]', str(tarball), BASE_TAG], "docker import")
    return BASE_TAG


# -- build contexts ---------------------------------------------------------------------------------------
def _sources() -> Path:
    """A copy of what the wheel is built from, so nothing (build/, egg-info) is written into the checkout."""
    src = Path(tempfile.mkdtemp(prefix="src.", dir=images_cache()))
    shutil.copy2(ROOT / "pyproject.toml", src / "pyproject.toml")
    for pkg in ("rdx", "services"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return src


PIP_WHEEL = [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check"]


def dependency_wheels(log=print) -> Path:
    """The dependencies' wheels, built once per dependency list (by its hash)."""
    import tomllib

    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    deps = images_cache() / f"wheels-{hashlib.sha256(json.dumps(listed).encode()).hexdigest()[:16]}"
    if (deps / ".complete").exists():
        return deps
    log("images: pip wheel of the dependencies (once per pyproject.toml) ...")
    shutil.rmtree(deps, ignore_errors=True)
    src = _sources()
    try:
        run([*PIP_WHEEL, "-w", str(deps), str(src)], "pip wheel (dependencies)")
    finally:
        shutil.rmtree(src, ignore_errors=True)
    for own in deps.glob("rdx-*.whl"):
        own.unlink()
    (deps / ".complete").touch()
    return deps


def own_wheel() -> Path:
    """This project's wheels, from the checkout's sources as they are now: rdx's, and its native
    module's (native/ed25519), which cargo builds into ~/.cache/rdx/cargo as ``make setup`` does."""
    own = images_cache() / "wheel-rdx"
    shutil.rmtree(own, ignore_errors=True)
    src = _sources()
    try:
        run([*PIP_WHEEL, "--no-deps", "-w", str(own), str(src)], "pip wheel (rdx)")
    finally:
        shutil.rmtree(src, ignore_errors=True)
    run([*PIP_WHEEL, "--no-deps", "-w", str(own), str(NATIVE)], "pip wheel (native/ed25519)",
        extra_env={"CARGO_TARGET_DIR": os.environ.get("CARGO_TARGET_DIR", str(Path.home() / ".cache/rdx/cargo"))})
    return own


def _context(name: str, files: dict[str, Path]) -> Path:
    """A fresh build context: ``files`` maps names in the context to files or directories, hard-linked
    where possible (same file system), so making it copies nothing big."""
    ctx = images_cache() / f"context-{name}"
    shutil.rmtree(ctx, ignore_errors=True)
    ctx.mkdir(parents=True)
    for dest, source in files.items():
        target = ctx / dest
        target.parent.mkdir(parents=True, exist_ok=True)
        copy = _link_or_copy
        if source.is_dir():
            shutil.copytree(source, target, copy_function=copy, ignore=shutil.ignore_patterns("__pycache__", ".complete"))
        else:
            copy(source, target)
    return ctx


def _link_or_copy(src, dst) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def build_all(base: str | None = None, log=print) -> dict[str, str]:
    """Every image; ``base`` another base image instead of the debootstrap one. Returns tag by role."""
    started = time.monotonic()
    toolchain = tc.installed()
    base = base or ensure_base(log)
    deps = dependency_wheels(log)
    sources = [ROOT / "pyproject.toml", ROOT / "rdx", ROOT / "services", NATIVE, deps, toolchain.abci_proto]
    build(PYTHON_TAG, DOCKER_DIR / "python.Dockerfile", sources, lambda: _context(
        "python", {"wheels/deps": deps, "wheels/rdx": own_wheel(), "abci-proto": toolchain.abci_proto}), base, log)
    kafka = {"libs": toolchain.kafka_libs, "kafka-entrypoint.sh": DOCKER_DIR / "kafka-entrypoint.sh"}
    build(KAFKA_TAG, DOCKER_DIR / "kafka.Dockerfile", list(kafka.values()), lambda: _context("kafka", kafka), base, log)
    comet = {"cometbft": toolchain.cometbft, "cometbft-entrypoint.sh": DOCKER_DIR / "cometbft-entrypoint.sh"}
    build(COMETBFT_TAG, DOCKER_DIR / "cometbft-debian.Dockerfile", list(comet.values()),
          lambda: _context("cometbft", comet), base, log)
    services = {service: build_service(service, log) for service in SERVICES}
    log(f"images: all built or up to date in {time.monotonic() - started:.0f} s")
    return {"python": PYTHON_TAG, "kafka": KAFKA_TAG, "cometbft": COMETBFT_TAG, **services}


def build_service(service: str, log=print) -> str:
    """``rdx-<service>:dev``: rdx-python whose command is the service. A Dockerfile of its own per
    service because exec-form ``CMD`` expands no build argument; rebuilt when rdx-python changes
    (its id is in the digest)."""
    ctx = images_cache() / f"context-{service}"
    shutil.rmtree(ctx, ignore_errors=True)
    ctx.mkdir(parents=True)
    dockerfile = ctx / "Dockerfile"
    dockerfile.write_text(f'ARG BASE\nFROM ${{BASE}}\nCMD ["services.{service}"]\n')
    tag = f"rdx-{service}:dev"
    build(tag, dockerfile, [], lambda: ctx, PYTHON_TAG, log)
    return tag


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rdx.images", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", help="build on this image instead of the debootstrap base (e.g. debian:bookworm)")
    args = parser.parse_args(argv)
    try:
        engine = start_engine()
        try:
            build_all(args.base)
        finally:
            stop_engine(engine)
    except (ImageError, tc.SetupError) as exc:
        print(f"images: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
