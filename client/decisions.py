"""Verified status decisions, kept in memory no longer than they may be relied on.

An entry is fresh until a deadline its writer computed from the trust policy (the
checkpoint's freshness) on this machine's clock. Within that time the decision is
re-judged at each read from the proven value itself, so a grant that reaches its
valid_until turns Expired here without asking the node: the status map only ever
moves a grant on by a later event, which the cached checkpoint cannot show anyway.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

from client.status import StatusDecision

Key = tuple[str, bytes, str]  # (controller, subject commitment, purpose)

DEFAULT_MAX_ENTRIES = 100_000


@dataclasses.dataclass
class _Entry:
    decision: StatusDecision
    fresh_until_ms: int


class DecisionCache:
    """A bounded LRU map from (controller, subject, purpose) to a verified decision."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 0:
            raise ValueError("max_entries must not be negative")
        self._max = max_entries
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Key, now_ms: int) -> StatusDecision | None:
        """The decision for `key` as it stands at now_ms, or None if absent or stale."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now_ms >= entry.fresh_until_ms:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        decision = entry.decision
        value = decision.value
        if value is not None:
            status = value.status(now_ms)
            if status is not decision.status:
                # Only time moves a cached status (GIVEN to EXPIRED), and never back.
                decision = dataclasses.replace(decision, status=status)
                entry.decision = decision
        return decision

    def put(self, key: Key, decision: StatusDecision, fresh_until_ms: int) -> None:
        if self._max == 0:
            return
        self._entries[key] = _Entry(decision, fresh_until_ms)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def forget(self, key: Key) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()
