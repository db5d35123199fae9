"""The consent state machine: which entries may follow, and what they mean.

`LedgerState` is the replicated state machine of the log. It is fed entries in order
and decides, deterministically from the entries alone, whether each one is admissible:
the operator's key from the genesis entry, the controller keys the operator registered,
rotated and retired, the grants and what has withdrawn them. A sequencer asks it before
appending; a follower or an auditor replays the same checks on every entry, so nobody
has to trust the node that wrote the log.

The checks that need the signature's cryptography are separate (`signer_key` then
`ledger.signed.verify_signature`), so that a node can run them on other cores before
the sequential part.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from ledger.codec import build_checked
from ledger.commitment import token_matches
from ledger.entry import GENESIS_PREV, LogEntry
from ledger.errors import RejectedError
from ledger.events import (
    ControllerRegister,
    ControllerRetire,
    ControllerRotate,
    Event,
    Genesis,
    Grant,
    Revoke,
    StatusRoot,
)
from ledger.signed import SignedEvent, key_id, verify_signature
from ledger.smt import StatusMap, map_key
from ledger.status import ConsentStatus, PurposeStatus
from ledger.undo import MISSING, UndoLog, Write


@dataclasses.dataclass(slots=True)
class KeyState:
    controller: str | None  # None: the operator's key
    public_key: bytes
    registered_at: int  # entry index
    retired_at: int | None = None


@dataclasses.dataclass(slots=True)
class GrantState:
    index: int
    controller: str
    subject: bytes
    purposes: tuple[str, ...]
    valid_until: int
    token_hash: bytes
    revoked_at: int | None = None  # entry index of the revocation that named this grant


# Status map changes held back from the map while status roots are taken at their word:
# the union of what a snapshot interval changes (100,000 entries, two keys each) fits.
DEFERRED_KEYS_MAX = 1 << 18


def _bad_status_root(index: int) -> RejectedError:
    return RejectedError("bad-status-root", f"the status root at entry {index} is not the "
                         "root of the map the entries before it make")


def claimed_time(event: Event) -> int:
    """When the signer says the event happened."""
    match event:
        case Genesis():
            return event.created_at
        case ControllerRegister():
            return event.registered_at
        case ControllerRotate():
            return event.rotated_at
        case ControllerRetire():
            return event.retired_at
        case Grant():
            return event.consented_at
        case Revoke():
            return event.revoked_at
    raise TypeError(type(event).__name__)


class LedgerState:
    def __init__(self) -> None:
        self.size = 0
        self.prev = GENESIS_PREV
        self.last_time = 0  # the log's clock never runs backwards across entries
        self.origin: str | None = None
        self.operator_key_id: bytes | None = None
        self.max_skew_ms = 0
        self.keys: dict[bytes, KeyState] = {}
        self.controllers: dict[str, ControllerRegister] = {}
        self.grants: dict[bytes, GrantState] = {}
        self.statuses: dict[tuple[str, bytes, str], PurposeStatus] = {}
        self.map = StatusMap()
        self._map_dirty: dict[bytes, bytes] = {}
        # Replaying a log already checked (defer_status_roots): the last status root taken
        # at its word as (its entry's index, its root), and the map updates before it.
        self._defer_max = 0  # deferring while more than 0: see defer_status_roots
        self._claim: tuple[int, bytes] | None = None
        self._claimed_dirty: dict[bytes, bytes] = {}
        self.event_index: dict[bytes, int] = {}  # event hash -> its entry
        self._undo: UndoLog | None = None  # kept by a cluster member: see ledger/undo.py
        self._writes: list[Write] | None = None  # the entry being applied, if journalled

    # ---------------------------------------------------------------- queries

    def index_of(self, event_id: bytes) -> int | None:
        """The index of an event already in the log, by its event hash."""
        return self.event_index.get(event_id)

    def status(self, controller: str, subject: bytes, purpose: str,
               now_ms: int) -> tuple[ConsentStatus, PurposeStatus | None]:
        latest = self.statuses.get((controller, subject, purpose))
        if latest is None:
            return ConsentStatus.UNKNOWN, None
        return latest.status(now_ms), latest

    def active_keys(self, controller: str) -> Iterator[bytes]:
        for kid, k in self.keys.items():
            if k.controller == controller and k.retired_at is None:
                yield kid

    def signer_key(self, signed: SignedEvent) -> bytes | None:
        """The public key the envelope must be verified against (None: nothing to verify,
        a token or a status root, which the state checks itself)."""
        if signed.token is not None or signed.signer is None:
            return None
        body = signed.body
        if self.size == 0 and isinstance(body, Genesis):
            return body.operator_key
        assert signed.signer is not None  # SignedEvent.validate guarantees it
        key = self.keys.get(signed.signer)
        if key is None:
            raise RejectedError("unknown-key", f"key {signed.signer.hex()} is not registered")
        return key.public_key

    # ---------------------------------------------------------------- admission

    def check(self, signed: SignedEvent, log_time: int) -> None:
        """Every admission rule except the signature's cryptography."""
        if log_time < self.last_time:
            raise RejectedError("time-regressed", f"log time {log_time} is before the previous "
                                f"entry's {self.last_time}")
        body = signed.body
        if signed.id in self.event_index:
            raise RejectedError("duplicate-event",
                                f"this event is already entry {self.event_index[signed.id]}")
        if self.size == 0:
            if not isinstance(body, Genesis):
                raise RejectedError("no-genesis", "the first entry must be the genesis event")
            if signed.signer != key_id(body.operator_key):
                raise RejectedError("not-operator", "genesis must be signed by its operator key")
            return
        if isinstance(body, Genesis):
            raise RejectedError("genesis-exists", "this log already has its genesis entry")
        if isinstance(body, StatusRoot):
            if body.size != self.size:
                raise RejectedError("bad-status-root", f"a status root at entry {self.size} "
                                    f"claims to cover {body.size} entries")
            pending = len(self._claimed_dirty) + len(self._map_dirty)
            if pending < self._defer_max and (pending or self._claim is not None):
                return  # taken at its word by _apply
            if body.map_root != self.map_root():
                raise _bad_status_root(self.size)
            return
        skew = abs(claimed_time(body) - log_time)
        if skew > self.max_skew_ms:
            raise RejectedError(
                "clock-skew",
                f"the event's time is {skew} ms from the log's clock "
                f"(at most {self.max_skew_ms} ms allowed)")
        if isinstance(body, ControllerRegister | ControllerRotate | ControllerRetire):
            self._check_admin(signed, body)
        elif signed.token is not None:
            assert isinstance(body, Revoke) and body.grant is not None
            grant = self._revocable_grant(body)
            if not token_matches(signed.token, grant.token_hash):
                raise RejectedError("bad-token", "the token does not match this grant")
        else:
            assert isinstance(body, Grant | Revoke)
            self._check_controller_key(signed, body.controller)
            if isinstance(body, Revoke):
                self._check_revocable(body)

    def _check_admin(self, signed: SignedEvent,
                     body: ControllerRegister | ControllerRotate | ControllerRetire) -> None:
        if signed.signer != self.operator_key_id:
            raise RejectedError("not-operator", f"{body.KIND} must be signed by the operator")
        new_key = body.key if isinstance(body, ControllerRegister | ControllerRotate) else None
        if new_key is not None and key_id(new_key) in self.keys:
            raise RejectedError("duplicate-key", "this key is already registered")
        if isinstance(body, ControllerRotate | ControllerRetire):
            kid = body.old_key_id if isinstance(body, ControllerRotate) else body.key_id
            key = self.keys.get(kid)
            if key is None or key.controller != body.controller:
                raise RejectedError("unknown-key",
                                    f"{body.controller} has no key {kid.hex()}")
            if key.retired_at is not None:
                raise RejectedError("key-retired", f"key {kid.hex()} is already retired")

    def _check_controller_key(self, signed: SignedEvent, controller: str) -> None:
        assert signed.signer is not None
        key = self.keys.get(signed.signer)
        if key is None:
            raise RejectedError("unknown-key", f"key {signed.signer.hex()} is not registered")
        if key.controller != controller:
            raise RejectedError("wrong-controller",
                                f"key {signed.signer.hex()} does not belong to {controller}")
        if key.retired_at is not None:
            raise RejectedError("key-retired",
                                f"key {signed.signer.hex()} was retired at entry {key.retired_at}")

    def _revocable_grant(self, body: Revoke) -> GrantState:
        assert body.grant is not None
        grant = self.grants.get(body.grant)
        if grant is None or grant.controller != body.controller:
            raise RejectedError("unknown-grant",
                                f"{body.controller} has no grant {body.grant.hex()}")
        if grant.revoked_at is not None:
            raise RejectedError("already-revoked",
                                f"grant {body.grant.hex()} was revoked at entry {grant.revoked_at}")
        return grant

    def _check_revocable(self, body: Revoke) -> None:
        if body.grant is not None:
            self._revocable_grant(body)
            return
        assert body.subject is not None and body.purposes is not None
        for purpose in body.purposes:
            latest = self.statuses.get((body.controller, body.subject, purpose))
            if latest is not None and latest.withdrawn_by is None:
                return
        raise RejectedError("nothing-to-revoke",
                            "no consent of that subject for those purposes is in force")

    # ---------------------------------------------------------------- appending

    def admit(self, signed: SignedEvent, log_time: int, *, signature_verified: bool) -> LogEntry:
        """Check an event, append it as the next entry and return that entry.

        `signature_verified` says the caller already verified the envelope against
        `signer_key(signed)`; otherwise it is verified here.
        """
        self.check(signed, log_time)
        if not signature_verified:
            self.verify(signed)
        # Every field is the state's own or an envelope that exists (so is valid).
        entry = build_checked(LogEntry, index=self.size, time=log_time, prev=self.prev,
                              signed=signed)
        self._apply(entry)
        return entry

    def verify(self, signed: SignedEvent) -> None:
        key = self.signer_key(signed)
        if key is not None:
            verify_signature(signed, key)

    def replay(self, entry: LogEntry, *, verify_signatures: bool = True) -> None:
        """Apply an entry someone else sequenced, checking everything it claims."""
        if entry.index != self.size:
            raise RejectedError("bad-index", f"entry {entry.index} arrived at size {self.size}")
        if entry.prev != self.prev:
            raise RejectedError(
                "broken-chain",
                f"entry {entry.index} does not link to entry {entry.index - 1}: it names "
                f"{entry.prev.hex()[:16]}…, entry {entry.index - 1} hashes to "
                f"{self.prev.hex()[:16]}… (one of the two was altered)")
        self.check(entry.signed, entry.time)
        if verify_signatures:
            self.verify(entry.signed)
        self._apply(entry)

    def _apply(self, entry: LogEntry) -> None:
        signed, index = entry.signed, entry.index
        body = signed.body
        w = None if self._undo is None else self._undo.begin(self.size, self._scalars())
        self._writes = w
        match body:
            case Genesis():
                self.origin = body.origin
                self.operator_key_id = key_id(body.operator_key)
                self.max_skew_ms = body.max_skew_ms
                self._put(self.keys, self.operator_key_id,
                          KeyState(None, body.operator_key, index))
            case ControllerRegister():
                self._put(self.controllers, body.controller, body)
                self._put(self.keys, key_id(body.key), KeyState(body.controller, body.key, index))
            case ControllerRotate():
                self._retire(self.keys[body.old_key_id], index)
                self._put(self.keys, key_id(body.key), KeyState(body.controller, body.key, index))
            case ControllerRetire():
                self._retire(self.keys[body.key_id], index)
            case Grant():
                gid = signed.id
                if w is not None:
                    w.append((self.grants, gid, self.grants.get(gid, MISSING)))
                self.grants[gid] = GrantState(index, body.controller, body.subject,
                                              body.purposes, body.valid_until, body.token_hash)
                # One status for every purpose of the grant: built and hashed once.
                status = build_checked(PurposeStatus, index=index, grant=gid,
                                       valid_until=body.valid_until, withdrawn_by=None)
                value_hash = status.value_hash()
                for purpose in body.purposes:
                    self._set_status((body.controller, body.subject, purpose), status,
                                     value_hash)
            case Revoke():
                self._apply_revoke(body, index)
            case StatusRoot() if self._map_dirty or self._claim is not None:
                # Only while deferring: check() otherwise brought the map up to date.
                self._claimed_dirty.update(self._map_dirty)
                self._map_dirty = {}
                self._claim = (index, body.map_root)
        if w is not None:
            w.append((self.event_index, signed.id, self.event_index.get(signed.id, MISSING)))
        self.event_index[signed.id] = index
        self.last_time = entry.time
        self.size = index + 1
        self.prev = entry.leaf_hash

    def _put(self, d: dict[Any, Any], key: Any, value: Any) -> None:
        if self._writes is not None:
            self._writes.append((d, key, d.get(key, MISSING)))
        d[key] = value

    def _retire(self, key: KeyState, index: int) -> None:
        if self._writes is not None:
            self._writes.append((key, "retired_at", key.retired_at))
        key.retired_at = index

    def _apply_revoke(self, body: Revoke, index: int) -> None:
        if body.grant is not None:
            grant = self.grants[body.grant]
            if self._writes is not None:
                self._writes.append((grant, "revoked_at", grant.revoked_at))
            grant.revoked_at = index
            keys = [(grant.controller, grant.subject, p) for p in grant.purposes]
            only_grant: bytes | None = body.grant
        else:
            assert body.subject is not None and body.purposes is not None
            keys = [(body.controller, body.subject, p) for p in body.purposes]
            only_grant = None
        for key in keys:
            latest = self.statuses.get(key)
            if latest is None or latest.withdrawn_by is not None:
                continue
            # A newer grant for the same purpose is not withdrawn by revoking an older one.
            if only_grant is not None and latest.grant != only_grant:
                continue
            self._set_status(key, dataclasses.replace(latest, index=index,
                                                      withdrawn_by=body.by))

    def _set_status(self, key: tuple[str, bytes, str], status: PurposeStatus,
                    value_hash: bytes | None = None) -> None:
        if self._writes is not None:
            self._writes.append((self.statuses, key, self.statuses.get(key, MISSING)))
        self.statuses[key] = status
        # The map itself is updated in one pass per batch, when its root is asked for.
        self._map_dirty[map_key(*key)] = value_hash or status.value_hash()

    @property
    def map_pending(self) -> bool:
        """Statuses changed since the map was last brought up to date (mid-batch)."""
        return bool(self._map_dirty) or self._claim is not None

    def map_root(self) -> bytes:
        """The status map's root over every entry so far.

        RejectedError if a status root taken at its word (defer_status_roots) is not the
        root of the map the entries before it make."""
        if self._claim is not None:
            index, claimed = self._claim
            self.map.set_many(self._claimed_dirty.items())
            self._claim, self._claimed_dirty = None, {}
            if self.map.root() != claimed:
                raise _bad_status_root(index)
        if self._map_dirty:
            self.map.set_many(self._map_dirty.items())
            self._map_dirty = {}
        return self.map.root()

    # ---------------------------------------------------------------- replaying a checked log

    def defer_status_roots(self, max_pending: int = DEFERRED_KEYS_MAX) -> None:
        """Take status roots at their word until settle_status_roots(), which checks the
        last one: for replaying a log that this node's own checks admitted (a restart, a
        snapshot build), every other rule still applied to every entry.

        Checking each root in turn costs the map a pass over the keys changed since the
        one before: a batch's few hundred keys share only the map's top levels, so each
        key hashes a path of its own, which was a quarter of replaying a log. One check
        at the end hashes the union of the changes once. It proves that the map the
        entries make is the one the last root claims; an earlier root that is wrong is
        not noticed here (an auditor's replay, which never defers, would notice). With
        `max_pending` changes held back, a root is checked at once: that bounds the
        memory they hold.
        """
        if self._undo is not None:
            raise ValueError("a state that keeps an undo journal checks every status root")
        self._defer_max = max_pending

    def settle_status_roots(self) -> None:
        """Check the last status root taken at its word (RejectedError if the entries
        make another map), and every later one as it comes."""
        self._defer_max = 0
        if self._claim is not None:
            self.map_root()

    # ---------------------------------------------------------------- taking back

    def keep_undo(self) -> None:
        """Journal from now on what each entry changes, so that roll_back can take it
        back (a cluster member, which applies entries before a majority stored them)."""
        if self._defer_max:
            raise ValueError("settle_status_roots() first")
        if self._undo is None:
            self._undo = UndoLog()

    def forget_undo(self, before: int) -> None:
        """Entries below `before` are committed: they will never be taken back."""
        if self._undo is not None:
            self._undo.forget_before(before)

    def roll_back(self, size: int) -> None:
        """The state after the first `size` entries, by undoing the later ones.

        ValueError, with nothing changed, unless every entry from `size` on was applied
        since keep_undo() and not forgotten."""
        if size == self.size:
            return
        if self._undo is None:
            raise ValueError("this state keeps no journal to go back with")
        scalars, undone = self._undo.undo_to(size)
        (self.size, self.prev, self.last_time, self.origin, self.operator_key_id,
         self.max_skew_ms) = scalars
        self._writes = None
        # The map is derived from the statuses (the map with its pending updates applied
        # holds each status's value hash): the keys the undone entries set, in the map or
        # pending, go back to what the restored statuses say.
        touched = {k for target, k, _ in undone if target is self.statuses}
        fixed = [(map_key(*k), self.statuses.get(k)) for k in touched]
        for mk, _ in fixed:
            self._map_dirty.pop(mk, None)
        self.map.set_many([(mk, st.value_hash()) for mk, st in fixed if st is not None])
        self.map.delete_many([mk for mk, st in fixed if st is None])

    def _scalars(self) -> tuple[Any, ...]:
        return (self.size, self.prev, self.last_time, self.origin, self.operator_key_id,
                self.max_skew_ms)
