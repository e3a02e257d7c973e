"""The bytes-bounded LRU and the caches built on it."""

from __future__ import annotations

from pathlib import Path

from mailflow.blobs import BlobStore
from mailflow.lru import BytesLRU


def test_bounded_in_bytes_least_recent_first() -> None:
    cache: BytesLRU[str] = BytesLRU(10)
    cache.put("a", b"1234")
    cache.put("b", b"1234")
    assert cache.get("a") == b"1234"  # now b is the least recent
    cache.put("c", b"1234")
    assert ("a" in cache, "b" in cache, "c" in cache) == (True, False, True)
    assert (cache.size, len(cache)) == (8, 2)
    cache.put("a", b"1")  # replacing counts the new size only
    assert cache.size == 5
    assert cache.pop("a") == b"1" and cache.size == 4


def test_values_above_the_item_bound_are_not_kept_or_kept_alone() -> None:
    cache: BytesLRU[str] = BytesLRU(10, max_item=4)
    cache.put("a", b"12345")
    assert "a" not in cache and cache.size == 0
    alone: BytesLRU[str] = BytesLRU(10, max_item=100)
    alone.put("a", b"1")
    alone.put("big", b"x" * 50)
    assert ("a" in alone, alone.get("big"), alone.size) == (False, b"x" * 50, 50)


def test_blob_store_remembers_within_its_byte_bound(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path, cache_bytes=40)
    blobs.remember("big", b"x" * 11)  # above a quarter of the bound: never kept
    for number in range(10):
        blobs.remember(f"d{number}", b"y" * 10)
    assert blobs.cached("big") is None
    assert blobs.cached("d0") is None and blobs.cached("d9") == b"y" * 10
    blobs.unlink_many(["d9"])
    assert blobs.cached("d9") is None


def test_per_content_is_bounded_in_bytes_and_found_by_identity() -> None:
    from mailflow.egress.base import PerContent

    cache: PerContent[str] = PerContent(1000)
    a, b, c = b"a" * 400, b"b" * 400, b"c" * 400
    cache.put(a, "A")
    cache.put(b, "B")
    assert cache.get(a) == "A"  # a is now the most recent
    assert cache.put(c, "C") == ["B"] and cache.size == 800
    assert cache.get(bytes(bytearray(a))) is None  # equal bytes, another object: no entry
    big = b"x" * 1001
    assert cache.put(big, "X") == []  # heavier than the item bound (the whole bound)
    assert cache.get(big) is None and cache.size == 800
    cache.put(a, "A2")  # replaced: the old weight is taken off
    assert cache.get(a) == "A2" and cache.size == 800
    small: PerContent[str] = PerContent(1000, max_item=300)
    assert small.put(a, "A") == [] and small.get(a) is None and small.size == 0
