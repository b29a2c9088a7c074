"""A bounded LRU with hit/miss counters: what an image means to the decoder, by image SHA-256."""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

V = TypeVar("V")


class LruCache(Generic[V]):
    def __init__(self, max_entries: int):
        self.max_entries = max_entries
        self._entries: OrderedDict[str, V] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> V | None:
        value = self._entries.get(key)
        if value is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return value

    def __contains__(self, key: str) -> bool:
        """Whether an entry exists; counts nothing and keeps the order."""
        return key in self._entries

    def put(self, key: str, value: V) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        """New models: what was cached no longer applies."""
        self._entries.clear()
