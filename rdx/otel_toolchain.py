"""An OpenTelemetry Collector built from the Go module proxy, for the tracing tests and local use.

There is no collector package on Debian or PyPI, and a prebuilt release cannot be fetched here, so
the collector is built the way its own builder (ocb) would: a tiny ``main.go`` that links only the
components rdx uses — the OTLP receiver (gRPC and HTTP) and the contrib file exporter — into
``otelcol``. Everything is cached by version under ``$RDX_CACHE`` like CometBFT; a second run builds
nothing.

Versions: every collector module of one release. The file exporter's newest release that builds
here is v0.161.0 (later ones failed), so the core is held at v0.161.0 / v1.67.0 to match it.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import shutil
import sys
import tempfile
from pathlib import Path

from rdx.components import LOOPBACK, Managed, Process, free_port, wait_until
from rdx.toolchain import SetupError, _run, build_lock, cache_root, require

OTELCOL_VERSION = "v0.161.0"  # otelcol, otlpreceiver, contrib fileexporter
OTELCOL_STABLE_VERSION = "v1.67.0"  # the same release's 1.x modules (confmap providers)

GO_MOD = f"""module rdx.local/otelcol

go 1.24

require (
\tgo.opentelemetry.io/collector/component {OTELCOL_STABLE_VERSION}
\tgo.opentelemetry.io/collector/confmap {OTELCOL_STABLE_VERSION}
\tgo.opentelemetry.io/collector/confmap/provider/envprovider {OTELCOL_STABLE_VERSION}
\tgo.opentelemetry.io/collector/confmap/provider/fileprovider {OTELCOL_STABLE_VERSION}
\tgo.opentelemetry.io/collector/exporter {OTELCOL_STABLE_VERSION}
\tgo.opentelemetry.io/collector/otelcol {OTELCOL_VERSION}
\tgo.opentelemetry.io/collector/receiver {OTELCOL_STABLE_VERSION}
\tgo.opentelemetry.io/collector/receiver/otlpreceiver {OTELCOL_VERSION}
\tgo.opentelemetry.io/collector/service {OTELCOL_VERSION}
\tgithub.com/open-telemetry/opentelemetry-collector-contrib/exporter/fileexporter {OTELCOL_VERSION}
)
"""

MAIN_GO = """// rdx's OpenTelemetry Collector: the OTLP receiver and the file exporter, nothing else.
package main

import (
\t"log"

\t"github.com/open-telemetry/opentelemetry-collector-contrib/exporter/fileexporter"
\t"go.opentelemetry.io/collector/component"
\t"go.opentelemetry.io/collector/confmap"
\t"go.opentelemetry.io/collector/confmap/provider/envprovider"
\t"go.opentelemetry.io/collector/confmap/provider/fileprovider"
\t"go.opentelemetry.io/collector/exporter"
\t"go.opentelemetry.io/collector/otelcol"
\t"go.opentelemetry.io/collector/receiver"
\t"go.opentelemetry.io/collector/receiver/otlpreceiver"
\t"go.opentelemetry.io/collector/service/telemetry/otelconftelemetry"
)

func components() (otelcol.Factories, error) {
\tvar err error
\tf := otelcol.Factories{}
\tif f.Receivers, err = otelcol.MakeFactoryMap[receiver.Factory](otlpreceiver.NewFactory()); err != nil {
\t\treturn f, err
\t}
\tif f.Exporters, err = otelcol.MakeFactoryMap[exporter.Factory](fileexporter.NewFactory()); err != nil {
\t\treturn f, err
\t}
\tf.Telemetry = otelconftelemetry.NewFactory() // the collector's own logs (and metrics, if configured)
\treturn f, nil
}

func main() {
\tset := otelcol.CollectorSettings{
\t\tBuildInfo: component.BuildInfo{Command: "otelcol-rdx", Description: "rdx's OpenTelemetry Collector", Version: "%s"},
\t\tFactories: components,
\t\tConfigProviderSettings: otelcol.ConfigProviderSettings{
\t\t\tResolverSettings: confmap.ResolverSettings{
\t\t\t\tProviderFactories: []confmap.ProviderFactory{fileprovider.NewFactory(), envprovider.NewFactory()},
\t\t\t},
\t\t},
\t}
\tif err := otelcol.NewCommand(set).Execute(); err != nil {
\t\tlog.Fatal(err)
\t}
}
""" % OTELCOL_VERSION


def otelcol_bin() -> Path:
    """Keyed by the version and by the sources above, so a changed main.go builds anew."""
    digest = hashlib.sha256((GO_MOD + MAIN_GO).encode()).hexdigest()[:12]
    return cache_root() / f"otelcol-{OTELCOL_VERSION}" / digest / "otelcol-rdx"


def ensure_otelcol(log=print) -> Path:
    """Build (once) and return the collector binary."""
    binary = otelcol_bin()
    if binary.exists():
        return binary
    with build_lock(binary.parent):  # make test may be building it in the background (Makefile)
        if binary.exists():
            return binary
        return _build_otelcol(binary, log)


def _build_otelcol(binary: Path, log) -> Path:
    go = require("go", "to build the OpenTelemetry Collector", "Install Go 1.24+.")
    log(f"otelcol {OTELCOL_VERSION}: building from the Go module proxy ...")
    with tempfile.TemporaryDirectory(prefix="otelcol-src.", dir=binary.parent) as tmp:
        src = Path(tmp)
        (src / "go.mod").write_text(GO_MOD)
        (src / "main.go").write_text(MAIN_GO)
        env = dict(os.environ, CGO_ENABLED="0")
        # tidy completes go.sum and the indirect requirements by minimal version selection from the
        # pinned modules above, so the same pins give the same build.
        _run([go, "mod", "tidy"], f"resolving the collector's modules ({OTELCOL_VERSION})", cwd=src, env=env)
        staged = src / "otelcol-rdx"
        _run([go, "build", "-trimpath", "-o", str(staged), "."], f"building otelcol {OTELCOL_VERSION}",
             cwd=src, env=env)
        shutil.move(str(staged), binary)  # whole or absent: a half-built binary is never cached
    return binary


COLLECTOR_CONFIG = """receivers:
  otlp:
    protocols:
      http:
        endpoint: {host}:{port}
exporters:
  file:
    path: {output}
    flush_interval: 100ms
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [file]
"""


class Collector(Managed):
    """A collector on loopback that writes every span it receives, as OTLP JSON lines, to
    ``output``. Services reach it with ``OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint``."""

    def __init__(self, root: Path, *, port: int | None = None):
        self.root, self.port = root, port or free_port()
        self.output = root / "spans.jsonl"
        self.process: Process | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        binary = ensure_otelcol()
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "otelcol.yaml"
        config.write_text(COLLECTOR_CONFIG.format(host=LOOPBACK, port=self.port, output=self.output))
        self.process = Process("otelcol", [str(binary), f"--config=file:{config}"], self.root / "otelcol.log")
        self.process.start()
        wait_until(self._listening, timeout, "the OpenTelemetry Collector", self.process)

    def _listening(self) -> bool:
        with socket.socket() as s:
            s.settimeout(0.5)
            return s.connect_ex((LOOPBACK, self.port)) == 0

    def spans(self) -> list[dict]:
        """Every span written so far, each with its ``service`` (the resource's service.name)."""
        found: list[dict] = []
        if not self.output.exists():
            return found
        for line in self.output.read_text().splitlines():
            if not line.strip():
                continue
            for resource_spans in json.loads(line).get("resourceSpans", []):
                attributes = resource_spans.get("resource", {}).get("attributes", [])
                service = next((a["value"].get("stringValue") for a in attributes if a["key"] == "service.name"), None)
                for scope_spans in resource_spans.get("scopeSpans", []):
                    for span in scope_spans.get("spans", []):
                        found.append({**span, "service": service})
        return found


if __name__ == "__main__":
    try:
        print(ensure_otelcol())
    except SetupError as exc:
        print(f"rdx otelcol: {exc}", file=sys.stderr)
        sys.exit(2)
