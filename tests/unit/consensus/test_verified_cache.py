"""The decode-and-verify cache: bounded by bytes, oldest out first, a replaced entry counted once."""

from services.common.tx import Tx
from services.consensus.app import Verified, VerifiedCache


def entry(signing_bytes: bytes) -> Verified:
    return Verified(Tx.model_construct(), signing_bytes, "key", "libsodium")


def test_the_oldest_entries_leave_first_and_the_bytes_stay_under_the_limit():
    cache = VerifiedCache(limit=4 * 100 * 10)  # ten entries of 100 signing bytes
    for i in range(25):
        cache.put(b"tx%d" % i, entry(bytes(100)))
        assert cache._size <= cache._limit
    assert len(cache) == 10
    assert [b"tx%d" % i in cache for i in (14, 15, 24)] == [False, True, True]


def test_replacing_an_entry_counts_its_bytes_once_and_keeps_the_rest():
    cache = VerifiedCache(limit=4 * 100 * 3)
    for name in (b"a", b"b", b"c"):
        cache.put(name, entry(bytes(100)))
    for _ in range(5):  # the payload added to a verified tx: the same key put again
        cache.put(b"a", entry(bytes(100)))
    assert len(cache) == 3 and cache._size == 4 * 100 * 3
    cache.put(b"d", entry(bytes(100)))  # the oldest by first insertion leaves
    assert b"a" not in cache and all(k in cache for k in (b"b", b"c", b"d"))


def test_one_large_entry_evicts_as_many_as_its_bytes_need():
    cache = VerifiedCache(limit=4 * 100 * 4)
    for i in range(4):
        cache.put(b"tx%d" % i, entry(bytes(100)))
    cache.put(b"big", entry(bytes(250)))
    assert [k for k in (b"tx0", b"tx1", b"tx2", b"tx3", b"big") if k in cache] == [b"tx3", b"big"]
