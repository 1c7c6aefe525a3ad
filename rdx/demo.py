"""``rdx demo``: members use a running local exchange through the gateway only, with real data
sizes and real privacy computing, and every step's outcome is checked against the same
computation done in the clear. Exits non-zero if any outcome is wrong.

The demo plays four members (a bank, a telco, a logistics firm, a manufacturer). Each member
runs its own compute node over its own generated data (on one machine the local supervisor runs
the four nodes, asked through ``member-nodes.json``, so they keep running after the demo and a
job submitted later completes; ``rdx down`` stops them); the association admits them and
issues credits. The seed's scenarios:
listing and search; an access request with approval; joint marketing PSI (bank x telco, 100k
rows each); anti-fraud PSI-cardinality against a blacklist; joint credit statistics by secure
aggregation over three providers; HE risk scoring; supply-chain cross-verification between
four firms with planted mismatches; an association suspend that aborts a running job;
settlement and statements.
"""

from __future__ import annotations

import json
import random
import time

import numpy as np
from dataclasses import dataclass
from pathlib import Path

from rdx.components import LOOPBACK, free_port, http_ok
from rdx.sdk import Gateway
from rdx.supervisor import NodeSpec, write_member_nodes
from services.common.identity import Identity
from services.common.listing import example_metadata
from services.compute.datasets import Datasets
from services.compute.jobtypes import he_scoring as he
from services.compute.results import open_envelope

MEMBERS = {
    "bank": ("Bank of the Region", ["consumer", "provider"]),
    "telco": ("Regional Telco", ["provider", "consumer"]),
    "logistics": ("Logistics Co", ["provider", "consumer"]),
    "manufacturer": ("Manufacturer Ltd", ["provider", "consumer"]),
}
ROWS, OVERLAP, BLACKLIST = 100_000, 30_000, 5_000
CREDIT_ROWS, APPLICANTS, PURCHASE_ORDERS = 20_000, 10_000, 2_000
REGIONS = ["north", "south", "east", "west"]
FEATURES = ["income", "debt", "age"]
WEIGHTS = {"income": 0.8, "debt": -1.1, "age": 0.35, "__intercept__": -0.2}
KINDS = {"manufacturer": "contract", "telco": "invoice", "logistics": "logistics", "bank": "payment"}


@dataclass
class Step:
    name: str
    ok: bool
    seconds: float
    evidence: str


def phones(start: int, n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"+86-1{start + i:09d}{rng.randrange(10)}" for i in range(n)]


class Demo:
    def __init__(self, state: Path, say=print):
        self.state, self.say = state.resolve(), say
        self.eps = json.loads((state / "endpoints.json").read_text())
        self.keys, self.data = self.state / "keys", self.state / "demo"
        self.run = time.strftime("%H%M%S")
        self.steps: list[Step] = []
        self.nodes: dict[str, str] = {}  # member -> its compute node's URL

    # -- plumbing -------------------------------------------------------------------------------
    def identity(self, account: str) -> Identity:
        path = self.keys / f"{account}.json"
        if path.exists():
            return Identity.load(path)
        identity = Identity.generate(account)
        identity.save(path)
        return identity

    def gw(self, account: str) -> Gateway:
        # The demo reads through its own exchange's gateway (verify=False); `rdx verify` proves state from the chain.
        return Gateway(self.eps["gateway"], identity=self.identity(account), chain_id="rdx-local", timeout=120,
                       verify=False)

    def step(self, name: str, fn) -> object:
        self.say(f"… {name}")
        started = time.monotonic()
        try:
            ok, evidence, value = fn()
        except Exception as exc:  # noqa: BLE001 - a failed step is reported, the demo goes on to the summary
            ok, evidence, value = False, f"{type(exc).__name__}: {str(exc)[:160]}", None
        self.steps.append(Step(name, ok, time.monotonic() - started, evidence))
        return value

    # -- setup ----------------------------------------------------------------------------------
    def write_data(self) -> dict[str, list[str]]:
        """Each member's own data, on its own premises (here: its folder)."""
        customers = phones(0, ROWS, 1)
        subscribers = customers[:OVERLAP] + phones(10**6, ROWS - OVERLAP, 2)
        blacklist = customers[OVERLAP // 2:OVERLAP // 2 + BLACKLIST // 2] + phones(5 * 10**6, BLACKLIST // 2, 3)
        files = {"bank": ("customers", customers, None), "telco": ("subscribers", subscribers, "telco.subscribers"),
                 "logistics": ("blacklist", blacklist, "logistics.blacklist"), "manufacturer": ("parts", phones(9 * 10**6, 100, 4), None)}
        sets: dict[str, list[dict]] = {m: [] for m in MEMBERS}
        for member, (name, rows, asset) in files.items():
            folder = self.data / member
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{name}.csv").write_text("phone\n" + "\n".join(rows) + "\n")
            entry = {"id": name, "format": "csv", "path": f"{name}.csv", "key": "phone"}
            if asset:
                entry["asset"] = f"{asset}.{self.run}"
            sets[member].append(entry)
        clear = {"customers": customers, "subscribers": subscribers, "blacklist": blacklist, "credit": {},
                 "orders": {}}
        rng = np.random.default_rng(7)
        for member in ("telco", "logistics", "manufacturer"):  # joint credit statistics: three providers
            amount, region = rng.gamma(2.0, 400.0, CREDIT_ROWS).round(2), rng.choice(REGIONS, CREDIT_ROWS)
            (self.data / member / "credit.csv").write_text(
                "amount,region\n" + "".join(f"{a},{r}\n" for a, r in zip(amount, region)))
            sets[member].append({"id": "credit", "asset": f"{member}.credit.{self.run}", "format": "csv",
                                 "path": "credit.csv"})
            clear["credit"][member] = (amount, region)
        x = np.round(rng.normal(0, 1, (APPLICANTS, len(FEATURES))), 6)  # the bank's applicants' features
        (self.data / "bank" / "applicants.csv").write_text("id,income,debt,age\n" + "".join(
            f"app-{j},{r[0]:.6f},{r[1]:.6f},{r[2]:.6f}\n" for j, r in enumerate(x)))
        sets["bank"].append({"id": "applicants", "format": "csv", "path": "applicants.csv"})
        clear["applicants"] = x
        (self.data / "telco" / "model.csv").write_text(
            "feature,weight\n" + "".join(f"{k},{v}\n" for k, v in WEIGHTS.items()))
        sets["telco"].append({"id": "model", "asset": f"telco.model.{self.run}", "format": "csv", "path": "model.csv"})
        orders = {f"PO-{i:05d}": (f"{100 + i}.50", str(i % 9 + 1)) for i in range(PURCHASE_ORDERS)}
        for member in KINDS:  # the same purchase orders, with planted mismatches
            recs = dict(orders)
            if member == "telco":
                recs["PO-00003"] = ("999.00", recs["PO-00003"][1])  # an invoice over the contract
            if member == "logistics":
                recs["PO-00004"] = (recs["PO-00004"][0], "77")  # a short delivery
            if member == "bank":
                recs = dict(list(recs.items())[:-5])  # five orders never paid
            (self.data / member / "records.csv").write_text(
                "reference,amount,quantity\n" + "".join(f"{k},{a},{q}\n" for k, (a, q) in recs.items()))
            entry = {"id": "records", "format": "csv", "path": "records.csv"}
            if member != "manufacturer":
                entry["asset"] = f"{member}.records.{self.run}"
            sets[member].append(entry)
            clear["orders"][member] = recs
        for member, entries in sets.items():
            (self.data / member / "datasets.json").write_text(json.dumps({"datasets": entries}))
        return clear

    def admit(self) -> tuple[bool, str, None]:
        admin = self.gw("association")
        grpc = {m: free_port() for m in MEMBERS}
        done = []
        for member, (name, roles) in MEMBERS.items():
            node_key = self.identity(f"{member}.node")
            endpoint = f"{LOOPBACK}:{grpc[member]}"
            if self._exists(admin, member):  # a second demo run: the member's node moves to new ports
                self.gw(member).send("members.SetNode", {"node": {"public_key": node_key.public_key,
                                                                  "endpoint": endpoint}})
            else:
                r = admin.send("members.Register", {"id": member, "name": name, "roles": roles,
                                                    "public_key": self.identity(member).public_key,
                                                    "node": {"public_key": node_key.public_key, "endpoint": endpoint}})
                done.append(f"{member}@{r['height']}")
        specs = [NodeSpec(member=member, http_port=free_port(), grpc_port=grpc[member],
                          key_file=f"keys/{member}.node.json", datasets=f"demo/{member}/datasets.json")
                 for member in MEMBERS]
        write_member_nodes(self.state, specs)  # the supervisor (re)starts them: they outlive the demo
        self.nodes = {spec.member: f"http://{LOOPBACK}:{spec.http_port}" for spec in specs}
        deadline = time.monotonic() + 120
        waiting = dict(self.nodes)
        while waiting and time.monotonic() < deadline:
            waiting = {m: url for m, url in waiting.items() if not http_ok(f"{url}/readyz")}
            time.sleep(0.3)
        if waiting:
            raise RuntimeError(f"compute nodes not ready within 120 s: {', '.join(waiting)} "
                               f"(see {self.state / 'logs' / 'members'} and logs/supervisor.log)")
        return True, (", ".join(done) or "already members; nodes re-keyed") + "; 4 compute nodes up", None

    @staticmethod
    def _exists(admin: Gateway, account: str) -> bool:
        from rdx.sdk import GatewayError

        try:
            admin.account(account)
            return True
        except GatewayError:
            return False

    # -- scenarios ------------------------------------------------------------------------------
    def deposit(self) -> tuple[bool, str, None]:
        admin = self.gw("association")
        r = admin.send("bank.Deposit", {"to": "bank", "amount": 100_000, "reference": f"demo-{self.run}"})
        return True, f"height {r['height']}, tx {r['tx_hash'][:16]}", None

    def list_and_search(self) -> tuple[bool, str, None]:
        evidence = []
        for member, dataset, asset, ops, price in (
                ("telco", "subscribers", "telco.subscribers", ["psi", "psi_cardinality"], 500),
                ("logistics", "blacklist", "logistics.blacklist", ["psi_cardinality"], 200)):
            r = self.list_for(member, dataset, f"{asset}.{self.run}", ops, {"model": "fixed", "amount": price})
            evidence.append(f"{asset}@{r['height']}")
        deadline = time.monotonic() + 10
        found = []
        while time.monotonic() < deadline and len(found) < 2:
            page = self.gw("bank").search(self.run)
            hits = page.get("items") or page.get("results", [])
            found = [h for h in hits if self.run in json.dumps(h)]
            time.sleep(0.5)
        return len(found) >= 2, f"listed {', '.join(evidence)}; search '{self.run}' finds {len(found)}", None

    def access(self) -> tuple[bool, str, None]:
        bank, telco, logistics = self.gw("bank"), self.gw("telco"), self.gw("logistics")
        bank.request_access(f"g-mkt.{self.run}", f"telco.subscribers.{self.run}", ["psi", "psi_cardinality"],
                            "joint marketing", max_runs=5)
        bank.request_access(f"g-fraud.{self.run}", f"logistics.blacklist.{self.run}", ["psi_cardinality"],
                            "anti-fraud screening", max_runs=5)
        a = telco.approve(f"g-mkt.{self.run}")
        b = logistics.approve(f"g-fraud.{self.run}")
        mine = {g["id"]: g["status"] for g in bank.my_access()}
        ok = mine.get(f"g-mkt.{self.run}") == mine.get(f"g-fraud.{self.run}") == "granted"
        return ok, f"granted at heights {a['height']} and {b['height']}", None

    def psi(self, job: str, type_: str, asset: str, grant: str, clear) -> tuple[bool, str, None]:
        bank = self.gw("bank")
        sent = time.time()
        submitted = bank.submit_job(job, type_, [{"asset": asset, "grant": grant}], max_price=1_000,
                                    params={"dataset": "customers", "key": "phone"}, timeout_s=300)
        record = bank.wait_for_job(job, timeout=300)
        if record["status"] != "completed":
            return False, f"job {record['status']}: {record.get('ended_reason')}", None
        result = self._own_result("bank", job)
        got = len(result["intersection"]) if type_ == "psi" else result["cardinality"]
        ok = (sorted(result["intersection"]) == sorted(clear)) if type_ == "psi" else got == len(clear)
        return ok, (f"{got:,} matches (in the clear: {len(clear):,}); submitted at {submitted['height']}, "
                    f"completed at {record['ended_height']}, result hash {record['result_hash'][:12]}; "
                    f"{self.latency(job, sent, ('bank', asset.split('.', 1)[0]))}"), None

    def latency(self, job: str, sent: float, members: tuple[str, ...]) -> str:
        """Where the job's time went, from the nodes' marks (services/compute/lifecycle.py MARKS): the
        whole job from the submit to the result ready on the consumer's (first member's) node, the
        computation from the first node starting to the last one done computing, and the phases
        between; seconds. The marks are waited for briefly (the chain's time is read off the job's path)."""
        from services.compute.lifecycle import MARKS, PHASES, breakdown

        deadline = time.monotonic() + 10
        while True:
            rows = {m: self._node_get(m, f"/jobs/{job}") for m in members}
            if all(set(MARKS) <= set(r.get("timings") or {}) for r in rows.values()) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        t = [r.get("timings") or {} for r in rows.values()]
        try:
            b = breakdown(sent, t[0], t)
        except KeyError as exc:
            return f"latency: mark {exc} missing"
        phases = ", ".join(f"{name} +{b[name]:.2f}" for name in ("submission", *(p for p, _, _ in PHASES))
                           if name not in ("settlement", "total"))
        return (f"end to end {b['end_to_end']:.2f} s, computation {b['nodes']:.2f} s "
                f"(x{b['end_to_end'] / b['nodes']:.2f}); on the bank's node: {phases}")

    def grant_all(self, consumer: str, assets: list[tuple[str, str]], op: str, tag: str) -> list[dict]:
        """``consumer`` asks for ``op`` on each (owner, asset); each owner approves."""
        inputs = []
        for owner, asset in assets:
            grant = f"g-{tag}-{owner}.{self.run}"
            self.gw(consumer).request_access(grant, asset, [op], f"demo {tag}", max_runs=3)
            self.gw(owner).approve(grant)
            inputs.append({"asset": asset, "grant": grant})
        return inputs

    def list_for(self, member: str, dataset: str, asset: str, ops: list[str], price: dict, min_group: int = 1) -> dict:
        commitment, rows = Datasets.from_path(self.data / member / "datasets.json").get(dataset).summary()
        return self.gw(member).send("assets.List", {
            "id": asset, "level": "L3", "operations": ops, "commitment": commitment,
            "price": price, "min_group_size": min_group,
            "metadata": example_metadata(f"{dataset.capitalize()} of {member} ({self.run})", row_count=rows)})

    def run_job(self, consumer: str, job: str, type_: str, inputs: list[dict], params: dict) -> dict:
        # max_price as the chain quotes it: a per-record listing is covered for all its rows
        max_price = self.gw(consumer).quote([i["asset"] for i in inputs])["max_price"]
        self.gw(consumer).submit_job(job, type_, inputs, max_price=max_price, params=params, timeout_s=300)
        record = self.gw(consumer).wait_for_job(job, timeout=300)
        if record["status"] != "completed":
            raise RuntimeError(f"job {record['status']}: {record.get('ended_reason')}")
        record["opened"] = self._own_result(consumer, job)
        return record

    def credit_statistics(self, clear) -> tuple[bool, str, None]:
        providers = ["telco", "logistics", "manufacturer"]
        for p in providers:
            self.list_for(p, "credit", f"{p}.credit.{self.run}", ["aggregation"], {"model": "per_record", "amount": 1},
                          min_group=10)
        inputs = self.grant_all("bank", [(p, f"{p}.credit.{self.run}") for p in providers], "aggregation", "credit")
        record = self.run_job("bank", f"agg.{self.run}", "aggregation", inputs, {
            "columns": ["amount"], "stats": ["sum", "count", "mean", "variance"], "group_by": "region",
            "groups": REGIONS})
        got, worst = record["opened"]["groups"], 0.0
        for g in REGIONS:
            vals = np.concatenate([a[r == g] for a, r in clear["credit"].values()])
            row = got[g]["amount"]
            if row["count"] != len(vals):
                return False, f"count of {g}: {row['count']} != {len(vals)}", None
            worst = max(worst, abs(row["mean"] - vals.mean()) / vals.mean(), abs(row["sum"] - vals.sum()) / vals.sum())
        n = sum(len(a) for a, _ in clear["credit"].values())
        return worst < 1e-9, (f"{n:,} rows from 3 providers, mean and variance by region = numpy (worst relative "
                              f"error {worst:.1e}); completed at {record['ended_height']}"), None

    def risk_scoring(self, clear) -> tuple[bool, str, None]:
        self.list_for("telco", "model", f"telco.model.{self.run}", ["he_scoring"], {"model": "fixed", "amount": 300})
        inputs = self.grant_all("bank", [("telco", f"telco.model.{self.run}")], "he_scoring", "score")
        record = self.run_job("bank", f"he.{self.run}", "he_scoring", inputs,
                              {"dataset": "applicants", "features": FEATURES, "id": "id"})
        w = np.array([WEIGHTS[f] for f in FEATURES])
        expected = he.clear_scores(clear["applicants"], w, WEIGHTS["__intercept__"], he.sigmoid_poly(8))
        err = float(np.abs(np.array(record["opened"]["scores"]) - expected).max())
        return err < 1e-3, (f"{record['opened']['n']:,} applicants scored under CKKS; max |error| vs the clear "
                            f"polynomial {err:.1e} (bound 1e-3); completed at {record['ended_height']}"), None

    def supply_chain(self, clear) -> tuple[bool, str, None]:
        providers = ["telco", "logistics", "bank"]
        for p in providers:
            self.list_for(p, "records", f"{p}.records.{self.run}", ["supply_chain_verification"],
                          {"model": "fixed", "amount": 100})
        self.gw("association").send("bank.Deposit", {"to": "manufacturer", "amount": 10_000,
                                                     "reference": f"demo-mf-{self.run}"})
        inputs = self.grant_all("manufacturer", [(p, f"{p}.records.{self.run}") for p in providers],
                                "supply_chain_verification", "chain")
        record = self.run_job("manufacturer", f"sc.{self.run}", "supply_chain", inputs,
                              {"dataset": "records", "kinds": KINDS})
        # Every firm fetches its own outcome from its own node and opens it with its own key: each
        # learns which of its own records disagree, and with which kind of counterpart record.
        job, parties, found = f"sc.{self.run}", ["manufacturer", *providers], 0
        for me in parties:
            opened = record["opened"] if me == "manufacturer" else self._own_result(me, job)
            got = [(d["reference"], d["counterpart"], d["status"]) for d in opened["disagreements"]]
            expected = sorted(self._disagreements(clear["orders"], me, [p for p in parties if p != me]))
            if got != expected:
                return False, f"{me}'s outcome differs from the clear comparison of its records", None
            found += len(got)
        ok = len(record["attestations"]) == 4
        return ok, (f"each of the 4 firms got exactly its own disagreeing records ({found} in all: an over-invoice, "
                    f"a short delivery, 5 unpaid, seen from both sides); 4 signed attestations at height "
                    f"{record['ended_height']}"), None

    @staticmethod
    def _disagreements(orders: dict, me: str, others: list[str]) -> list[tuple[str, str, str]]:
        """The clear comparison of ``me``'s records with each other firm's, by reference."""
        out = []
        for other in others:
            theirs = orders[other]
            for ref, (a, q) in orders[me].items():
                if ref not in theirs:
                    out.append((ref, KINDS[other], "no_record"))
                    continue
                same_a, same_q = float(a) == float(theirs[ref][0]), float(q) == float(theirs[ref][1])
                if not (same_a and same_q):
                    out.append((ref, KINDS[other], {(False, True): "amount_differs", (True, False): "quantity_differs",
                                                    (False, False): "both_differ"}[(same_a, same_q)]))
        return out

    def kill_switch(self) -> tuple[bool, str, None]:
        bank, admin = self.gw("bank"), self.gw("association")
        job, before = f"psi-stop.{self.run}", bank.account("bank")
        bank.submit_job(job, "psi", [{"asset": f"telco.subscribers.{self.run}", "grant": f"g-mkt.{self.run}"}],
                        max_price=1_000, params={"dataset": "customers", "key": "phone"}, timeout_s=300)
        r = admin.send("assets.Suspend", {"id": f"telco.subscribers.{self.run}", "reason": "demo kill switch"})
        record = bank.wait_for_job(job, timeout=30)
        escrow = record["status"] == "aborted"
        return escrow, f"job {record['status']} at height {record['ended_height']} (suspend at {r['height']})", before

    def statements(self) -> tuple[bool, str, None]:
        admin = self.gw("association")
        deadline = time.monotonic() + 10
        while True:  # the billing read model trails the chain by the relay's latency
            statements = {m: admin.request("GET", f"/v1/billing/statements/{m}", params={"since": 0})
                          for m in ("bank", "telco", "logistics", "manufacturer", "association")}
            balances = {m: s["closing_balance"] for m, s in statements.items()}
            deposited = sum(st["totals_by_kind"].get("deposit", 0) for st in statements.values())
            # every credit the association issued is somewhere: with its holder, or paid on to providers,
            # compute operators and the association
            ok = sum(balances.values()) == deposited and balances["telco"] > 0 and balances["association"] > 0
            if ok or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        return ok, ", ".join(f"{m} {v:,}" for m, v in balances.items()) + f" = {deposited:,} issued", None

    def _own_result(self, member: str, job: str) -> dict:
        """``member``'s result of ``job`` from its own node, opened with its node key. A node releases
        it once it has seen JobCompleted, which may trail the gateway's view by the relay's latency."""
        import urllib.error

        deadline = time.monotonic() + 30
        while True:
            try:
                envelope = self._node_get(member, f"/jobs/{job}/result")["envelope"]
                return open_envelope(self.identity(f"{member}.node"), envelope)["result"]
            except urllib.error.HTTPError as exc:
                if exc.code != 409 or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def _node_get(self, member: str, path: str) -> dict:
        import urllib.request

        with urllib.request.urlopen(f"{self.nodes[member]}{path}", timeout=30) as resp:
            return json.loads(resp.read())

    def main(self) -> bool:
        clear = self.step("members' own data generated on their premises (100k phone numbers each)",
                          lambda: (True, f"{ROWS:,} bank customers, {ROWS:,} telco subscribers, "
                                         f"{BLACKLIST:,} blacklisted", self.write_data()))
        self.step("association admits four members; each starts its compute node", self.admit)
        self.step("association issues 100,000 credits to the bank", self.deposit)
        self.step("telco and logistics list their data by commitment; the bank finds it by search",
                  self.list_and_search)
        self.step("bank asks for access; the providers approve (on chain)", self.access)
        customers = set(clear["customers"])
        self.step("joint marketing: PSI bank x telco, 100k x 100k", lambda: self.psi(
            f"psi.{self.run}", "psi", f"telco.subscribers.{self.run}", f"g-mkt.{self.run}",
            customers & set(clear["subscribers"])))
        self.step("anti-fraud: PSI-cardinality bank x blacklist", lambda: self.psi(
            f"card.{self.run}", "psi_cardinality", f"logistics.blacklist.{self.run}", f"g-fraud.{self.run}",
            customers & set(clear["blacklist"])))
        self.step("joint credit statistics: secure aggregation over three providers", lambda: self.credit_statistics(clear))
        self.step("risk scoring: the bank's applicants scored by the telco's model under HE (CKKS)",
                  lambda: self.risk_scoring(clear))
        self.step("supply-chain cross-verification between four firms, mismatches planted",
                  lambda: self.supply_chain(clear))
        self.step("association suspends the telco's listing: a running job is aborted", self.kill_switch)
        self.step("settlement and statements (billing read model)", self.statements)
        return all(s.ok for s in self.steps)

    def summary(self) -> str:
        lines = [f"{'step':<84} {'result':<7} {'time':>7}  evidence"]
        for s in self.steps:
            lines.append(f"{s.name:<84} {'ok' if s.ok else 'WRONG':<7} {s.seconds:>6.1f}s  {s.evidence}")
        return "\n".join(lines)


def run(state: Path) -> bool:
    demo = Demo(state)
    ok = demo.main()
    print()
    print(demo.summary())
    print()
    print("demo: every step's outcome is as expected" if ok else "demo: a step's outcome is WRONG")
    print(f"the exchange and the four members' compute nodes are still running (state in {state}); "
          "`make down` stops them")
    return ok
