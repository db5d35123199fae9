"""Consent events: the typed, immutable records a controller or the operator signs.

Every event encodes canonically (see codec.py) as a msgpack map whose first key is
"kind". The event's identity is SHA-256 of those bytes: a revocation names a grant by
it, and the node deduplicates resubmissions by it.

Fields cover what ISO/IEC TS 27560 makes mandatory for a consent record and what a
Kantara Consent Receipt v1.1 needs; purposes, personal-data categories and legal bases
are W3C DPV terms (`dpv:`, `pd:`, `eu-gdpr:`) or terms in the controller's own
namespace (`<controller>:name`). Times are integer milliseconds since the Unix epoch:
the encoding has no floats.

The format grows by new kinds, never by new fields in an old kind: a decoder rejects
unknown fields, so an old verifier cannot silently skip what it does not understand.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
from typing import Any, ClassVar

from ledger.codec import (
    Bin,
    Int,
    Nested,
    Record,
    SortedSet,
    Text,
    decoder_of,
    optional,
    pack,
    spec,
    unpack,
    unpack_canonical,
)
from ledger.errors import (
    DuplicateKeyError,
    FieldTypeError,
    FieldValueError,
    MalformedError,
    NonCanonicalError,
    UnknownFieldError,
)

MAX_EVENT_SIZE = 8 * 1024
MAX_TIME_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z

CONTROLLER = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+"
_TERM = r"[a-z0-9][a-z0-9._/-]{0,63}"
_DPV_PURPOSE = r"dpv:[A-Z][A-Za-z0-9]{0,63}"
_DPV_DATA = r"pd:[A-Z][A-Za-z0-9]{0,63}"
_LEGAL_BASIS = r"(?:dpv:[A-Z][A-Za-z0-9]{0,63}|eu-gdpr:A[0-9]+(?:-[0-9a-z]+){0,3})"
_JURISDICTION = r"[A-Z]{2}(?:-[A-Z0-9]{1,3})?"
_LANGUAGE = r"[a-z]{2,3}(?:-[A-Za-z0-9]{2,8}){0,3}"
_URL = r"https://[!-~]{1,2040}"
_ORIGIN = r"[!-*,-~]{1,255}"

COLLECTION_METHODS = frozenset(
    {"web-form", "mobile-app", "paper-form", "verbal", "email", "api", "in-person", "other"}
)
WITHDRAWN_BY = frozenset({"subject", "controller"})

KEY_SIZE = 32
KEY_ID_SIZE = 8
HASH_SIZE = 32

_time = Int(0, MAX_TIME_MS)
_hash = Bin(size=HASH_SIZE)
_key = Bin(size=KEY_SIZE)
_key_id = Bin(size=KEY_ID_SIZE)
_controller = Text(253, CONTROLLER)


def event_hash(event_bytes: bytes) -> bytes:
    """An event's identity: SHA-256 of its canonical bytes."""
    return hashlib.sha256(event_bytes).digest()


@functools.lru_cache(maxsize=4096)
def _vocabulary(dpv: str, controller: str) -> re.Pattern[str]:
    return re.compile(f"{dpv}|{re.escape(controller)}:{_TERM}")


def _check_namespaced(terms: tuple[str, ...], dpv: str, controller: str, field: str) -> None:
    if (dpv, controller, terms) in _NAMESPACED:  # the same few sets of terms, again and again
        return
    vocabulary = _vocabulary(dpv, controller)
    for i, term in enumerate(terms):
        if not vocabulary.fullmatch(term):
            raise FieldValueError(
                f"{term!r} is neither a DPV term nor in the controller's namespace "
                f"'{controller}:'",
                field=f"{field}[{i}]",
            )
    if len(_NAMESPACED) < 4096:
        _NAMESPACED.add((dpv, controller, terms))


_NAMESPACED: set[tuple[str, str, tuple[str, ...]]] = set()


class Event(Record):
    """Base of every event kind; `KIND` is written as the map's first key."""

    KIND: ClassVar[str]
    MAX_SIZE: ClassVar[int] = MAX_EVENT_SIZE

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "KIND" in cls.__dict__:
            cls.WIRE_HEAD = {"kind": cls.KIND}

    @classmethod
    def decode(cls, data: bytes) -> Event:
        event = decode_event(data)
        if not isinstance(event, cls):
            raise FieldValueError(f"expected a {cls.KIND} event, got {event.KIND}", field="kind")
        return event

    def hash(self) -> bytes:
        return event_hash(self.encode())


@dataclasses.dataclass(frozen=True)
class Genesis(Event):
    """Entry 0 of every log: names the log and the operator's key for admin events."""

    KIND: ClassVar[str] = "genesis"
    origin: str = spec(Text(255, _ORIGIN))
    operator_key: bytes = spec(_key)
    created_at: int = spec(_time)
    max_skew_ms: int = spec(Int(0, 7 * 24 * 3600 * 1000))


@dataclasses.dataclass(frozen=True)
class ControllerRegister(Event):
    """The operator admits a controller key (the first one creates the controller)."""

    KIND: ClassVar[str] = "controller-register"
    controller: str = spec(_controller)
    name: str = spec(Text(256))
    contact: str = spec(Text(256))
    key: bytes = spec(_key)
    registered_at: int = spec(_time)
    policy_url: str | None = optional(Text(2048, _URL))


@dataclasses.dataclass(frozen=True)
class ControllerRotate(Event):
    """The operator replaces one of a controller's keys: the old one retires at once."""

    KIND: ClassVar[str] = "controller-rotate"
    controller: str = spec(_controller)
    old_key_id: bytes = spec(_key_id)
    key: bytes = spec(_key)
    rotated_at: int = spec(_time)


@dataclasses.dataclass(frozen=True)
class ControllerRetire(Event):
    """The operator retires a controller key; events it signed before stay valid."""

    KIND: ClassVar[str] = "controller-retire"
    controller: str = spec(_controller)
    key_id: bytes = spec(_key_id)
    retired_at: int = spec(_time)
    reason: str | None = optional(Text(512))


@dataclasses.dataclass(frozen=True)
class Notice(Record):
    """The notice the person was shown: its version and the SHA-256 of its exact text."""

    version: str = spec(Text(64))
    sha256: bytes = spec(_hash)
    url: str | None = optional(Text(2048, _URL))


@dataclasses.dataclass(frozen=True)
class Grant(Event):
    """A person's consent to a controller, for purposes, over categories of data."""

    KIND: ClassVar[str] = "grant"
    controller: str = spec(_controller)
    subject: bytes = spec(_hash)
    purposes: tuple[str, ...] = spec(SortedSet(Text(128), max_items=32))
    data_categories: tuple[str, ...] = spec(SortedSet(Text(128), max_items=64))
    legal_basis: str = spec(Text(64, _LEGAL_BASIS))
    notice: Notice = spec(Nested(Notice))
    collection_method: str = spec(Text(32, choices=COLLECTION_METHODS))
    jurisdiction: str = spec(Text(16, _JURISDICTION))
    language: str = spec(Text(35, _LANGUAGE))
    consented_at: int = spec(_time)
    valid_until: int = spec(_time)
    retention_days: int = spec(Int(1, 100 * 366))
    withdrawal: str = spec(Text(512))
    token_hash: bytes = spec(_hash)
    service: str | None = optional(Text(128))
    recipients: tuple[str, ...] | None = optional(SortedSet(Text(256), max_items=32))

    def validate(self) -> None:
        _check_namespaced(self.purposes, _DPV_PURPOSE, self.controller, "purposes")
        _check_namespaced(self.data_categories, _DPV_DATA, self.controller, "data_categories")
        if self.valid_until <= self.consented_at:
            raise FieldValueError("must be after consented_at", field="valid_until")


@dataclasses.dataclass(frozen=True)
class Revoke(Event):
    """Withdrawal (by the person) or revocation (by the controller) of consent.

    It names either one grant by its event hash, or a subject and purposes, which
    withdraws every grant of that subject for those purposes at that controller.
    """

    KIND: ClassVar[str] = "revoke"
    controller: str = spec(_controller)
    by: str = spec(Text(16, choices=WITHDRAWN_BY))
    revoked_at: int = spec(_time)
    grant: bytes | None = optional(_hash)
    subject: bytes | None = optional(_hash)
    purposes: tuple[str, ...] | None = optional(SortedSet(Text(128), max_items=32))
    reason: str | None = optional(Text(512))

    def validate(self) -> None:
        if self.grant is not None:
            if self.subject is not None or self.purposes is not None:
                raise FieldValueError("name a grant, or a subject and purposes, not both",
                                      field="grant")
        elif self.subject is None or self.purposes is None:
            raise FieldValueError("name a grant, or both a subject and purposes",
                                  field="grant" if self.subject is None else "purposes")
        if self.purposes is not None:
            _check_namespaced(self.purposes, _DPV_PURPOSE, self.controller, "purposes")


@dataclasses.dataclass(frozen=True)
class StatusRoot(Event):
    """Written by the log itself at the end of every batch: the root of the status map
    (ledger/smt.py) over every entry before it. Unsigned: every replica and auditor
    recomputes the map from the entries and refuses a root that differs."""

    KIND: ClassVar[str] = "status-root"
    size: int = spec(Int(1, 2**63 - 1))
    map_root: bytes = spec(_hash)


EVENT_KINDS: dict[str, type[Event]] = {
    cls.KIND: cls
    for cls in (Genesis, ControllerRegister, ControllerRotate, ControllerRetire, Grant, Revoke,
                StatusRoot)
}
ADMIN_KINDS = frozenset({"genesis", "controller-register", "controller-rotate",
                         "controller-retire"})


def decode_event(data: bytes) -> Event:
    """Strictly decode any event kind; rejects every non-canonical or unknown form."""
    plain = unpack_canonical(data, max_size=MAX_EVENT_SIZE)
    if type(plain) is dict and next(iter(plain), None) == "kind":
        kind = plain.pop("kind")
        if type(kind) is str and kind in EVENT_KINDS:
            return decoder_of(EVENT_KINDS[kind])(plain, "")
    # Not canonical, or not an event at all: the slow path names what is wrong.
    value = unpack(data, max_size=MAX_EVENT_SIZE)
    if type(value) is not list or not value or type(value[0]) is not tuple:
        raise FieldTypeError("an event must be a non-empty map")
    key, kind = value[0]
    if key != "kind":
        raise MalformedError("the first key of an event must be 'kind'")
    if type(kind) is not str or kind not in EVENT_KINDS:
        raise FieldValueError(f"unknown event kind {kind!r}", field="kind")
    cls = EVENT_KINDS[kind]
    try:
        event = decoder_of(cls)(value[1:], "")
    except UnknownFieldError as exc:
        if exc.field == "kind":  # a second "kind" key
            raise DuplicateKeyError("duplicate key", field="kind") from None
        raise
    again = pack(event.to_wire())
    if again != bytes(data):
        raise NonCanonicalError("not the canonical encoding of this event")
    return event
