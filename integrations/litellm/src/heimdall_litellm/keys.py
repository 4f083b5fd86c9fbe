"""Virtual keys seen by the auth function, so the hooks can name them to Heimdall.

LiteLLM logs the `api_key` of the auth object it is given, so the integration never hands it
the key itself: it hands LiteLLM `hd-<sha256 of the key>`, and keeps the key in this process,
found again by that digest. Entries live as long as keys keep being used, plus `keep`.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


def digest(key: str) -> str:
    """The name LiteLLM sees for a virtual key."""
    return "hd-" + hashlib.sha256(key.encode()).hexdigest()


@dataclass
class _Entry(Generic[T]):
    key: str
    seen: float
    auth: T | None = None
    auth_until: float = 0.0


class KeyRegistry(Generic[T]):
    """Keys by digest, with an optional cached auth result of type `T` for each."""

    def __init__(self, keep: float = 3600.0, prune_every: int = 1024):
        self._keep = keep
        self._prune_every = prune_every
        self._entries: dict[str, _Entry[T]] = {}
        self._writes = 0

    def remember(self, key: str, auth: T | None = None, ttl: float = 0.0) -> str:
        """Records `key` (and `auth` for `ttl` seconds); returns its digest."""
        now = time.monotonic()
        name = digest(key)
        entry = self._entries.get(name)
        if entry is None:
            entry = _Entry(key, now)
            self._entries[name] = entry
            self._writes += 1
            if self._writes % self._prune_every == 0:
                self._prune(now)
        entry.seen = now
        if auth is not None and ttl > 0:
            entry.auth, entry.auth_until = auth, now + ttl
        return name

    def key(self, name: str | None) -> str | None:
        """The key behind a digest, if this process has seen it."""
        if not name:
            return None
        entry = self._entries.get(name)
        return entry.key if entry is not None else None

    def cached(self, key: str) -> T | None:
        """A still-valid cached auth result for `key`."""
        entry = self._entries.get(digest(key))
        if entry is None or entry.auth is None or entry.auth_until <= time.monotonic():
            return None
        return entry.auth

    def forget_auth(self, name: str) -> None:
        entry = self._entries.get(name)
        if entry is not None:
            entry.auth, entry.auth_until = None, 0.0

    def __len__(self) -> int:
        return len(self._entries)

    def _prune(self, now: float) -> None:
        stale = [n for n, e in self._entries.items() if now - e.seen > self._keep]
        for name in stale:
            del self._entries[name]
