"""State snapshots: LedgerState at one size as canonical bytes, and back.

A node that starts from a snapshot replays only the entries after it, instead of every
entry since genesis. The bytes are msgpack, never pickle:

    [ "consent-ledger state snapshot", 1, SHA-256(body), body ]

`body` is the msgpack array

    size, prev, last_time, origin | nil, operator_key_id | nil, max_skew_ms, map_root,
    ids          one bin: the event hash of entry 0, 1, …, size-1 (32 bytes each)
    strings      controller names and purposes, in first-use order; rows cite them by
                 position, so that a million grants do not repeat the same few names
    keys         [key id, controller string | nil (the operator), public key,
                  registered_at, retired_at | nil] in the state's order
    controllers  [the ControllerRegister event's canonical bytes] in the state's order
    grants       [entry index (its event hash is ids[index]), controller string, subject,
                  [purpose strings], valid_until, token_hash, revoked_at | nil]
    statuses     [controller string, subject, purpose string, index,
                  entry index of its grant, valid_until, withdrawn_by | nil]
    leaves       one bin: the status map's leaves, key ‖ value hash, in key order

The digest catches a torn or altered row; the header's size, prev and map root are what
the node checks against the log before trusting a snapshot (node/recovery.py). The
status map is rebuilt from its sorted leaves in one pass and must hash to `map_root`.
A later version adds fields at the end of `body` and bumps the version; a decoder
refuses versions it does not know.

Taking a snapshot has two steps: `capture` copies what may change (dict shallow
copies, the map's leaf tuples, which are immutable) while the state holds still;
`encode_capture` may then run while the state moves on. The few fields that mutate in
place (a grant's revoked_at, a key's retired_at) are set once, to the index of the
entry that set them, so a value at or past the captured size was set later and is
encoded as absent. Nodes build their snapshots in a process of their own
(node/snapshot_builder.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from typing import Any

import msgpack

from ledger.codec import Record, build_checked
from ledger.errors import LedgerError
from ledger.events import MAX_TIME_MS, WITHDRAWN_BY, ControllerRegister
from ledger.signed import KEY_ID_SIZE
from ledger.smt import StatusMap
from ledger.state import GrantState, KeyState, LedgerState
from ledger.status import PurposeStatus

MAGIC = "consent-ledger state snapshot"
VERSION = 1
_BODY_FIELDS = 14
_HASH = 32
_sha256 = hashlib.sha256


class SnapshotError(LedgerError):
    """Bytes that are not a valid state snapshot; the message says where and why."""


@dataclasses.dataclass(frozen=True)
class Capture:
    """What a snapshot needs, copied while the state held still at `size` entries."""

    size: int
    prev: bytes
    last_time: int
    origin: str | None
    operator_key_id: bytes | None
    max_skew_ms: int
    map_root: bytes
    ids: dict[bytes, int]
    keys: dict[bytes, KeyState]
    controllers: dict[str, ControllerRegister]
    grants: dict[bytes, GrantState]
    statuses: dict[tuple[str, bytes, str], PurposeStatus]
    leaves: list[tuple[Any, ...]]  # the map's leaf tuples, in key order


def capture(state: LedgerState) -> Capture:
    """Copy what may change; the caller keeps the state still until this returns.

    Never writes to the state (it may run in another thread): a state whose status map
    has changes pending (a batch not yet closed by a status root) raises ValueError.
    """
    if state.map_pending:
        raise ValueError("the status map has changes pending")
    return Capture(
        size=state.size, prev=state.prev, last_time=state.last_time, origin=state.origin,
        operator_key_id=state.operator_key_id, max_skew_ms=state.max_skew_ms,
        map_root=state.map.root(), ids=dict(state.event_index), keys=dict(state.keys),
        controllers=dict(state.controllers), grants=dict(state.grants),
        statuses=dict(state.statuses), leaves=state.map.leaves())


def snapshot_bytes(state: LedgerState) -> bytes:
    """The state as snapshot bytes (capture and encode at once)."""
    state.map_root()  # applies pending status changes to the map
    return encode_capture(capture(state))


def encode_capture(cap: Capture) -> bytes:
    """The snapshot bytes of a capture; safe while the captured state moves on."""
    size = cap.size
    if len(cap.ids) != size:
        raise ValueError(f"{len(cap.ids)} event ids for {size} entries")
    strings: dict[str, int] = {}

    def sid(text: str) -> int:
        found = strings.get(text)
        if found is None:
            found = strings[text] = len(strings)
        return found

    def before(index: int | None) -> int | None:
        return index if index is not None and index < size else None

    keys = _pack([[kid, None if k.controller is None else sid(k.controller),
                   k.public_key, k.registered_at, before(k.retired_at)]
                  for kid, k in cap.keys.items()])
    controllers = _pack([c.encode() for c in cap.controllers.values()])
    grant_rows = _pack([
        [g.index, sid(g.controller), g.subject, [sid(p) for p in g.purposes], g.valid_until,
         g.token_hash, before(g.revoked_at)] for g in cap.grants.values()])
    grant_index = {gid: g.index for gid, g in cap.grants.items()}
    try:
        status_rows = _pack([
            [sid(controller), subject, sid(purpose), status.index, grant_index[status.grant],
             status.valid_until, status.withdrawn_by]
            for (controller, subject, purpose), status in cap.statuses.items()])
    except KeyError as exc:
        raise ValueError(f"a status names grant {exc.args[0].hex()}, not in the state") \
            from None
    leaves = _pack(b"".join([leaf[1] + leaf[2] for leaf in cap.leaves]))
    body = b"".join([
        _array_header(_BODY_FIELDS),
        *map(_pack, [size, cap.prev, cap.last_time, cap.origin, cap.operator_key_id,
                     cap.max_skew_ms, cap.map_root,
                     b"".join(cap.ids),  # insertion order is entry order: one id an entry
                     list(strings)]),
        keys, controllers, grant_rows, status_rows, leaves,
    ])
    return _pack([MAGIC, VERSION, _sha256(body).digest(), body])


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _array_header(length: int) -> bytes:
    return msgpack.Packer().pack_array_header(length)


# ---------------------------------------------------------------- loading


def _reject_ext(code: int, data: bytes) -> Any:
    raise SnapshotError(f"msgpack extension type {code} is not allowed")


def _unpack(data: bytes, what: str) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True,
                               ext_hook=_reject_ext)
    except SnapshotError:
        raise
    except Exception as exc:  # msgpack's errors share no base class
        raise SnapshotError(f"{what} is not msgpack: {type(exc).__name__}: {exc}") from None


def _is_int(value: Any, low: int = 0, high: int = 2**63 - 1) -> bool:
    return type(value) is int and low <= value <= high


def _is_hash(value: Any) -> bool:
    return type(value) is bytes and len(value) == _HASH


def _is_key_id(value: Any) -> bool:
    return type(value) is bytes and len(value) == KEY_ID_SIZE


class _Reader:
    """Checks fields of one section; errors name the section, the row and the field."""

    def __init__(self, section: str, rows: Any, width: int) -> None:
        if type(rows) is not list:
            raise SnapshotError(f"{section}: expected a list")
        self.section = section
        self.rows: list[list[Any]] = rows
        # At C speed first: the rows of a million grants are checked once, here.
        if set(map(type, rows)) <= {list} and set(map(len, rows)) <= {width}:
            return
        for i, row in enumerate(rows):
            if type(row) is not list or len(row) != width:
                self.fail(i, f"expected a list of {width} fields")

    def fail(self, row: int, why: str) -> None:
        raise SnapshotError(f"{self.section}[{row}]: {why}")

    def check(self, row: int, name: str, ok: bool) -> None:
        if not ok:
            self.fail(row, f"{name} is invalid: {self.rows[row]!r:.200}")


def load_snapshot(data: bytes) -> LedgerState:
    """A LedgerState from snapshot bytes; SnapshotError says what is wrong."""
    outer = _unpack(data, "the snapshot")
    if type(outer) is not list or len(outer) != 4:
        raise SnapshotError("the snapshot is not [magic, version, digest, body]")
    magic, version, digest, body = outer
    if magic != MAGIC:
        raise SnapshotError(f"not a state snapshot (magic {magic!r:.60})")
    if version != VERSION:
        raise SnapshotError(f"snapshot version {version!r:.20} (this node reads {VERSION})")
    if type(body) is not bytes or not _is_hash(digest):
        raise SnapshotError("the snapshot's digest or body has the wrong type")
    if _sha256(body).digest() != digest:
        raise SnapshotError("the snapshot's body does not match its digest (torn or altered)")
    fields = _unpack(body, "the snapshot's body")
    if type(fields) is not list or len(fields) != _BODY_FIELDS:
        raise SnapshotError(f"the snapshot's body is not a list of {_BODY_FIELDS} fields")
    (size, prev, last_time, origin, operator_key_id, max_skew_ms, map_root, ids, strings,
     keys, controllers, grants, statuses, leaves) = fields
    if not (_is_int(size) and _is_hash(prev) and _is_int(last_time) and _is_int(max_skew_ms)
            and _is_hash(map_root) and (origin is None or type(origin) is str)
            and (operator_key_id is None or _is_key_id(operator_key_id))):
        raise SnapshotError("the snapshot's header has a field of the wrong type or range")
    if type(ids) is not bytes or len(ids) != size * _HASH:
        raise SnapshotError(f"ids: expected {size} event hashes")
    if type(strings) is not list or not all(type(s) is str for s in strings) \
            or len(set(strings)) != len(strings):
        raise SnapshotError("strings: expected a list of distinct strings")

    state = LedgerState()
    state.size, state.prev, state.last_time = size, prev, last_time
    state.origin, state.operator_key_id, state.max_skew_ms = origin, operator_key_id, max_skew_ms
    id_list = [ids[i:i + _HASH] for i in range(0, len(ids), _HASH)]
    state.event_index = dict(zip(id_list, range(size), strict=True))
    if len(state.event_index) != size:
        raise SnapshotError("ids: an event hash appears twice")
    n_strings = len(strings)

    def string(r: _Reader, row: int, name: str, value: Any) -> str:
        r.check(row, name, _is_int(value, 0, n_strings - 1))
        return strings[value]

    def entry_index(value: Any) -> bool:
        return _is_int(value, 0, size - 1)

    def optional_index(value: Any) -> bool:
        return value is None or entry_index(value)

    r = _Reader("keys", keys, 5)
    for i, (kid, controller, public_key, registered_at, retired_at) in enumerate(r.rows):
        r.check(i, "key id", _is_key_id(kid) and kid not in state.keys)
        r.check(i, "controller", controller is None or _is_int(controller, 0, n_strings - 1))
        r.check(i, "public key", type(public_key) is bytes and len(public_key) == 32)
        r.check(i, "registered_at", entry_index(registered_at))
        r.check(i, "retired_at", optional_index(retired_at))
        state.keys[kid] = KeyState(
            None if controller is None else string(r, i, "controller", controller),
            public_key, registered_at, retired_at)

    if type(controllers) is not list:
        raise SnapshotError("controllers: expected a list")
    for i, encoded in enumerate(controllers):
        if type(encoded) is not bytes:
            raise SnapshotError(f"controllers[{i}]: expected bytes")
        try:
            event = ControllerRegister.decode(encoded)
        except LedgerError as exc:
            raise SnapshotError(f"controllers[{i}]: {exc}") from None
        if not isinstance(event, ControllerRegister):
            raise SnapshotError(f"controllers[{i}]: a {event.KIND} event")
        if event.controller in state.controllers:
            raise SnapshotError(f"controllers[{i}]: {event.controller} appears twice")
        state.controllers[event.controller] = event

    _load_grants(state, grants, strings, id_list)
    _load_statuses(state, statuses, strings)

    if type(leaves) is not bytes or len(leaves) % (2 * _HASH):
        raise SnapshotError("leaves: expected key ‖ value hash pairs")
    if len(leaves) // (2 * _HASH) != len(state.statuses):
        raise SnapshotError(f"leaves: {len(leaves) // (2 * _HASH)} map leaves for "
                            f"{len(state.statuses)} statuses")
    state.map = map_from_sorted_leaves(leaves)
    if state.map.root() != map_root:
        raise SnapshotError("leaves: the status map they make does not have the snapshot's root")
    return state


def _load_grants(state: LedgerState, grants: Any, strings: list[str],
                 id_list: list[bytes]) -> None:
    r = _Reader("grants", grants, 7)
    size, n_strings, out = state.size, len(strings), state.grants
    for i, (index, controller, subject, purposes, valid_until, token_hash, revoked_at) \
            in enumerate(r.rows):
        # One test per row on the fast path; _diagnose names the field that fails it.
        if not (type(index) is int and 0 <= index < size
                and type(controller) is int and 0 <= controller < n_strings
                and type(subject) is bytes and len(subject) == _HASH
                and type(purposes) is list and purposes
                and all(type(p) is int and 0 <= p < n_strings for p in purposes)
                and type(valid_until) is int and 0 <= valid_until <= MAX_TIME_MS
                and type(token_hash) is bytes and len(token_hash) == _HASH
                and (revoked_at is None or (type(revoked_at) is int and 0 <= revoked_at < size))
                and id_list[index] not in out):
            _diagnose(r, i, ["index", "controller", "subject", "purposes", "valid_until",
                             "token_hash", "revoked_at"])
        out[id_list[index]] = GrantState(index, strings[controller], subject,
                                         tuple([strings[p] for p in purposes]),
                                         valid_until, token_hash, revoked_at)


def _load_statuses(state: LedgerState, statuses: Any, strings: list[str]) -> None:
    r = _Reader("statuses", statuses, 7)
    size, n_strings, out = state.size, len(strings), state.statuses
    grant_of = {g.index: (gid, g.subject) for gid, g in state.grants.items()}
    plain = _PLAIN_STATUS
    new, set_field, record = object.__new__, object.__setattr__, PurposeStatus
    for i, (controller, subject, purpose, index, grant, valid_until, withdrawn_by) \
            in enumerate(r.rows):
        if not (type(controller) is int and 0 <= controller < n_strings
                and type(subject) is bytes and len(subject) == _HASH
                and type(purpose) is int and 0 <= purpose < n_strings
                and type(index) is int and 0 <= index < size
                and type(grant) is int and grant in grant_of
                and type(valid_until) is int and 0 <= valid_until <= MAX_TIME_MS
                and (withdrawn_by is None
                     or (type(withdrawn_by) is str and withdrawn_by in WITHDRAWN_BY))):
            _diagnose(r, i, ["controller", "subject", "purpose", "index", "grant",
                             "valid_until", "withdrawn_by"])
        gid, grant_subject = grant_of[grant]
        if subject == grant_subject:
            subject = grant_subject  # one bytes object, as in a live node's state
        key = (strings[controller], subject, strings[purpose])
        if key in out:
            r.fail(i, "a second status for the same controller, subject and purpose")
        if plain:  # build_checked without its generic dispatch: once per status
            status = new(record)
            set_field(status, "index", index)
            set_field(status, "grant", gid)
            set_field(status, "valid_until", valid_until)
            set_field(status, "withdrawn_by", withdrawn_by)
        else:
            status = build_checked(PurposeStatus, index=index, grant=gid,
                                   valid_until=valid_until, withdrawn_by=withdrawn_by)
        out[key] = status


def _natural(value: Any) -> bool:
    return type(value) is int and value >= 0


_FIELD_TESTS: dict[str, Callable[[Any], bool]] = {
    "subject": _is_hash,
    "token_hash": _is_hash,
    "purposes": lambda v: type(v) is list and bool(v) and all(_natural(p) for p in v),
    "valid_until": lambda v: _is_int(v, 0, MAX_TIME_MS),
    "withdrawn_by": lambda v: v is None or (type(v) is str and v in WITHDRAWN_BY),
    "revoked_at": lambda v: v is None or _natural(v),
}


def _diagnose(r: _Reader, row: int, names: list[str]) -> None:
    """Name the first field of a row that the fast test refused."""
    values = r.rows[row]
    for name, value in zip(names, values, strict=True):
        if not _FIELD_TESTS.get(name, _natural)(value):
            r.fail(row, f"{name} is invalid: {value!r:.80}")
    r.fail(row, f"a reference out of range (an entry index, a string, a grant) or a "
                f"repeated row: {values!r:.200}")


# PurposeStatus has no cross-field rules today; if it gains some, the loader runs them.
_PLAIN_STATUS = PurposeStatus.validate is Record.validate


def map_from_sorted_leaves(leaves: bytes) -> StatusMap:
    """A StatusMap from key ‖ value hash pairs in strictly increasing key order."""
    step = 2 * _HASH
    keys = [leaves[at:at + _HASH] for at in range(0, len(leaves), step)]
    values = [leaves[at:at + _HASH] for at in range(_HASH, len(leaves), step)]
    try:
        return StatusMap.from_sorted(keys, values)
    except ValueError as exc:
        detail = str(exc)
        raise SnapshotError(f"leaves{detail}" if detail.startswith("[")
                            else f"leaves: {detail}") from None
