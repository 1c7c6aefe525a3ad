"""The state tree (services/consensus/merkle.py) and its verifier (services/common/proofs.py)."""

from __future__ import annotations

import random

import pytest

from services.common import proofs
from services.common.proofs import PROOF_TYPE, Proof, ProofError, path_of
from services.consensus.merkle import NONE, StateTree

pytestmark = pytest.mark.unit

# cosmos/ics23 testdata/smt/exist_{left,middle,right}.json (the celestia SMT, ICS-23 SmtSpec):
# the CommitmentProof bytes, the value and the root, as published.
ICS23_SMT_VECTORS = [
    ("0ae5030a20002de9b963c4dacf518eeea7b754d2baac1886ef2f2a8ac704c05a692f4bedd5121e76616c75655f666f725f4445687a30"
     "613576355036616536514c376d64451a07080118012a0100222708011201011a20bc79ee59a60c4f08cc0216a5f64d39f871cd730b69"
     "83079429e91d9bcd57d470222708011201011a206732b1eaa2cf07fbc94599aecc2df057d8efb0ccd775d86b6ea176bfaad367ad2227"
     "08011201011a203112ffea611a3ef030f5ed8dafb8bcaf8e33bec16fff9027b1a0c718136de2d3222708011201011a20480983a2541b"
     "5527e1b5607e32f0597b12204d4973b5d9b498d1ff2a2350352b222708011201011a2097058f1bf50e2b47ad129fdaf2dfd53f88f814"
     "67dad54dabfcf0fbe8330c4e4c222708011201011a2008f6f1e45958b4780e1e0f7791315d44355eba4e519e2fb25c3dc48627a59a45"
     "222708011201011a20bb4f607cb62f20e673fdfad3e40a8b596db50dc7c34e65aba74eec37f791e886222708011201011a20fe97c321"
     "1b6a7eb3d859e754b373e89897a54f74244f0a84defc1df2a203dfd8222708011201011a202cab93bf9b91d25010972968d69b47ca9d"
     "fd5b4cea0c71310e0adced33acb19d222708011201011a2069ca519f1f2528c971a930cdd00b65c41762e8510ce3d4a998d4ad8ccf59"
     "8984",
     "432d73b49019d8df5c7e38fd93288d0240a62a3c010e7217a4a74f5885c391d5"),
    ("0a80040a20e369afec196c525d9e7ce3a6a94c325d3fd29b3d863c9463c939e8c085ae8e1a121e76616c75655f666f725f464a544d75"
     "787a575873713470436c46506e6b481a07080118012a010022250801122101c607dff72d77496a8088f58c886a59e2c2e115c18688c1"
     "ea21007fa8a9c884da2225080112210152491dba094231188b893d16b0b08ad25246d5147a7a62149186518712618054222708011201"
     "011a20000000000000000000000000000000000000000000000000000000000000000022250801122101e3a85febd896e193b7ba37bc"
     "638c46d69530de820647fccb40da8583473c8feb222508011221014baf41d85dc399f406edbe4374e6b767663e4680fee217bfbca889"
     "618b7a83dc222708011201011a204ed121ef20f0e1d65a8a5e7d9ed86844de0bfd82621f3325f60eb872e9e738ea222708011201011a"
     "20a7cd5e87f54353e0b8d36901ba175daf7c00ff05c00183f522e94850a39ac4ce222708011201011a205a927fe700b5feacbf30a7cd"
     "160533e326c513eedc8e1d000cd8a71abd8480f522250801122101d9423c60941997d2078abd897d53f09cb4a844c684bc6a38140c04"
     "d6869809de22250801122101b1de51ac7abc0e0e5bc6955c4223228d16aba8cdb6e59bfd111d0901595bc32b22250801122101edbbd2"
     "2b093f48404d082448bd335028477d700b449450b6800708095f78b9d6",
     "d32dd06714f3cee110cdb37ad7bc4760d4e291a555160f54429f9f15ddb04c4d"),
    ("0a90020a20f98a594c16784dbe52b14cf75c8ba4c41c51eb5f6212d866f683499c2d0bc593122064663265534a795974717763466955"
     "494c7a58763266634e4972574f3773546f1a07080118012a010022250801122101e4a47ffb7bc4a931fae640ba18449a227bbed0b01f"
     "cf14823b5fa941a6ad3e24222508011221010000000000000000000000000000000000000000000000000000000000000000222508011"
     "221015c5ab2b82c7eef6a4733ca15cac48400a39a162877e3345e6c11a35211360c8f222508011221014597a361e82f91582f5d83654e"
     "cb141dc8075cb4479bcc64263e9e35e60bb0e322250801122101d9e2b7790f1e5f3a51aa60820018c88e6b1c84ca0b25ef2558fd1deab"
     "ff0f001",
     "395a9a4928bc4479acd18aaf452f179d57f790ae9b0c51f5c0b44521e3df24f2"),
]


def _fields(data: bytes):
    """Protobuf wire fields (varint and length-delimited only, which is all ICS-23 proofs use)."""
    i = 0
    while i < len(data):
        tag, i = _varint(data, i)
        if tag & 7 == 0:
            value, i = _varint(data, i)
        else:
            n, i = _varint(data, i)
            value, i = data[i:i + n], i + n
        yield tag >> 3, value


def _varint(data: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = data[i]
        result |= (b & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if not b & 0x80:
            return result, i


@pytest.mark.parametrize("proof_hex, root_hex", ICS23_SMT_VECTORS)
def test_the_hashing_is_ics23_smt_spec_by_its_published_vectors(proof_hex, root_hex):
    """Each ICS-23 existence proof, turned into this format's siblings, leads to the vector's root."""
    (_, exist), = _fields(bytes.fromhex(proof_hex))  # CommitmentProof.exist
    key = value = b""
    inner: list[tuple[bytes, bytes]] = []
    for number, field in _fields(exist):
        if number == 1:
            key = field
        elif number == 2:
            value = field
        elif number == 4:
            op = dict(_fields(field))
            inner.append((op.get(2, b""), op.get(3, b"")))
    siblings = []
    for prefix, suffix in inner:  # leaf upwards: 0x01 ‖ sibling before us, or the sibling after us
        assert prefix[:1] == b"\x01" and len(prefix) + len(suffix) == 33
        siblings.append(prefix[1:] or suffix)
    siblings.reverse()
    # ICS-23's key here is already the path; feed it through with a leaf of that path
    proof = Proof(proofs.EXISTS, tuple(siblings))
    node = proofs.leaf_hash(key, proofs.value_hash(value))
    for d in range(len(siblings) - 1, -1, -1):
        node = proofs.inner_hash(node, siblings[d]) if proofs.bit(key, d) == 0 else proofs.inner_hash(siblings[d], node)
    assert node.hex() == root_hex
    # and the same siblings re-encoded in rdx's format decode to the same thing
    assert Proof.decode(proof.encode()) == proof


class Store(dict):
    """Nodes by (version, hash), as the database keeps them; ``version`` counts the blocks."""

    version = 0

    def add(self, new: dict[bytes, bytes], version: int) -> None:
        self.update({(version, h): node for h, node in new.items()})

    def load(self, version: int, h: bytes) -> bytes | None:
        return self.get((version, h))


def _tree(cache_nodes: int = 500_000):
    store = Store()
    return StateTree(store.load, cache_nodes), store


def _commit(tree, store, root, changes):
    """One block: the new root (hash, version), its nodes stored under the next version."""
    store.version += 1
    new: dict[bytes, bytes] = {}
    root = tree.update(root, changes, new, store.version)
    store.add(new, store.version)
    tree.committed(new)
    return root


def _op(key: str, proof: Proof):
    return [(PROOF_TYPE, key.encode(), proof.encode())]


class Op:
    def __init__(self, type_, key, data):
        self.type, self.key, self.data = type_, key, data


@pytest.mark.parametrize("cache_nodes", [500_000, 1])  # 1: nearly every node read back from the store
def test_incremental_updates_give_the_root_of_a_fresh_build_and_every_proof_verifies(cache_nodes):
    rng = random.Random(7)
    tree, store = _tree(cache_nodes)
    root, state = NONE, {}
    keys = [f"k/{i}" for i in range(300)]
    for _ in range(40):
        changes = {}
        for key in rng.sample(keys, rng.randint(1, 30)):
            changes[key] = None if (key in state and rng.random() < 0.3) else f'{{"v":{rng.random()!r}}}'.encode()
        root = _commit(tree, store, root, changes)
        for key, value in changes.items():
            if value is None:
                state.pop(key, None)
            else:
                state[key] = value
        fresh, _ = _tree()
        assert root[0] == fresh.build(state.items(), {}, 0)[0]  # history-independent: the same on every validator
    for key in keys + ["never/written"]:
        proof = tree.prove(root, key)
        proofs.verify(root[0], key, state.get(key), _op(key, proof))
        proofs.verify(root[0], key, state.get(key), [Op(PROOF_TYPE, key.encode(), proof.encode())])


def test_deleting_everything_empties_the_tree_and_one_key_is_its_own_leaf():
    tree, store = _tree()
    root = _commit(tree, store, NONE, {"a": b"1", "b": b"2", "c": b"3"})
    root = _commit(tree, store, root, {"a": None, "b": None})
    assert root == (proofs.leaf_hash(path_of("c"), proofs.value_hash(b"3")), 1)  # the leaf of version 1 rose
    assert _commit(tree, store, root, {"c": None}) == NONE
    assert _commit(tree, store, root, {"nothing": None})[0] == root[0]


def test_tampered_answers_are_refused():
    tree, store = _tree()
    ref = _commit(tree, store, NONE, {f"k/{i}": str(i).encode() for i in range(50)})
    root = ref[0]
    proof = tree.prove(ref, "k/7")
    proofs.verify(root, "k/7", b"7", _op("k/7", proof))
    with pytest.raises(ProofError, match="does not lead"):
        proofs.verify(root, "k/7", b"8", _op("k/7", proof))  # another value
    with pytest.raises(ProofError, match="claims it absent"):
        proofs.verify(root, "k/7", None, _op("k/7", proof))  # a present key claimed absent
    with pytest.raises(ProofError, match="another key"):
        proofs.verify(root, "k/8", b"7", _op("k/7", proof))  # an answer for another key
    with pytest.raises(ProofError, match="does not lead"):
        proofs.verify(root, "k/8", b"7", _op("k/8", proof))  # another key's proof relabelled
    flipped = bytearray(proof.encode())
    flipped[-1] ^= 1
    with pytest.raises(ProofError, match="does not lead"):
        proofs.verify(root, "k/7", b"7", [(PROOF_TYPE, b"k/7", bytes(flipped))])
    with pytest.raises(ProofError, match="does not lead"):
        proofs.verify(bytes(32), "k/7", b"7", _op("k/7", proof))  # another app hash
    # absence: a present key's proof cannot be turned into an absence
    absent = tree.prove(ref, "missing")
    assert absent.kind in (proofs.ABSENT_EMPTY, proofs.ABSENT_LEAF)
    proofs.verify(root, "missing", None, _op("missing", absent))
    with pytest.raises(ProofError, match="claims a value"):
        proofs.verify(root, "missing", b"7", _op("missing", absent))
    with pytest.raises(ProofError):
        proofs.verify(root, "k/7", None, _op("k/7", absent))
    # an ABSENT_LEAF proof naming the key's own leaf, or a leaf off the key's path
    own = Proof(proofs.ABSENT_LEAF, proof.siblings, path_of("k/7"), proofs.value_hash(b"7"))
    with pytest.raises(ProofError, match="own leaf"):
        proofs.verify(root, "k/7", None, _op("k/7", own))
    shallow = Proof(proofs.ABSENT_LEAF, (), path_of("k/7"), proofs.value_hash(b"7"))
    with pytest.raises(ProofError):
        proofs.verify(root, "missing", None, _op("missing", shallow))


@pytest.mark.parametrize("ops", [
    None, [], "x", b"x", 7, {"ops": None}, {"ops": [{}]}, {"ops": [{"type": PROOF_TYPE, "key": "!!", "data": ""}]},
    [("other:type", b"k", b"")], [(PROOF_TYPE, b"k", b"")], [(PROOF_TYPE, b"k", b"\x01\x00\x00")],
    [(PROOF_TYPE, b"k", b"\x02\x00\x00\x00")], [(PROOF_TYPE, b"k", b"\x01\x07\x00\x00")],
    [(PROOF_TYPE, b"k", b"\x01\x00\x01\x01" + bytes(32))], [(PROOF_TYPE, b"k", b"\x01\x00\x00\x01" + bytes(31))],
    [(PROOF_TYPE, b"k", b"\x01\x02" + bytes(10))], [(PROOF_TYPE, b"k", b"\x01\x00" + bytes(20000))],
    [(PROOF_TYPE, b"k", b"\x01\x00\x00\x00")] * 2,
])
def test_malformed_proofs_are_refused_with_proof_error(ops):
    with pytest.raises(ProofError):
        proofs.verify(bytes(32), "k", None, ops)


def test_rpc_answers_are_checked_by_code_and_value():
    import base64

    tree, store = _tree()
    ref = _commit(tree, store, NONE, {"a": b'{"x":1}'})
    root = ref[0]
    ops = {"ops": [{"type": PROOF_TYPE, "key": base64.b64encode(b"a").decode(),
                    "data": base64.b64encode(tree.prove(ref, "a").encode()).decode()}]}
    answer = {"response": {"code": 0, "value": base64.b64encode(b'{"x":1}').decode(), "proofOps": ops}}
    assert proofs.verify_rpc_answer(root, "a", answer) == b'{"x":1}'
    with pytest.raises(ProofError):
        proofs.verify_rpc_answer(root, "a", {"response": {**answer["response"], "code": 11, "value": ""}})
    with pytest.raises(ProofError, match="code"):
        proofs.verify_rpc_answer(root, "a", {"response": {**answer["response"], "code": 15}})
    for bad in (None, [], {"response": 3}, {"response": {"value": "%%%"}}):
        with pytest.raises(ProofError):
            proofs.verify_rpc_answer(root, "a", bad)
    with pytest.raises(ProofError):
        proofs.verify(b"short", "a", b'{"x":1}', ops)
