"""Job handlers: submission checks grants, suspensions and balance and holds escrow;
attestations from every participant's node complete the job and settle it."""

from __future__ import annotations

import hashlib

from services.common.policy import AssetView, GrantView
from services.common.tx import Code
from services.consensus.access.handlers import chain_caller
from services.consensus.access.keeper import AccessKeeper
from services.consensus.assets.keeper import AssetsKeeper
from services.consensus.bank.keeper import BankKeeper
from services.consensus.context import Context, Rejected
from services.consensus.governance.keeper import GovernanceKeeper
from services.consensus.jobs import messages as m
from services.consensus.jobs.keeper import LOCKED, JobsKeeper
from services.consensus.jobs.messages import MAX_PRICE
from services.consensus.jobs.settlement import settle
from services.consensus.members.keeper import MembersKeeper
from services.consensus.pricing import PricingKeeper
from services.consensus.privacy.handlers import spend_for_job


def submit(ctx: Context, msg: m.Submit) -> None:
    members, jobs = MembersKeeper(ctx), JobsKeeper(ctx)
    consumer = members.signing_member(ctx.signer, "consumer")
    if jobs.get(msg.id) is not None:
        raise Rejected(Code.CONFLICT, f"job {msg.id} already exists")
    if consumer["node"] is None:
        raise Rejected(Code.INVALID_STATE, f"{consumer['id']} has no compute node registered")
    assets, access = AssetsKeeper(ctx), AccessKeeper(ctx)
    operation = m.OPERATION_OF[msg.type]
    policy, caller = GovernanceKeeper(ctx).policy(), chain_caller(consumer)
    pricing = PricingKeeper(ctx)  # the chain's params, read once for the tx
    # Each record is read once and passed on: a member's node for JobAuthorized, a grant for its cover.
    inputs, grants, nodes = [], {}, {consumer["id"]: consumer["node"]}
    for item in msg.inputs:
        asset = assets.usable(item.asset)
        if asset is None:
            raise Rejected(Code.NOT_FOUND, f"asset {item.asset} is not listed")
        provider = members.member(asset["owner"])
        if provider["status"] != "active":
            raise Rejected(Code.SUSPENDED_SIGNER, f"provider {provider['id']} is suspended")
        if provider["node"] is None:
            raise Rejected(Code.INVALID_STATE, f"provider {provider['id']} has no compute node")
        grant = access.get(item.grant)
        if grant is None or grant["asset"] != item.asset:
            raise Rejected(Code.UNAUTHORIZED, f"grant {item.grant} is not a grant on {item.asset}")
        decision = policy.decide(caller, "run", AssetView.of(asset), operation=operation,
                                 grant=GrantView.of(grant, ctx.time))
        if not decision.allowed:
            raise Rejected(Code.UNAUTHORIZED, f"policy v{policy.version} does not allow {operation} on {item.asset} "
                                              f"under grant {item.grant} ({grant['status']}, "
                                              f"{grant['max_runs'] - grant['runs_used']} runs left)")
        grant["runs_used"] += 1
        price = pricing.resolve(asset, grant)
        access.put(grant)
        grants[item.asset] = grant  # as just stored
        inputs.append({"asset": item.asset, "grant": item.grant, "provider": provider["id"],
                       "version": asset["version"], "commitment": asset["commitment"], "price": price,
                       "min_group_size": asset["min_group_size"]})
        nodes[provider["id"]] = provider["node"]
    deadline = ctx.time + msg.timeout_s
    covers = {i["asset"]: pricing.cover(i["price"], grants[i["asset"]], deadline) for i in inputs}
    quote = sum(covers.values())
    if quote > MAX_PRICE:
        raise Rejected(Code.PRICE_TOO_LOW, f"the quote for this job, {quote}, exceeds the largest max_price {MAX_PRICE}; "
                                           "use fewer or smaller inputs")
    if msg.max_price < quote:
        lines = ", ".join(f"{asset} {cover}" for asset, cover in covers.items())
        raise Rejected(Code.PRICE_TOO_LOW, f"max_price {msg.max_price} is below the quote {quote} at height "
                                           f"{ctx.height} ({lines})")
    spend_for_job(ctx, msg.id, msg.type, msg.params, consumer["id"], inputs)  # issue 17: before anything runs
    BankKeeper(ctx).hold(msg.id, consumer["id"], msg.max_price)
    job = {"id": msg.id, "type": msg.type, "consumer": consumer["id"], "inputs": inputs,
           "participants": sorted(nodes), "params": msg.params, "max_price": msg.max_price,
           "status": "running", "attestations": {}, "submitted_height": ctx.height,
           "deadline": deadline}
    jobs.open(job)
    nodes = {p: nodes[p] for p in job["participants"]}
    ctx.emit("JobAuthorized", f"job:{msg.id}", job=msg.id, type=msg.type, consumer=consumer["id"],
             inputs=[{k: i[k] for k in ("asset", "provider", "version", "commitment", "min_group_size", "price")}
                     for i in inputs],
             participants=job["participants"], nodes=nodes, params=msg.params, max_price=msg.max_price,
             deadline=job["deadline"])


def _running(jobs: JobsKeeper, job_id: str, *, locked_ok: bool = False) -> dict:
    job = jobs.get(job_id)
    if job is not None and job["status"] == LOCKED and not locked_ok:
        raise Rejected(Code.INVALID_STATE, f"job {job_id} is locked for release: every party attested, its escrow "
                                           "settles to the providers once they release their keys, or is refunded "
                                           "at the deadline if one does not")
    if job is None:
        raise Rejected(Code.INVALID_STATE, f"job {job_id} is not running")
    if job["status"] not in ("running", LOCKED):
        raise Rejected(Code.INVALID_STATE, f"job {job_id} is not running: it is {job['status']}")
    return job


def attest(ctx: Context, msg: m.Attest) -> None:
    jobs = JobsKeeper(ctx)
    node_owner = MembersKeeper(ctx).signing_node(ctx.signer)
    job = _running(jobs, msg.job)
    member = node_owner["id"]
    if member not in job["participants"]:
        raise Rejected(Code.UNAUTHORIZED, f"{member} does not take part in job {msg.job}")
    if member in job["attestations"]:
        raise Rejected(Code.CONFLICT, f"{member} has already attested job {msg.job}")
    mine = {i["asset"]: i["commitment"] for i in job["inputs"] if i["provider"] == member}
    if msg.input_commitments != mine:
        raise Rejected(Code.INVALID_PAYLOAD, "input commitments do not match the listed versions of this job's inputs")
    unknown = set(msg.records) - {i["asset"] for i in job["inputs"]}
    if unknown:
        raise Rejected(Code.INVALID_PAYLOAD, f"records given for {len(unknown)} asset(s) that are not inputs of this job")
    providers = {i["provider"] for i in job["inputs"]}
    if set(msg.releases) - providers:
        raise Rejected(Code.INVALID_PAYLOAD, "release hashes given for members that provide no input of this job")
    if msg.key is not None:
        _key_acceptable(job, member, msg)
    job["attestations"][member] = {"result_hash": msg.result_hash, "records_used": msg.records_used,
                                   "records": dict(msg.records), "releases": dict(msg.releases),
                                   "input_commitments": msg.input_commitments, "height": ctx.height,
                                   "tx_signer": ctx.signer}
    ctx.emit("JobAttested", f"job:{msg.job}", job=msg.job, member=member, result_hash=msg.result_hash,
             records_used=msg.records_used)
    if len(job["attestations"]) < len(job["participants"]):
        jobs.put(job)
        return
    _attested(ctx, jobs, job, store=msg.key is None)
    if msg.key is not None:
        if job["status"] != LOCKED:  # raising discards every write and event of this tx: nothing is stored
            raise Rejected(Code.INVALID_STATE, f"job {msg.job}'s attestations disagree ({job['ended_reason']}): "
                                               "a release key is taken only with an attestation that locks the job")
        _record_release(ctx, jobs, job, member, msg.key)


def _key_acceptable(job: dict, member: str, msg: m.Attest) -> None:
    """A key may come with an attestation only from a provider naming its hash, and only as the
    job's last missing attestation (whether the job then locks is checked after it is applied)."""
    missing = set(job["participants"]) - set(job["attestations"]) - {member}
    if missing:
        raise Rejected(Code.INVALID_STATE, f"a release key comes only with job {msg.job}'s last missing attestation; "
                                           f"{len(missing)} other participant(s) have not attested yet")
    if member not in {i["provider"] for i in job["inputs"]}:
        raise Rejected(Code.UNAUTHORIZED, f"{member} holds no release key of job {msg.job}")
    if hashlib.sha256(bytes.fromhex(msg.key)).hexdigest() != msg.releases.get(member):
        raise Rejected(Code.INVALID_PAYLOAD, "the key does not open the release hash this attestation names")


def records_of(job: dict) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """Each input's records as attested (its provider's count for it: ``records`` if given, else
    its ``records_used``), and the inputs on which some party stated a different count."""
    attestations, agreed, disputed = job["attestations"], {}, {}
    for item in job["inputs"]:
        asset, provider = item["asset"], item["provider"]
        own = attestations[provider]
        agreed[asset] = own.get("records", {}).get(asset, own["records_used"])
        stated = {m: a["records"][asset] for m, a in sorted(attestations.items()) if asset in a.get("records", {})}
        if any(count != agreed[asset] for count in stated.values()):
            disputed[asset] = {provider: agreed[asset], **stated}
    return agreed, disputed


def releases_of(job: dict) -> tuple[dict[str, str], list[str]]:
    """The release-key hash each provider must open (every party's attestation may state them), and
    the providers for which two parties stated different hashes."""
    wanted: dict[str, str] = {}
    conflicts = set()
    for attestation in job["attestations"].values():
        for provider, digest in attestation.get("releases", {}).items():
            if wanted.setdefault(provider, digest) != digest:
                conflicts.add(provider)
    return wanted, sorted(conflicts)


def _attested(ctx: Context, jobs: JobsKeeper, job: dict, *, store: bool = True) -> None:
    """Everyone attested: fail on any disagreement (nobody is paid, nothing is released); else
    lock the job for release, or complete it when no provider holds back a key. ``store`` False:
    a locked job is not written here, as the caller releases a key next and writes it then (or
    rejects the whole tx)."""
    hashes = {a["result_hash"] for a in job["attestations"].values()}
    if len(hashes) != 1:
        jobs.finish(job, "failed", "participants attested different results")
        return
    job["result_hash"] = hashes.pop()
    _, disputed = records_of(job)
    if disputed:
        job["records_disputed"] = disputed
        for asset, counts in sorted(disputed.items()):
            ctx.emit("JobRecordsDisputed", f"job:{job['id']}", job=job["id"], asset=asset, counts=counts)
        jobs.finish(job, "failed", "participants attested different records used for "
                                   + ", ".join(sorted(disputed)) + "; nobody is charged")
        return
    wanted, conflicts = releases_of(job)
    if conflicts:
        jobs.finish(job, "failed", "participants attested different release keys of " + ", ".join(conflicts))
        return
    if wanted:
        job["status"], job["releases"], job["locked_height"] = LOCKED, {}, ctx.height
        if store:
            jobs.put(job)
        ctx.emit("JobLocked", f"job:{job['id']}", job=job["id"], result_hash=job["result_hash"],
                 pending=sorted(wanted))
        return
    _conclude(ctx, jobs, job)


def _conclude(ctx: Context, jobs: JobsKeeper, job: dict) -> None:
    pricing, access = PricingKeeper(ctx), AccessKeeper(ctx)
    records, _ = records_of(job)
    charges = {i["asset"]: pricing.charge(i, records[i["asset"]], access) for i in job["inputs"]}
    # The association the board acts as: one read (a scan of every member before, per settlement). A
    # chain whose genesis named no board has the same fallback as before (GovernanceKeeper.board).
    association = GovernanceKeeper(ctx).board()["association"]
    p = pricing.params  # the chain's params as PricingKeeper read them, not read and validated again
    outcome = settle(charges, {i["asset"]: i["provider"] for i in job["inputs"]}, job["max_price"],
                     job["participants"], association, p.association_fee_bps, p.compute_fee_bps)
    jobs.finish(job, "completed", "all participants attested the same result"
                + (" and every release key is on chain" if job.get("releases") else ""), outcome)


def release(ctx: Context, msg: m.Release) -> None:
    """A provider's node publishes its release key; the last one completes and settles the job."""
    jobs = JobsKeeper(ctx)
    member = MembersKeeper(ctx).signing_node(ctx.signer)["id"]
    job = jobs.get(msg.job)
    if job is None or job["status"] != LOCKED:
        raise Rejected(Code.INVALID_STATE, f"job {msg.job} is not locked for release")
    wanted, _ = releases_of(job)
    if member not in wanted:
        raise Rejected(Code.UNAUTHORIZED, f"{member} holds no release key of job {msg.job}")
    if member in job["releases"]:
        raise Rejected(Code.CONFLICT, f"{member} has already released its key of job {msg.job}")
    if hashlib.sha256(bytes.fromhex(msg.key)).hexdigest() != wanted[member]:
        raise Rejected(Code.INVALID_PAYLOAD, "the key does not open the release hash attested for this job")
    _record_release(ctx, jobs, job, member, msg.key)


def _record_release(ctx: Context, jobs: JobsKeeper, job: dict, member: str, key: str) -> None:
    """``member``'s checked key kept in the locked job's record; the last wanted one settles it."""
    job["releases"][member] = key
    ctx.emit("JobReleased", f"job:{job['id']}", job=job["id"], member=member)
    if set(job["releases"]) == set(releases_of(job)[0]):
        _conclude(ctx, jobs, job)
    else:
        jobs.put(job)


def _consumer_committed(account: dict | None, job: dict) -> None:
    """Once the consumer has attested, its attestation commits it: neither its member's keys nor its
    node may end the job any more (the deadline and the providers decide). Otherwise a consumer that
    saw a provider's key in the mempool could end the job first in the same block, refunded."""
    if account is not None and account["member"] == job["consumer"] and job["consumer"] in job["attestations"]:
        raise Rejected(Code.INVALID_STATE, f"job {job['id']}'s consumer has attested it: it may no longer end it "
                                           "(the providers' attestations and the deadline decide)")


def fail(ctx: Context, msg: m.Fail) -> None:
    jobs, members = JobsKeeper(ctx), MembersKeeper(ctx)
    job = _running(jobs, msg.job)
    account = members.account(ctx.signer)
    if account["member"] not in job["participants"]:
        raise Rejected(Code.UNAUTHORIZED, "only a participant may fail a job")
    _consumer_committed(account, job)
    jobs.finish(job, "failed", msg.reason)


def abort(ctx: Context, msg: m.Abort) -> None:
    jobs, members = JobsKeeper(ctx), MembersKeeper(ctx)
    job = jobs.get(msg.job)
    owners = {i["provider"] for i in job["inputs"]} if job else set()
    account = members.account(ctx.signer)
    is_owner = account is not None and account["member"] in owners
    # A locked job may still be given up by a provider (its own pay) or the association, never the consumer.
    job = _running(jobs, msg.job, locked_ok=is_owner or members.is_association(ctx.signer))
    if account is not None and account["kind"] == "node":
        # A provider's compute node enforcing its member's policy on its own inputs (issue 17).
        if account["member"] not in owners:
            raise Rejected(Code.UNAUTHORIZED, "only the compute node of an input's owner may abort a job")
    else:
        member = members.signing_member(ctx.signer)
        if not (members.is_association(ctx.signer) or member["id"] == job["consumer"] or member["id"] in owners):
            raise Rejected(Code.UNAUTHORIZED, "only the association, the consumer or an input's owner may abort a job")
    if not members.is_association(ctx.signer):
        _consumer_committed(account, job)
    jobs.finish(job, "aborted", msg.reason)


def begin_block(ctx: Context) -> None:
    JobsKeeper(ctx).fail_overdue(ctx.time)


HANDLERS = {
    "jobs.Submit": (m.Submit, submit),
    "jobs.Attest": (m.Attest, attest),
    "jobs.Fail": (m.Fail, fail),
    "jobs.Abort": (m.Abort, abort),
    "jobs.Release": (m.Release, release),
}
