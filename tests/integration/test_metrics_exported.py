"""Every metric a Grafana dashboard or an alert rule in infra/ names is one a running service
really exports.

The names used come from the rendered overlays with infra/check.py's own extractor; the first
test checks they are all in infra/metrics.txt (as `make check-infra` does), and every name of
that list is then checked against what the services export. The whole exchange is started as `rdx up`
starts it (rdx.supervisor.Exchange on shifted free ports), with CometBFT's Prometheus
instrumentation on as the validator pods have it (CMT_INSTRUMENTATION_PROMETHEUS), a little
traffic is driven so the labelled series exist (a request to every service, a signed
transaction that the relay publishes and the consumers apply), then every /metrics is scraped.

For each name two things are checked:
- declared: every exporter infra/metrics.txt names for it ("all" = every rdx service) lists it
  in its exposition (a `# TYPE` line, or its samples);
- has samples: some exporter has at least one sample of it, so a panel shows data. A few series
  only exist after something this test does not drive (a finished privacy-preserving job):
  SAMPLES_ONLY_AFTER says which, and for those only the declaration is checked.
A name that no service exports yet goes in NOT_EXPORTED_YET with the service that is to export
it (an expected failure, not strict, so it shows as XPASS the moment that service exports it);
today there is none.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from rdx.components import LOOPBACK, free_port
from rdx.supervisor import Exchange, Ports, association_identity
from portkit import free_offset
from services.common.chain import ChainClient
from services.common.identity import Identity

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "infra"))
import check  # noqa: E402  infra/check.py: the extractor `make check-infra` uses

pytestmark = pytest.mark.timeout(420)

SERVICES = ("consensus", "catalog", "compute", "billing", "gateway")

# Named by a dashboard or an alert, but not (yet) exported by the service that is to export them.
NOT_EXPORTED_YET: dict[str, str] = {}
# Declared from the start, but with labelled series only once something happens that this test
# does not drive.
SAMPLES_ONLY_AFTER = {
    "rdx_jobs_total": "a privacy-preserving job has ended on the compute node (labels type, outcome)",
    "rdx_tx_refused_total": "a validator has refused a tx (labels stage, reason)",
}


def used_metric_names() -> dict[str, list[str]]:
    """{metric name as written in PromQL: [where it is used]} over every overlay (runs kustomize)."""
    rendered, problems = check.render(ROOT, check.ensure_kustomize())
    assert not problems, problems
    used: dict[str, list[str]] = {}
    for where, name in check.used_metrics(rendered):
        used.setdefault(name, []).append(where)
    return used


# infra/metrics.txt, read at collection (no kustomize needed to collect, so `pytest -m unit` stays
# fast): name -> (type, exporter). check-infra holds every name a dashboard or alert uses to this
# list, and test_every_used_metric_is_listed below checks that again, so testing every listed
# name covers every used one.
LISTED = check.load_metric_list(ROOT)
EXPORTERS = {}
for _line in (ROOT / "infra" / "metrics.txt").read_text().splitlines():
    _fields = _line.split("#", 1)[0].split()
    if len(_fields) >= 3:
        EXPORTERS[_fields[0]] = _fields[2]


def base_name(name: str) -> str:
    """The name infra/metrics.txt lists: histograms are used as <base>_bucket/_sum/_count."""
    for suffix in ("_bucket", "_sum", "_count"):
        stem = name[: -len(suffix)]
        if name.endswith(suffix) and LISTED.get(stem) in ("histogram", "summary"):
            return stem
    return name


def exposition(text: str) -> tuple[set[str], set[str]]:
    """(names declared by `# TYPE` lines, sample names with at least one sample)."""
    declared, sampled = set(), set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            declared.add(line.split()[2])
        elif line and not line.startswith("#"):
            sampled.add(re.match(r"[a-zA-Z_:][\w:]*", line).group(0))
    return declared, sampled


def get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


@pytest.fixture(scope="module")
def scrapes(tmp_path_factory) -> dict[str, tuple[set[str], set[str]]]:
    """{exporter: (declared, sampled)} for the five services and CometBFT, after some traffic."""
    exchange = Exchange(tmp_path_factory.mktemp("metrics") / "state", Ports().shifted(free_offset()), log=lambda m: None)
    comet_metrics = free_port()
    exchange.comet.prometheus_port = comet_metrics  # as the validator pods run it, on loopback
    try:
        exchange.start()
        urls = {name: url for name, url in exchange.endpoints().items() if name in SERVICES}
        drive_traffic(exchange, urls)
        results = {}
        for name, url in urls.items():
            status, text = get(f"{url}/metrics")
            assert status == 200, f"{name} /metrics answered {status}"
            results[name] = exposition(text)
        status, text = get(f"http://{LOOPBACK}:{comet_metrics}/metrics")
        assert status == 200, f"CometBFT's /metrics answered {status}"
        results["cometbft"] = exposition(text)
        yield results
    finally:
        exchange.stop()


def drive_traffic(exchange: Exchange, urls: dict[str, str]) -> None:
    """A request to every service (the HTTP series; the gateway's policy decision), and one signed
    transaction, so the relay publishes an event and the consumers apply it (the Kafka series)."""
    for url in urls.values():
        get(f"{url}/healthz")
        get(f"{url}/readyz")
    get(f"{urls['gateway']}/v1/listings")  # unauthenticated: a "deny" decision, audited
    association = association_identity(exchange.keys)
    member = Identity.generate("metrics-probe")
    node = Identity.generate("metrics-probe.node")

    async def submit() -> int:
        async with ChainClient(exchange.comet.rpc_url, exchange.comet.chain_id) as client:
            committed = await client.submit(association, "members.Register", {
                "id": member.account, "name": "Metrics probe", "roles": ["consumer"], "public_key": member.public_key,
                "node": {"public_key": node.public_key, "endpoint": "127.0.0.1:1"}})
            return committed.height

    height = asyncio.run(submit())
    # Wait until the relay has published that block and a consumer has applied it.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        _, consensus = get(f"{urls['consensus']}/metrics")
        _, catalog = get(f"{urls['catalog']}/metrics")
        relay = re.search(r"^rdx_relay_published_height (\S+)", consensus, re.MULTILINE)
        if relay and float(relay.group(1)) >= height and "rdx_kafka_events_consumed_total{" in catalog \
                and "rdx_kafka_consumer_lag_events{" in catalog:
            return
        time.sleep(0.5)
    pytest.fail(f"the transaction at height {height} did not reach the consumers' metrics within 60s")


def test_every_used_metric_is_listed():
    """The names the dashboards and alerts use (infra/check.py's extractor over the rendered
    overlays) are all in infra/metrics.txt, so the per-name tests below cover them."""
    used = used_metric_names()
    assert len(used) >= 10 and {"rdx_service_up", "cometbft_consensus_height"} <= set(used), used
    unlisted = sorted(n for n in used if base_name(n) not in LISTED)
    assert not unlisted, f"used by a dashboard or alert but not in infra/metrics.txt: {unlisted}"


def sample_names(name: str) -> list[str]:
    """The sample names of a listed metric: a histogram's _bucket, _sum and _count."""
    if LISTED[name] in ("histogram", "summary"):
        return [f"{name}_bucket", f"{name}_sum", f"{name}_count"] if LISTED[name] == "histogram" \
            else [name, f"{name}_sum", f"{name}_count"]
    return [name]


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(reason=f"not exported yet by {NOT_EXPORTED_YET[n]}"))
    if n in NOT_EXPORTED_YET else n
    for n in sorted(LISTED)
])
def test_metric_is_exported(name, scrapes):
    exporter = EXPORTERS.get(name)
    assert exporter, f"{name} has no exporter column in infra/metrics.txt"
    exporters = list(SERVICES) if exporter == "all" else [exporter]
    missing = [e for e in exporters if e not in scrapes]
    assert not missing, f"infra/metrics.txt names exporter(s) {missing} for {name}, which this test does not run"
    not_declared = [e for e in exporters if name not in scrapes[e][0] and not set(sample_names(name)) & scrapes[e][1]]
    assert not not_declared, f"{name} is not exported by {', '.join(not_declared)} (infra/metrics.txt says: {exporter})"
    if name in SAMPLES_ONLY_AFTER:
        return
    for sample in sample_names(name):
        assert any(sample in scrapes[e][1] for e in exporters), (
            f"{sample} is declared by {exporter} but has no sample after the traffic this test drives")


def test_scrape_summary(scrapes):
    """Not a check: prints which exporter has which used name, for the record."""
    table = {e: sorted(n for n in LISTED if n in s[0] or set(sample_names(n)) & s[1]) for e, s in scrapes.items()}
    print(json.dumps(table, indent=1))
