"""A thread-safe LRU cache bounded in bytes, with asynchronous loading through futures.

The Ranker keeps each user's behaviour sequence and its SCL vectors next to the model (the
paper's deployment, MUSE.md): `AsyncLRUCache.get_async(key)` returns a future at once; the
value is loaded on a thread pool while the caller does other work (candidate matching), and
concurrent requests for a key being loaded share one load.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Dict, Generic, Hashable, Optional, Tuple, TypeVar

V = TypeVar("V")


class AsyncLRUCache(Generic[V]):
    """LRU cache of values with a known size, filled by a loader on a thread pool.

    Args:
        loader: ``key -> value``; runs on a worker thread. Its exceptions reach the future
            (and nothing is cached).
        size_of: bytes a value holds.
        capacity_bytes: the bound; least recently used entries are evicted to stay under it. A
            single value larger than the bound is returned but not cached.
        max_workers: loader threads (loads are I/O-bound memory-map reads, NumPy gathers).

    Example::

        cache = AsyncLRUCache(load_user, lambda v: v.nbytes, capacity_bytes=1 << 30)
        fut = cache.get_async(user_id)      # returns immediately
        ...                                 # other work
        ctx = fut.result()
    """

    def __init__(self, loader: Callable[[Hashable], V], size_of: Callable[[V], int],
                 capacity_bytes: int, max_workers: int = 2) -> None:
        if capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must be >= 0, got {capacity_bytes}")
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        self._loader = loader
        self.max_workers = max_workers
        self._size_of = size_of
        self.capacity_bytes = capacity_bytes
        self._entries: "OrderedDict[Hashable, Tuple[V, int]]" = OrderedDict()
        self._loading: Dict[Hashable, Future] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="muse-prefetch")
        self.hits = self.misses = self.evictions = 0

    @property
    def bytes_used(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._entries

    def get_async(self, key: Hashable) -> "Future[V]":
        """A future of the value: already done on a hit, else the (shared) pending load."""
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                done: Future = Future()
                done.set_result(hit[0])
                return done
            pending = self._loading.get(key)
            if pending is not None:
                return pending
            self.misses += 1
            fut = self._pool.submit(self._load, key)
            self._loading[key] = fut
            return fut

    def get(self, key: Hashable, timeout: Optional[float] = None) -> V:
        """The value, loading it (and waiting) if needed."""
        return self.get_async(key).result(timeout)

    def _load(self, key: Hashable) -> V:
        try:
            value = self._loader(key)
            size = int(self._size_of(value))
            with self._lock:
                self._insert(key, value, size)
            return value
        finally:
            with self._lock:
                self._loading.pop(key, None)

    def _insert(self, key: Hashable, value: V, size: int) -> None:
        if size > self.capacity_bytes:
            return  # larger than the whole cache: serve it, do not flush everything for it
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old[1]
        while self._entries and self._bytes + size > self.capacity_bytes:
            _, (_, evicted) = self._entries.popitem(last=False)
            self._bytes -= evicted
            self.evictions += 1
        self._entries[key] = (value, size)
        self._bytes += size

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def close(self) -> None:
        """Stop the loader threads (pending loads finish first)."""
        self._pool.shutdown(wait=True)
