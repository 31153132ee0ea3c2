"""`AsyncLRUCache` and request parsing: pure Python, no model."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from muse_rec.serving.cache import AsyncLRUCache
from muse_rec.serving.request import RequestError, parse_requests


def _cache(capacity: int, loads: list, delay: float = 0.0) -> AsyncLRUCache:
    def load(key):
        loads.append(key)
        time.sleep(delay)
        if key == "boom":
            raise KeyError("no such user")
        return np.zeros(key, np.uint8)

    return AsyncLRUCache(load, lambda v: v.nbytes, capacity_bytes=capacity, max_workers=2)


def test_lru_eviction_by_bytes():
    loads: list = []
    c = _cache(100, loads)
    for k in (40, 30, 20):
        c.get(k)
    c.get(40)  # 40 becomes most recent; 30 is now the least recent
    c.get(25)  # 115 > 100: evict 30
    assert 30 not in c and all(k in c for k in (40, 20, 25))
    assert c.bytes_used == 85 and c.evictions == 1
    c.close()


def test_oversized_value_is_served_not_cached():
    loads: list = []
    c = _cache(50, loads)
    c.get(10)
    assert c.get(80).nbytes == 80
    assert 80 not in c and 10 in c and c.bytes_used == 10
    c.close()


def test_concurrent_requests_share_one_load_and_errors_propagate():
    loads: list = []
    c = _cache(1000, loads, delay=0.2)
    futs = [c.get_async(7) for _ in range(5)]
    assert len({id(f) for f in futs}) == 1
    assert futs[0].result().nbytes == 7 and loads.count(7) == 1
    with pytest.raises(KeyError, match="no such user"):
        c.get("boom")
    assert "boom" not in c
    c.close()


def test_get_async_returns_before_the_load_finishes():
    gate = threading.Event()
    c = AsyncLRUCache(lambda k: (gate.wait(5), np.zeros(3))[1], lambda v: v.nbytes, 100)
    fut = c.get_async("u")
    assert not fut.done()
    gate.set()
    assert fut.result(timeout=5).nbytes == 24
    c.close()


@pytest.mark.parametrize("text,match", [
    ("", "not valid JSON"),
    ("[1, 2]", r"request\[0\]: expected an object"),
    ('{"user": 1.0, "candidates": [1]}', "user: expected an int64"),
    ('{"user": 1, "candidates": {"a": 1}}', "expected a list"),
    ('{"user": 1, "candidates": [null]}', r"candidates\[0\]"),
    # Decimal strings are ids (proto3's int64 mapping); nothing else written as a string is.
    ('{"user": "12a", "candidates": [1]}', "user: expected an int64 user id"),
    ('{"user": " 12", "candidates": [1]}', "user: expected an int64 user id"),
    ('{"user": "+12", "candidates": [1]}', "user: expected an int64 user id"),
    ('{"user": "", "candidates": [1]}', "user: expected an int64 user id"),
    ('{"user": "1.0", "candidates": [1]}', "user: expected an int64 user id"),
    ('{"user": 1, "candidates": ["9223372036854775808"]}', r"candidates\[0\]: expected an int64 item id"),
    ('{"user": 1, "candidates": [2, "-9223372036854775809"]}', r"candidates\[1\]: expected an int64 item id"),
])
def test_parse_requests_errors(text, match):
    with pytest.raises(RequestError, match=match):
        parse_requests(text)


def test_parse_requests_one_and_many():
    one = parse_requests('{"user": -5, "candidates": [9223372036854775807, 3]}')
    assert one[0].user == -5 and one[0].candidates.dtype == np.int64 and one[0].candidates[0] == (1 << 63) - 1
    many = parse_requests('[{"user": 1, "candidates": [2]}, {"user": 3, "candidates": [4, 5]}]')
    assert [r.user for r in many] == [1, 3]


def test_ids_may_be_decimal_strings_as_proto3_writes_int64():
    # A JavaScript client cannot send 2^63 - 1 as a JSON number (it rounds beyond 2^53): the string was refused.
    got = parse_requests('{"user": "-9223372036854775808", "candidates": ["9223372036854775807", 3, "007"]}')[0]
    assert got.user == -(1 << 63) and isinstance(got.user, int)
    assert got.candidates.dtype == np.int64 and got.candidates.tolist() == [(1 << 63) - 1, 3, 7]
