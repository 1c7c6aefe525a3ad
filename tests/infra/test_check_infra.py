"""infra/check.py passes on the real tree and fails, with the right message, on broken copies.

Each broken-copy test copies docker/, infra/ and docs/ into a temporary directory, breaks
one thing and runs the same check in-process (about a second each once kustomize is cached).
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def load_check():
    spec = importlib.util.spec_from_file_location("infra_check", REPO / "infra" / "check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["infra_check"] = module
    spec.loader.exec_module(module)
    return module


check = load_check()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the parts of the repository that the check reads."""
    for part in ("docker", "infra", "docs"):
        shutil.copytree(REPO / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__", "secrets"))
    return tmp_path


def problems(root: Path) -> list[str]:
    return [str(p) for p in check.run(root, log=lambda *_: None)]


def edit_yaml(path: Path, kind: str, name: str, change) -> None:
    """Apply change() to the object of that kind and name in a multi-document YAML file."""
    docs = list(yaml.safe_load_all(path.read_text()))
    target = [d for d in docs if d and d["kind"] == kind and d["metadata"]["name"] == name]
    assert target, f"{kind}/{name} not in {path}"
    change(target[0])
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))


def first_container(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]["containers"][0]


def assert_reported(found: list[str], *fragments: str) -> None:
    assert any(all(f in line for f in fragments) for line in found), (
        f"no problem mentions {fragments}; got:\n" + "\n".join(found))


# --- the real tree ----------------------------------------------------------------------------


def test_real_tree_passes():
    result = subprocess.run([sys.executable, str(REPO / "infra" / "check.py")],
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all passed" in result.stdout


def test_cli_exits_non_zero_on_a_broken_tree(tree):
    (tree / "docker" / "compose.yaml").write_text("services: [\n")
    result = subprocess.run([sys.executable, str(REPO / "infra" / "check.py"), "--root", str(tree)],
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 1
    assert "FAIL [compose] docker/compose.yaml: does not parse" in result.stdout


# --- manifests --------------------------------------------------------------------------------


def test_deployment_without_probes_fails(tree):
    def drop_probes(deployment):
        del first_container(deployment)["livenessProbe"]
        del first_container(deployment)["readinessProbe"]

    edit_yaml(tree / "infra/base/catalog.yaml", "Deployment", "catalog", drop_probes)
    found = problems(tree)
    assert_reported(found, "[policy]", "Deployment/catalog container catalog", "no livenessProbe")
    assert_reported(found, "[policy]", "Deployment/catalog container catalog", "no readinessProbe")


def test_sidecar_without_probes_fails(tree):
    def drop_probe(statefulset):
        del statefulset["spec"]["template"]["spec"]["initContainers"][0]["readinessProbe"]

    edit_yaml(tree / "infra/base/validators.yaml", "StatefulSet", "validator", drop_probe)
    assert_reported(problems(tree), "[policy]", "StatefulSet/validator init container consensus", "no readinessProbe")


def test_container_running_as_root_fails(tree):
    def run_as_root(deployment):
        first_container(deployment)["securityContext"].update(runAsNonRoot=False, runAsUser=0)

    edit_yaml(tree / "infra/base/billing.yaml", "Deployment", "billing", run_as_root)
    found = problems(tree)
    assert_reported(found, "[policy]", "Deployment/billing container billing", "runs as root: runAsUser is 0")
    assert_reported(found, "[policy]", "Deployment/billing container billing", "runAsNonRoot is not true")


def test_missing_limits_and_writable_root_fail(tree):
    def loosen(deployment):
        container = first_container(deployment)
        del container["resources"]["limits"]
        container["securityContext"]["readOnlyRootFilesystem"] = False

    edit_yaml(tree / "infra/base/gateway.yaml", "Deployment", "gateway", loosen)
    found = problems(tree)
    assert_reported(found, "Deployment/gateway container gateway", "no memory in resources.limits")
    assert_reported(found, "Deployment/gateway container gateway", "readOnlyRootFilesystem is not true")


def test_field_unknown_to_the_kubernetes_schema_fails(tree):
    edit_yaml(tree / "infra/base/gateway.yaml", "Deployment", "gateway",
              lambda d: d["spec"].update(replica=3))
    assert_reported(problems(tree), "[schema]", "Deployment/gateway", "'replica' was unexpected")


def test_field_unknown_to_a_custom_resource_schema_fails(tree):
    edit_yaml(tree / "infra/base/kafka.yaml", "KafkaTopic", "rdx.audit.v1",
              lambda t: t["spec"].update(partition=3))
    assert_reported(problems(tree), "[schema]", "KafkaTopic/rdx.audit.v1", "'partition' was unexpected")


def test_workload_without_disruption_budget_fails(tree):
    path = tree / "infra/base/billing.yaml"
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d["kind"] != "PodDisruptionBudget"]
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    assert_reported(problems(tree), "[policy]", "Deployment/billing", "no PodDisruptionBudget")


def test_overlay_that_does_not_build_fails(tree):
    kustomization = tree / "infra/overlays/dev/kustomization.yaml"
    kustomization.write_text(kustomization.read_text().replace("- ../../base", "- ../../nowhere"))
    assert_reported(problems(tree), "[render]", "infra/overlays/dev")


# --- alerts, runbooks and metric names -------------------------------------------------------


def test_alert_without_runbook_section_fails(tree):
    runbooks = tree / "docs/runbooks.md"
    runbooks.write_text(runbooks.read_text().replace("## RdxRelayBehind", "## Relay behind"))
    assert_reported(problems(tree), "[alerts]", "alert RdxRelayBehind", "#rdxrelaybehind")


def test_every_metric_in_dashboards_and_alerts_is_listed():
    rendered, render_problems = check.render(REPO, check.ensure_kustomize())
    assert not render_problems
    used = {name for _, name in check.used_metrics(rendered)}
    listed = check.allowed_names(check.load_metric_list(REPO))
    assert used, "found no metric in the dashboards and alerts"
    assert used <= listed, f"not in infra/metrics.txt: {sorted(used - listed)}"
    # The alerts and the dashboard together use each listed rdx family at least once.
    families = {n.removesuffix("_bucket") for n in used}
    assert {n for n in check.load_metric_list(REPO) if n.startswith("rdx_")} <= families


def test_unlisted_metric_in_an_alert_fails(tree):
    alerts = tree / "infra/base/monitoring/alerts.yaml"
    alerts.write_text(alerts.read_text().replace("(rdx_kafka_consumer_lag_events)", "(rdx_made_up_lag_total)"))
    assert_reported(problems(tree), "[metrics]", "rule RdxConsumerLagHigh", "'rdx_made_up_lag_total'")


def test_unlisted_metric_in_the_dashboard_fails(tree):
    dashboard = tree / "infra/base/monitoring/dashboard.json"
    dashboard.write_text(dashboard.read_text().replace("rdx_policy_decisions_total", "rdx_policy_verdicts_total"))
    assert_reported(problems(tree), "[metrics]", "ConfigMap/rdx-dashboard", "'rdx_policy_verdicts_total'")


@pytest.mark.parametrize("expr, names", [
    ('sum by (le) (rate(a_bucket{x="y"}[5m]))', {"a_bucket"}),
    ('max by (ns) (b) - on (ns) group_left(pod) c > bool 2', {"b", "c"}),
    ('histogram_quantile(0.99, sum(rate(d{s=~"5.."}[$__rate_interval])) by (le)) offset 1h', {"d"}),
    ("delta(e[2m]) <= 0 or absent(f)", {"e", "f"}),
])
def test_promql_metric_names(expr, names):
    assert check.promql_metric_names(expr) == names


# --- docker -----------------------------------------------------------------------------------


def test_dockerfile_lint_error_fails(tree):
    dockerfile = tree / "docker/gateway.Dockerfile"
    dockerfile.write_text(dockerfile.read_text().replace("USER 10001:10001", "MAINTAINER ops@example.org\nUSER 10001:10001"))
    assert_reported(problems(tree), "[docker]", "docker/gateway.Dockerfile:", "DL4000")


def test_dockerfile_final_stage_as_root_fails(tree):
    dockerfile = tree / "docker/billing.Dockerfile"
    dockerfile.write_text(dockerfile.read_text().replace("USER 10001:10001\n", ""))
    assert_reported(problems(tree), "[docker]", "docker/billing.Dockerfile", "final stage runs as root")


def test_unparseable_compose_file_fails(tree):
    (tree / "docker/compose.yaml").write_text("services:\n  gateway: {image: rdx-gateway\n")
    assert_reported(problems(tree), "[compose]", "docker/compose.yaml", "does not parse")


def test_compose_file_against_the_spec_fails(tree):
    compose = tree / "docker/compose.yaml"
    compose.write_text(compose.read_text().replace("    network_mode: service:consensus\n",
                                                   "    network_mode: service:consensus\n    restart_policy: always\n"))
    assert_reported(problems(tree), "[compose]", "services.cometbft", "'restart_policy' was unexpected")


def test_shell_script_lint_error_fails(tree):
    script = tree / "docker/cometbft-entrypoint.sh"
    script.write_text(script.read_text() + "echo $1\n")
    assert_reported(problems(tree), "[docker]", "docker/cometbft-entrypoint.sh", "SC2086")
