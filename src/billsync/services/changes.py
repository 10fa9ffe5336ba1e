"""A small in-process change feed: writers say which accounts changed; readers' caches drop
what they held for them. (Other processes' writes are covered by the caches' short TTL.)"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable


class Changes:
    def __init__(self) -> None:
        self._listeners: list[Callable[[frozenset[str] | None], None]] = []
        self._lock = threading.Lock()

    def subscribe(self, listener: Callable[[frozenset[str] | None], None]) -> None:
        with self._lock:
            self._listeners.append(listener)

    def accounts_changed(self, account_ids: Iterable[str] | None) -> None:
        """``None`` means "anything may have changed"."""
        changed = None if account_ids is None else frozenset(account_ids)
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener(changed)
