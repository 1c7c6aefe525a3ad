"""The PSI job type between two in-process parties over an in-memory channel: results against
the clear intersection, what each side sees, and what it must never see (canaries)."""

from __future__ import annotations

import asyncio
import hashlib
import json

import pytest

from services.compute import handshake as hs
from services.compute import psi_kernel
from services.compute.commitment import commitment_of
from services.compute.jobtypes import JOB_TYPES, job_type
from services.compute.jobtypes.base import (InputRef, JobContext, JobRefused, JobSpec, Message, NodeRef, Outcome,
                                            PeerLost, ProtocolError)
from services.compute.jobtypes.psi import match_positions, normalise_keys
from services.compute.datasets import Loaded

CANARY_C = "CANARY-consumer-7f3a9e"
CANARY_P = "CANARY-provider-51c0d2"


class MemoryChannel:
    """One end of an in-memory channel with the same transcript rules as peer.SecureChannel."""

    def __init__(self, peer: str, inbox: asyncio.Queue, outbox: asyncio.Queue, session: bytes, record: list):
        self.peer, self.inbox, self.outbox, self.record = peer, inbox, outbox, record
        self._sent, self._received = hashlib.sha256(session), hashlib.sha256(session)

    async def send(self, kind, body=b"", **header):
        frame = hs.encode(kind, header, body)
        self._sent.update(len(frame).to_bytes(8, "big") + frame)
        self.record.append(frame)
        await self.outbox.put(frame)

    async def recv(self):
        frame = await self.inbox.get()
        if frame is None:
            raise PeerLost("gone")
        self._received.update(len(frame).to_bytes(8, "big") + frame)
        return Message(*hs.decode(frame))

    def transcript(self):
        return self._sent.copy().hexdigest(), self._received.copy().hexdigest()

    async def close(self):
        pass


def pair(a: str, b: str):
    q1, q2 = asyncio.Queue(), asyncio.Queue()
    sent_by = {a: [], b: []}
    return (MemoryChannel(b, q1, q2, b"s", sent_by[a]), MemoryChannel(a, q2, q1, b"s", sent_by[b]), sent_by)


def spec_for(type_="psi", min_group=1, commitment="00" * 32, params=None) -> JobSpec:
    return JobSpec(job="j-1", type=type_, consumer="bank", participants=("bank", "telco"),
                   inputs=(InputRef("telco.subs", "telco", 1, commitment, min_group),),
                   nodes={"bank": NodeRef("bank.node", "x"), "telco": NodeRef("telco.node", "y")},
                   params=params or {"dataset": "customers", "key": "phone"}, max_price=100, deadline=2**40)


def context(spec, member, chan, data: dict[str, list[str]], results: dict, workers=2, batch=64):
    async def channel(peer):
        return chan

    async def load(name, columns):
        values = data[name]
        return Loaded(name, commitment_of(["phone"], [(v,) for v in values]), len(values), {"phone": list(values)})

    async def commit_result(result: bytes) -> str:
        results[member] = result
        return hashlib.sha256(result).hexdigest()

    async def compute(fn, *args):
        return await asyncio.to_thread(fn, *args)

    return JobContext(spec, member, channel=channel, load_input=lambda ref, cols: load(ref.asset, cols),
                      load_local=load, dataset_key=lambda _: "phone", commit_result=commit_result,
                      progress=lambda *a: None, compute=compute, workers=workers, batch=batch)


def phones(start: int, n: int) -> list[str]:
    return [f"+86-1{i:010d}" for i in range(start, start + n)]


async def run_held_back(type_, consumer_keys, provider_keys, **kw):
    """Both sides' protocol runs, up to their attestations: nothing released yet."""
    spec = spec_for(type_, **kw)
    c_chan, p_chan, sent_by = pair("bank", "telco")
    results: dict = {}
    job = job_type(type_)
    c = context(spec, "bank", c_chan, {"customers": consumer_keys}, results)
    p = context(spec, "telco", p_chan, {"telco.subs": provider_keys}, results)
    outcome_c, outcome_p = await asyncio.gather(job.run(c), job.run(p))

    async def finish(released):  # the consumer's node, once the chain holds the released keys
        await job.finish(c, outcome_c.pending, released)
    return outcome_c, outcome_p, results, sent_by, finish


async def run_pair(type_, consumer_keys, provider_keys, **kw):
    outcome_c, outcome_p, results, sent_by, finish = await run_held_back(type_, consumer_keys, provider_keys, **kw)
    if outcome_c.pending is not None:  # psi: the chain locked the job and the provider released its key
        assert "bank" not in results
        await finish({"telco": outcome_p.release_key})
    return outcome_c, outcome_p, results, sent_by


async def test_psi_cardinality_holds_the_count_back_until_the_providers_key_is_released():
    oc, op, results, sent_by, finish = await run_held_back("psi_cardinality", phones(0, 300), phones(250, 400))
    assert results == {} and oc.records == op.records == {"telco.subs": 400}
    [count] = [hs.decode(f) for f in sent_by["telco"] if hs.decode(f)[0] == "count"]
    assert "c" not in count[1] and count[1]["release"] == oc.releases["telco"] == hashlib.sha256(
        op.release_key).hexdigest()
    with pytest.raises(JobRefused, match="does not match"):
        await finish({"telco": bytes(32)})
    await finish({"telco": op.release_key})
    assert json.loads(results["bank"])["cardinality"] == 50


async def test_psi_holds_the_consumer_result_back_until_the_providers_key_is_released():
    """Issue 16: the consumer's node cannot match before the key is on chain, a key other than the
    one whose hash it saw opens nothing, and both attest the provider's set size and that hash."""
    oc, op, results, sent_by, finish = await run_held_back("psi", phones(0, 300), phones(250, 400))
    assert results == {} and oc.records == op.records == {"telco.subs": 400}
    assert oc.releases == {"telco": hashlib.sha256(op.release_key).hexdigest()} and op.release_key not in b"".join(
        sent_by["telco"])
    with pytest.raises(JobRefused, match="does not match"):
        await finish({"telco": bytes(32)})
    with pytest.raises(JobRefused, match="does not match"):
        await finish({})
    assert results == {}
    await finish({"telco": op.release_key})
    assert json.loads(results["bank"])["intersection"] == sorted(set(phones(0, 300)) & set(phones(250, 400)))


async def test_a_restarted_consumer_node_lists_its_keys_again_and_refuses_a_dataset_changed_since():
    """The kept state holds no key: a fresh job type (a restarted node) lists them again in the
    order sent, from the dataset with the commitment the run saw; a changed dataset opens nothing."""
    oc, op, results, _, _ = await run_held_back("psi", phones(0, 300), phones(250, 400))
    assert not any(k.encode() in oc.pending for k in phones(0, 300))
    changed = context(spec_for("psi"), "bank", None, {"customers": phones(1, 300)}, results)
    with pytest.raises(JobRefused, match="changed after the run"):
        await job_type("psi").finish(changed, oc.pending, {"telco": op.release_key})
    same = context(spec_for("psi"), "bank", None, {"customers": phones(0, 300)}, results)
    await job_type("psi").finish(same, oc.pending, {"telco": op.release_key})
    assert json.loads(results["bank"])["intersection"] == sorted(set(phones(0, 300)) & set(phones(250, 400)))


@pytest.mark.parametrize("release", [None, "", "zz" * 32, 7, "AB" * 32])
async def test_an_xab_done_without_a_proper_release_hash_is_a_protocol_error(release):
    """Hostile input: a provider that does not say which key its batches are held back under."""
    spec = spec_for("psi")
    c_chan, p_chan, _ = pair("bank", "telco")
    real_send = p_chan.send

    async def send(kind, body=b"", **header):
        if kind == "xab_done":
            header = {k: v for k, v in header.items() if k != "release"} | ({} if release is None else
                                                                              {"release": release})
        await real_send(kind, body, **header)

    p_chan.send = send
    job = job_type("psi")
    c = context(spec, "bank", c_chan, {"customers": phones(0, 50)}, {})
    p = context(spec, "telco", p_chan, {"telco.subs": phones(25, 50)}, {})
    provider = asyncio.ensure_future(job.run(p))
    with pytest.raises(ProtocolError, match="without the hash of the key"):
        await job.run(c)
    provider.cancel()
    await asyncio.gather(provider, return_exceptions=True)


async def test_psi_gives_the_consumer_exactly_the_intersection_and_both_attest_the_same_hash():
    consumer = phones(0, 700) + [CANARY_C, " +86-10000000001 ", ""]  # a duplicate after trimming, a blank
    provider = phones(500, 900) + [CANARY_P]
    oc, op, results, _ = await run_pair("psi", consumer, provider)
    assert isinstance(oc, Outcome) and oc.result_hash == op.result_hash
    result = json.loads(results["bank"])
    assert result["intersection"] == sorted(set(phones(0, 700)) & set(phones(500, 900)))
    assert result["consumer_set_size"] == 701 and result["provider_set_size"] == 901
    assert (oc.records_used, op.records_used) == (701, 901)
    assert "telco" not in results  # the provider never holds a result


async def test_psi_cardinality_reveals_only_the_count():
    oc, op, results, sent_by = await run_pair("psi_cardinality", phones(0, 300), phones(250, 300))
    assert oc.result_hash == op.result_hash
    assert json.loads(results["bank"]) == {"cardinality": 50, "consumer_set_size": 300, "provider_set_size": 300}
    # the provider counts: the consumer's doubly-masked elements never come back to it
    kinds = [hs.decode(f)[0] for f in sent_by["telco"]]
    assert "xab" not in kinds and kinds.count("count") == 1
    assert sum(len(hs.decode(f)[2]) for f in sent_by["telco"] if hs.decode(f)[0] == "yb") == 32 * 300
    back = b"".join(hs.decode(f)[2] for f in sent_by["bank"] if hs.decode(f)[0] == "yba")
    assert len(back) == 16 * 300


async def test_psi_cardinality_below_the_minimum_group_size_is_held_back_by_the_provider_even_when_empty():
    from services.compute.policy import PolicyViolation

    for overlap in (0, 3):  # nothing, or fewer than k: the same abort, so a probe cannot tell them apart
        with pytest.raises(PolicyViolation, match="below the minimum group size of telco.subs"):
            await run_pair("psi_cardinality", phones(0, 50), phones(50 - overlap, 50), min_group=5)
    oc, _, results, _ = await run_pair("psi_cardinality", phones(0, 50), phones(45, 50), min_group=5)
    assert json.loads(results["bank"])["cardinality"] == 5


async def test_no_canary_in_any_form_in_what_either_side_sends():
    consumer = phones(0, 200) + [CANARY_C]
    provider = phones(100, 200) + [CANARY_P]
    _, _, _, sent_by = await run_pair("psi", consumer, provider)
    everything = b"".join(sent_by["bank"] + sent_by["telco"])
    for canary in (CANARY_C, CANARY_P):
        raw = canary.encode()
        forms = [raw, hashlib.sha256(raw).digest(), hashlib.sha256(raw).hexdigest().encode(),
                 psi_kernel.hash_to_curve([raw])[0], psi_kernel.hash_to_curve([raw])[0][:16]]
        for form in forms:
            assert form not in everything
    # and no plain key of either set, nor its unmasked hash
    for key in (consumer[:20] + provider[-20:]):
        assert key.encode() not in everything
        assert psi_kernel.hash_to_curve([key.encode()])[0] not in everything


async def test_what_the_provider_receives_tells_it_the_consumer_set_size_only():
    _, _, _, sent_by = await run_pair("psi", phones(0, 130), phones(0, 10))
    kinds = [hs.decode(f)[0] for f in sent_by["bank"]]
    kinds = [k for k in kinds if k not in ("end", "end_ack")]  # the channel's closing handshake, no data
    assert kinds[0] == "start" and kinds[-1] == "finish" and set(kinds) == {"start", "xa", "xa_done", "finish"}
    elements = sum(len(hs.decode(f)[2]) for f in sent_by["bank"]) // 32
    assert elements == 130


async def test_an_intersection_below_the_minimum_group_size_is_withheld():
    with pytest.raises(JobRefused, match="minimum group size"):
        await run_pair("psi", phones(0, 50), phones(48, 10), min_group=5)


def test_the_shape_of_a_psi_job_is_checked():
    job = job_type("psi")
    with pytest.raises(JobRefused, match="params.dataset"):
        job.check(spec_for(params={"key": "phone"}))
    bad = spec_for()
    two = JobSpec(**{**bad.__dict__, "inputs": bad.inputs * 2})
    with pytest.raises(JobRefused, match="exactly one"):
        job.check(two)
    assert {"psi", "psi_cardinality"} <= set(JOB_TYPES)


def test_keys_are_normalised_deduplicated_and_blanks_dropped():
    keys, dropped = normalise_keys([" a ", "a", None, "", 5, "5", 1.5, True])
    assert keys == [b"a", b"5", b"1.5", b"true"] and dropped == 2


def test_matching_16_byte_values_handles_shared_prefixes():
    a = bytes(range(16)) + b"\x01" * 16 + b"\x02" * 16
    same_prefix = bytes(range(8)) + b"\xff" * 8  # shares a's first 64 bits, not the rest
    b = same_prefix + b"\x02" * 16 + bytes(range(16))
    assert list(match_positions(a, b)) == [0, 2]
    assert list(match_positions(a, b"")) == []


# RFC 9380, appendix J.7.2 (suite curve25519_XMD:SHA-512_ELL2_NU_): msg -> (u[0], Q.x), big-endian hex
RFC9380_DST = b"QUUX-V01-CS02-with-curve25519_XMD:SHA-512_ELL2_NU_"
RFC9380 = {
    b"": ("608d892b641f0328523802a6603427c26e55e6f27e71a91a478148d45b5093cd",
          "51125222da5e763d97f3c10fcc92ea6860b9ccbbd2eb1285728f566721c1e65b"),
    b"abc": ("46f5b22494bfeaa7f232cc8d054be68561af50230234d7d1d63d1d9abeca8da5",
             "7d56d1e08cb0ccb92baf069c18c49bb5a0dcd927eff8dcf75ca921ef7f3e6eeb"),
}


def test_hash_to_curve_is_rfc9380_encode_to_curve():
    for msg, (u0, qx) in RFC9380.items():
        [u] = psi_kernel.hash_to_field([msg], RFC9380_DST)
        assert int(u) == int(u0, 16)
        assert psi_kernel.hash_to_curve([msg], RFC9380_DST)[0] == int(qx, 16).to_bytes(32, "little")


def test_hashed_points_are_on_the_curve_never_the_twist_and_masking_commutes():
    p, a = 2**255 - 19, 486662
    points = psi_kernel.hash_to_curve([f"k{i}".encode() for i in range(200)])
    for pt in points:
        u = int.from_bytes(pt, "little")
        assert pow((u**3 + a * u * u + u) % p, (p - 1) // 2, p) == 1
    x, y = psi_kernel.new_scalar(), psi_kernel.new_scalar()
    blob = b"".join(points)
    assert psi_kernel.mask_blob(x, psi_kernel.mask_blob(y, blob)) == psi_kernel.mask_blob(y, psi_kernel.mask_blob(x, blob))
    assert len(set(points)) == 200
    with pytest.raises(psi_kernel.KernelError):
        psi_kernel.mask(x, [bytes(32)])  # the point of order 2 (u = 0)


# -- the seal of a held-back message (release.held_back, shared by every job type) ---------------

def test_held_back_is_aes_256_ctr_with_the_element_index_as_counter_block():
    """The construction docs/compute.md states, checked against AES itself: element i of the
    keystream is AES-256(K, i as a 128-bit big-endian block)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    from services.compute import release

    key = bytes(range(32))
    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    for off in (0, 1, 255, 256, 2**32 - 1, 2**32, 2**63):
        expected = ecb.update(off.to_bytes(16, "big") + (off + 1).to_bytes(16, "big"))
        assert release.held_back(key, off, bytes(32)) == expected


def test_held_back_opens_the_same_whatever_the_batching_and_not_without_its_key():
    import os

    from services.compute import release

    key, other = release.new_key(), release.new_key()
    blob = os.urandom(16 * 1000 + 7)  # a partial last element is sealed too
    batched = b"".join(release.held_back(key, off, blob[16 * off:16 * (off + 64)]) for off in range(0, 1001, 64))
    assert batched == release.held_back(key, 0, blob) != blob
    assert release.open_held_back(key, batched) == blob
    assert release.open_held_back(other, batched) != blob
    assert release.held_back(key, 0, b"") == b""


@pytest.mark.parametrize("key, off", [(b"k" * 16, 0), (b"k" * 33, 0), (b"k" * 32, -1), (b"k" * 32, 2**64)])
def test_held_back_refuses_a_key_of_another_size_or_an_offset_out_of_range(key, off):
    """A released key of another size (the chain accepts only 32 bytes; a node must not trust that)
    is a ValueError, which the consumer's node reports as release_unopened."""
    from services.compute import release

    with pytest.raises(ValueError):
        release.held_back(key, off, b"x" * 16)
