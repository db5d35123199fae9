"""Entries decoded without checks, for bytes this node's own checks already admitted.

A node replays its own log when it starts and when it builds a state snapshot. Every
entry there was strictly decoded and checked before the node stored it, in canonical
form; reading it back, half of the replay's time went into checking that form and every
field again. `decode_trusted_entry` only rebuilds the records from plain msgpack. What
still vouches for the bytes is the hash chain: replaying an entry checks that its
`prev` is the leaf hash of the bytes before it, so a row altered on disk breaks the
chain at once; at start-up every leaf hash is also checked against the stored tiles and
the signed checkpoint, and a snapshot's last leaf hash against the log before the
snapshot is used.

Never for bytes as they arrive from anyone else (a request, a leader's batch, a log
being mirrored or audited): those get `LogEntry.decode`, which refuses anything that is
not exactly canonical. fsck decodes strictly too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import msgpack

from ledger.codec import Nested, Record, Seq, SortedSet, Spec
from ledger.entry import LogEntry
from ledger.errors import MalformedError
from ledger.events import EVENT_KINDS

Convert = Callable[[Any], Any]
# Per record class: each field's name and how its plain value becomes the field's value
# (None where it is the value itself: bytes, text, integers, and arrays of those, which
# msgpack already gives as tuples).
_plans: dict[type, tuple[tuple[str, Convert | None], ...]] = {}


def decode_trusted_entry(data: bytes) -> LogEntry:
    """The entry `data` encodes, built without checking its form or its fields.

    MalformedError if it does not even have an entry's shape."""
    try:
        plain = msgpack.unpackb(data, raw=False, use_list=False)
        entry = _record(LogEntry, plain)
        signed = entry.signed
        event = msgpack.unpackb(signed.event, raw=False, use_list=False)
        signed.__dict__["body"] = _record(EVENT_KINDS[event.pop("kind")], event)
    except (ValueError, TypeError, KeyError, AttributeError, msgpack.UnpackException) as exc:
        raise MalformedError(f"not an entry this log wrote ({type(exc).__name__}: {exc})") \
            from None
    entry.__dict__["encoded"] = data  # the bytes its leaf hash, and the chain, are over
    return entry


def _record(cls: type[Record], plain: dict[str, Any]) -> Any:
    if type(plain) is not dict:
        raise TypeError(f"{cls.__name__} is not a map")
    record = cls.__new__(cls)
    fields = record.__dict__
    for name, convert in _plan(cls):
        value = plain.get(name)
        fields[name] = value if convert is None or value is None else convert(value)
    return record


def _plan(cls: type[Record]) -> tuple[tuple[str, Convert | None], ...]:
    plan = _plans.get(cls)
    if plan is None:
        plan = _plans[cls] = tuple((f.name, _converter(f.metadata["spec"]))
                                   for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                                   if "spec" in f.metadata)
    return plan


def _converter(spec: Spec) -> Convert | None:
    if isinstance(spec, Nested):
        record = spec.record
        return lambda value: _record(record, value)
    if isinstance(spec, Seq | SortedSet):
        item = _converter(spec.item)
        return None if item is None else (lambda value: tuple(map(item, value)))
    return None

