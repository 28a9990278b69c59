"""Keys, with a value each, remembered for a while, in two generations: a key added is
kept at least `keep`, and forgotten by the time it is twice that old if the clock is moved
on (`age`) at least every `keep`; never more than `most` are kept (the oldest go first). Memory
then follows the rate of keys added, not the length of the run: a daemon that runs for
months keeps an hour or two of them, reached within hours, instead of filling a cap over
days."""

from __future__ import annotations

from collections.abc import Hashable
from datetime import datetime, timedelta
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Recent(Generic[K, V]):
    def __init__(self, keep: timedelta, most: int) -> None:
        self.keep = keep
        self.most = most
        self._new: dict[K, V] = {}
        self._old: dict[K, V] = {}
        self._since: datetime | None = None  # when `_new` began

    def __contains__(self, key: object) -> bool:
        return key in self._new or key in self._old

    def __len__(self) -> int:
        return len(self._new) + len(self._old)

    def get(self, key: K) -> V | None:
        return self._new[key] if key in self._new else self._old.get(key)

    def add(self, key: K, value: V) -> None:
        """Remember `key` (with `value`) from now."""
        self._old.pop(key, None)
        self._new[key] = value
        while len(self) > self.most:
            oldest = self._old or self._new
            del oldest[next(iter(oldest))]

    def discard(self, key: K) -> None:
        self._new.pop(key, None)
        self._old.pop(key, None)

    def age(self, at: datetime) -> None:
        """The clock is at `at`: a generation that began `keep` ago or more becomes the old
        one, and the old one is forgotten."""
        if self._since is None:
            self._since = at
        elif at - self._since >= self.keep:
            self._old, self._new = self._new, {}
            self._since = at
