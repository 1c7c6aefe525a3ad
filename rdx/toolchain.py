"""Install Kafka, CometBFT and the ABCI protobuf modules into a cache outside the checkout.

Everything is keyed by version under ``$RDX_CACHE`` (default ``~/.cache/rdx``), so a second
run downloads nothing and a fresh machine gets exactly the same bits. Only the standard
library is used here for the external tools, so ``rdx setup`` also explains a missing Java,
Go or Maven before anything else fails.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rdx import pins


class SetupError(RuntimeError):
    """A prerequisite is missing or a download/build failed; the message says what to do."""


def apt_install(missing: list[str], who: str, log=print) -> None:
    """``apt-get install`` Debian packages a setup step needs (the project's machines are Debian
    bookworm; only root installs: anyone else is told the command)."""
    if not missing:
        return
    if os.geteuid() != 0:
        raise SetupError(f"missing Debian packages {missing}: run `sudo apt-get install -y {' '.join(missing)}`")
    log(f"{who}: apt-get install {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # make test installs beside tests/deploy's image tools: one apt-get of ours at a time (a second
    # one fails at once on dpkg's lock), and any other holder of that lock is waited for.
    wait = ["-o", "DPkg::Lock::Timeout=600"]
    with build_lock(cache_root() / "apt"):
        for cmd in (["apt-get", *wait, "update", "-qq"], ["apt-get", *wait, "install", "-y", "-qq", *missing]):
            result = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if result.returncode != 0:
                raise SetupError(f"{' '.join(cmd)} failed:\n{(result.stdout + result.stderr)[-2000:]}")


@contextlib.contextmanager
def build_lock(directory: Path):
    """One build (or apt-get) of a kind at a time, even across concurrent test sessions and make
    test's background builds: an exclusive flock on ``directory``/.lock."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cache_root() -> Path:
    return Path(os.environ.get("RDX_CACHE", Path.home() / ".cache" / "rdx"))


@dataclass(frozen=True)
class Toolchain:
    kafka_libs: Path
    cometbft: Path
    abci_proto: Path

    @property
    def kafka_classpath(self) -> str:
        return str(self.kafka_libs / "*")


def kafka_dir() -> Path:
    return cache_root() / f"kafka-{pins.KAFKA_VERSION}"


COMETBFT_PATCHES = sorted((Path(__file__).parent / "patches").glob("cometbft-*.patch"))


def _patches_digest() -> str:
    import hashlib

    h = hashlib.sha256()
    for patch in COMETBFT_PATCHES:
        h.update(patch.name.encode() + b"\0" + patch.read_bytes())
    return h.hexdigest()[:12]


def cometbft_bin() -> Path:
    return cache_root() / f"cometbft-{pins.COMETBFT_VERSION}-{_patches_digest()}" / "bin" / "cometbft"


def abci_proto_dir() -> Path:
    from google.protobuf import __version__ as protobuf_version

    return cache_root() / f"abci-proto-{pins.COMETBFT_VERSION}-pb{protobuf_version}"


def require(tool: str, why: str, hint: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise SetupError(f"`{tool}` was not found on PATH; it is needed {why}. {hint}")
    return path


def java_major() -> int:
    java = require("java", "to run Apache Kafka", "Install a Java 17+ runtime (Debian: apt-get install openjdk-17-jre-headless).")
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    # First line looks like: openjdk version "17.0.15" 2025-04-15
    try:
        version = out.split('"')[1]
        major = int(version.split(".")[0])
    except (IndexError, ValueError) as exc:
        raise SetupError(f"could not read the Java version from `java -version`: {out.strip()!r}") from exc
    if major < 17:
        raise SetupError(f"Kafka {pins.KAFKA_VERSION} needs Java 17 or newer; `java` is {version}.")
    return major


def _run(cmd: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise SetupError(f"{what} failed (exit {result.returncode}):\n{tail}")
    return result


KAFKA_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>rdx</groupId><artifactId>kafka-runtime</artifactId><version>{kafka}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>{log4j}</version></dependency>
  </dependencies>
</project>
"""


def ensure_kafka() -> Path:
    """Apache Kafka's jars from Maven Central (there is no Kafka package on Debian or PyPI)."""
    java_major()
    target = kafka_dir()
    libs = target / "libs"
    if (target / ".complete").exists():
        return libs
    mvn = require("mvn", "to fetch Kafka's jars from Maven Central", "Install Maven (Debian: apt-get install maven).")
    target.mkdir(parents=True, exist_ok=True)
    (target / "pom.xml").write_text(KAFKA_POM.format(kafka=pins.KAFKA_VERSION, log4j=pins.LOG4J_VERSION))
    staging = Path(tempfile.mkdtemp(dir=target, prefix="libs."))
    _run(
        [mvn, "-q", "-B", "-f", str(target / "pom.xml"), "dependency:copy-dependencies",
         f"-DoutputDirectory={staging}", "-DincludeScope=runtime"],
        f"fetching Kafka {pins.KAFKA_VERSION} with Maven",
    )
    if libs.exists():
        shutil.rmtree(libs)
    staging.rename(libs)
    (target / ".complete").write_text(pins.KAFKA_VERSION)
    return libs


def ensure_cometbft() -> Path:
    """CometBFT built from the Go module proxy at the pinned tag, with rdx/patches/cometbft-*.patch
    applied (each says why; today one, the ABCI socket client's flush timer)."""
    binary = cometbft_bin()
    if binary.exists():
        return binary
    go = require("go", "to build CometBFT", "Install Go 1.22+ (https://go.dev/doc/install or Debian's golang package).")
    git = require("git", "to apply rdx's CometBFT patches", "Install git.")
    source = _go_module_dir("github.com/cometbft/cometbft", pins.COMETBFT_VERSION)
    binary.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cometbft-src.") as tmp:
        tree = Path(tmp) / "cometbft"
        shutil.copytree(source, tree)  # the module cache is read-only
        for path in tree.rglob("*"):
            path.chmod(path.stat().st_mode | 0o200)
        for patch in COMETBFT_PATCHES:
            _run([git, "apply", str(patch)], f"applying {patch.name} to CometBFT {pins.COMETBFT_VERSION}", cwd=tree)
        env = dict(os.environ, CGO_ENABLED="0")
        _run([go, "build", "-o", str(binary), "./cmd/cometbft"], f"building CometBFT {pins.COMETBFT_VERSION}",
             env=env, cwd=tree)
    return binary


def _go_module_dir(module: str, version: str, env: dict[str, str] | None = None) -> Path:
    go = require("go", "to fetch CometBFT's proto files", "Install Go 1.22+.")
    out = _run([go, "mod", "download", "-json", f"{module}@{version}"],
               f"downloading {module}@{version}", cwd=tempfile.gettempdir(), env=env)
    return Path(json.loads(out.stdout)["Dir"])


ABCI_PROTOS = [
    "tendermint/abci/types.proto",
    "tendermint/crypto/proof.proto",
    "tendermint/crypto/keys.proto",
    "tendermint/types/params.proto",
    "tendermint/types/validator.proto",
]
# Headers, commits and canonical votes, for the light client (services/common/lightclient.py).
# Added to a cache made before them without regenerating what is there (processes may be using it).
LIGHT_CLIENT_PROTOS = [
    "tendermint/types/types.proto",
    "tendermint/types/canonical.proto",
    "tendermint/version/types.proto",
]


def ensure_abci_proto() -> Path:
    """Generate the ABCI 2.0 Python modules from the very proto files of the pinned CometBFT."""
    target = abci_proto_dir()
    if (target / ".complete").exists():
        if not (target / ".light-client").exists():
            staging = _protoc(LIGHT_CLIENT_PROTOS)
            for generated in sorted(staging.rglob("*")):  # parents first; nothing there is replaced
                placed = target / generated.relative_to(staging)
                if generated.is_dir():
                    placed.mkdir(exist_ok=True)
                elif not placed.exists():
                    shutil.copy2(generated, placed)
            shutil.rmtree(staging)
            (target / ".light-client").touch()
        return target
    staging = _protoc(ABCI_PROTOS + LIGHT_CLIENT_PROTOS, gogo=True)
    (staging / ".light-client").touch()
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(staging), str(target))
    (target / ".complete").write_text(pins.COMETBFT_VERSION)
    return target


def _protoc(protos: list[str], *, gogo: bool = False) -> Path:
    """Python modules of CometBFT's ``protos`` (and gogo.proto's) in a new staging folder."""
    import grpc_tools
    from grpc_tools import protoc

    comet = _go_module_dir("github.com/cometbft/cometbft", pins.COMETBFT_VERSION) / "proto"
    gogo_dir = _go_module_dir("github.com/cosmos/gogoproto", pins.GOGOPROTO_VERSION)
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    staging = Path(tempfile.mkdtemp(prefix="abci-proto."))
    args = ["protoc", f"-I{comet}", f"-I{gogo_dir}", f"-I{well_known}", f"--python_out={staging}"]
    args += [str(comet / p) for p in protos] + ([str(gogo_dir / "gogoproto" / "gogo.proto")] if gogo else [])
    if protoc.main(args) != 0:
        raise SetupError("protoc could not generate the ABCI modules (see the messages above)")
    for pkg in staging.rglob("*"):
        if pkg.is_dir():
            (pkg / "__init__.py").touch()
    return staging


def link_into_venv(proto_dir: Path) -> None:
    """Put the generated modules on this interpreter's path with a .pth file (not in the repo)."""
    import sysconfig

    site = Path(sysconfig.get_paths()["purelib"])
    (site / "rdx_abci_proto.pth").write_text(str(proto_dir) + "\n")


def ensure_all(log=print) -> Toolchain:
    log(f"kafka {pins.KAFKA_VERSION} ...")
    libs = ensure_kafka()
    log(f"cometbft {pins.COMETBFT_VERSION} ...")
    comet = ensure_cometbft()
    log("abci protobuf modules ...")
    proto = ensure_abci_proto()
    link_into_venv(proto)
    return Toolchain(kafka_libs=libs, cometbft=comet, abci_proto=proto)


def installed() -> Toolchain:
    """The toolchain as already installed; raises SetupError naming what is missing."""
    tc = Toolchain(kafka_libs=kafka_dir() / "libs", cometbft=cometbft_bin(), abci_proto=abci_proto_dir())
    if not (kafka_dir() / ".complete").exists():
        raise SetupError("Kafka is not installed yet: run `make setup`.")
    if not tc.cometbft.exists():
        raise SetupError("CometBFT is not built yet: run `make setup`.")
    return tc


if __name__ == "__main__":
    try:
        ensure_all()
    except SetupError as exc:
        print(f"rdx setup: {exc}", file=sys.stderr)
        sys.exit(2)
