"""A Raft batch's payload: the ledger entries' bytes, in order, as one msgpack array.

Pure functions, so that a member's decoding process and its event loop read a leader's
batch with the same code and refuse the same payloads.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgpack

from ledger.entry import MAX_ENTRY_SIZE, LogEntry

MAX_BATCH_ENTRIES = 70_000  # a Raft batch is at most max_commit_entries + 1 ledger entries


def encode_batch(entries: Sequence[bytes]) -> bytes:
    return msgpack.packb(list(entries), use_bin_type=True)


def batch_entries(payload: bytes) -> list[bytes]:
    """The entries' bytes; ValueError unless the payload is a non-empty array of them."""
    try:
        raws = msgpack.unpackb(payload, raw=False, max_bin_len=MAX_ENTRY_SIZE,
                               max_array_len=MAX_BATCH_ENTRIES)
    except msgpack.ExtraData:
        raise ValueError("bytes after the batch's array") from None
    if not isinstance(raws, list) or not raws or not all(isinstance(r, bytes) for r in raws):
        raise ValueError("a batch is a non-empty array of entries")
    return raws


def decode_batch(payload: bytes) -> list[LogEntry]:
    """Every entry decoded strictly (canonical form, every field's rules)."""
    return [LogEntry.decode(raw) for raw in batch_entries(payload)]
