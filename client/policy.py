"""Who to trust: a C2SP transparency log policy (c2sp.org/tlog-policy) and its check.

A policy is a line-based text file:

    # comments and blank lines are ignored
    log <vkey> [<url>]                   a log key (type 0x01); its name is the origin
    witness <name> <vkey> [<url>]        a cosigner key (type 0x04, tlog-cosignature)
    group <name> <k|all|any> <name>...   satisfied when k of its members are
    quorum <name|none>                   exactly one; `none` requires no cosignature

Fields are separated by ASCII spaces and tabs. A group or the quorum may only name
witnesses and groups defined on earlier lines, so definitions cannot form a cycle.
Parsing is strict, as the spec words it, and more so than Go's parsers (sigsum-go,
torchwood): a `#` only starts a comment at the start of a line, so a trailing comment
is an error rather than silently cut (a URL may hold `#`); each name may be a group
member once in the whole file (the spec's rule, so a witness counts once toward the
quorum); a threshold is a canonical decimal. The one leniency is the newline after
the last line, which Go's parsers do not require either: a policy is local
configuration written by hand, and refusing it would only teach people to ignore
errors.

`TrustPolicy.check_checkpoint` then accepts a checkpoint when a listed log signed it
and the verified cosignatures satisfy the quorum, optionally all recent enough.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from client.errors import ClientError, LogVerificationError
from client.log_client import VerifiedCheckpoint
from ledger.checkpoint import Checkpoint, open_checkpoint
from ledger.cosignature import CosignatureVerifier, new_cosignature_verifier
from ledger.errors import LedgerError, UnverifiedNoteError
from ledger.note import (
    Ed25519Verifier,
    Signature,
    new_verifier,
    parse_verifier_key,
    split_note,
)

NONE = "none"
MAX_POLICY_SIZE = 1 << 20
# The spec asks for at least 32 of each; a cap bounds the work a bad file can cause.
MAX_LOGS = MAX_WITNESSES = MAX_GROUPS = 64

_THRESHOLD = re.compile(r"[1-9][0-9]{0,5}")
_FIELD_SEP = re.compile(r"[ \t]+")
# The spec's octets: tab, newline, printable ASCII, and anything with the high bit set.
_FORBIDDEN = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


# ---- Errors ----------------------------------------------------------------------------


class PolicyError(ClientError):
    """A policy that is not valid; `line` is the 1-based line at fault, if any."""

    def __init__(self, reason: str, *, line: int | None = None) -> None:
        self.reason = reason
        self.line = line
        super().__init__(f"policy line {line}: {reason}" if line else f"policy: {reason}")


class CheckpointRejected(LogVerificationError):
    """A checkpoint the policy does not accept; `checkpoint` holds the note as served."""


class QuorumNotMet(CheckpointRejected):
    """The log signed it, but too few trusted witnesses cosigned it.

    `witnesses` names the policy's witnesses whose cosignatures verified.
    """

    def __init__(self, message: str, *, checkpoint: bytes,
                 witnesses: Iterable[str] = ()) -> None:
        super().__init__(message, checkpoint=checkpoint)
        self.witnesses = frozenset(witnesses)


class CheckpointStale(CheckpointRejected):
    """The quorum is met only by cosignatures older than the accepted age.

    `quorum_time` is the latest time at which the quorum had cosigned (None when the
    policy has no quorum, so that freshness cannot be judged at all).
    """

    def __init__(self, message: str, *, checkpoint: bytes, quorum_time: int | None,
                 now: int, max_age: int) -> None:
        super().__init__(message, checkpoint=checkpoint)
        self.quorum_time = quorum_time
        self.now = now
        self.max_age = max_age


# ---- The policy ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LogKey:
    vkey: str
    url: str | None = None


@dataclasses.dataclass(frozen=True)
class Witness:
    name: str
    vkey: str
    url: str | None = None


@dataclasses.dataclass(frozen=True)
class Group:
    """Satisfied when at least `threshold` of `members` (witnesses or groups) are."""

    name: str
    threshold: int
    members: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Quorum:
    name: str  # NONE for no cosignature at all


_Decl = LogKey | Witness | Group | Quorum


@dataclasses.dataclass(frozen=True)
class TrustedCheckpoint(VerifiedCheckpoint):
    """A checkpoint signed by a policy log whose cosignatures satisfy the quorum.

    `cosigned` pairs each policy witness whose cosignature verified with its time;
    `quorum_time` is the latest T such that cosignatures made at T or later alone meet
    the quorum (None under `quorum none`): a decision based on this checkpoint is
    fresh for max_age seconds after it.
    """

    cosigned: tuple[tuple[str, int], ...] = ()
    quorum_time: int | None = None


@dataclasses.dataclass(frozen=True)
class TrustPolicy:
    """A validated policy; build it with parse_policy or directly (it checks itself).

    `quorum` is None for `quorum none`. Definitions are checked in the order logs,
    witnesses, groups, so a group may only name witnesses and earlier groups.
    """

    logs: tuple[LogKey, ...]
    witnesses: tuple[Witness, ...]
    groups: tuple[Group, ...]
    quorum: str | None
    _compiled: _Compiled = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        declared: tuple[_Decl, ...] = (*self.logs, *self.witnesses, *self.groups,
                                       Quorum(NONE if self.quorum is None else self.quorum))
        decls: list[tuple[int | None, _Decl]] = [(None, d) for d in declared]
        object.__setattr__(self, "_compiled", _compile(decls))

    @property
    def log_verifiers(self) -> tuple[Ed25519Verifier, ...]:
        return self._compiled.logs

    @property
    def witness_verifiers(self) -> dict[str, CosignatureVerifier]:
        """Policy witness name -> its cosignature verifier."""
        return dict(self._compiled.witnesses)

    @property
    def can_judge_freshness(self) -> bool:
        """False under `quorum none`: only cosignatures carry a time."""
        return self.quorum is not None

    def check_checkpoint(self, note: bytes, *, now: int,
                         max_age: int | None) -> TrustedCheckpoint:
        """Open `note` with the log key named by its origin and check the quorum.

        With `max_age`, the quorum must be met by cosignatures made no earlier than
        now - max_age (seconds); a witness whose clock runs ahead only makes its own
        cosignature look fresher, which the policy already trusts it not to fake.
        Raises CheckpointRejected (bad or missing signatures, unknown origin),
        QuorumNotMet, or CheckpointStale, each holding the note.
        """
        if max_age is not None and max_age < 0:
            raise ValueError("max_age must not be negative")
        c = self._compiled
        checkpoint, verified = _open(note, c)
        cosigned: dict[str, int] = {}
        for sig in verified:
            name = c.by_key.get((sig.name, sig.key_id))
            if name is not None:
                cosigned[name] = c.witnesses[name].timestamp(sig)
        pairs = tuple(sorted(cosigned.items()))
        if self.quorum is None:
            if max_age is not None:
                raise CheckpointStale(
                    "freshness cannot be judged: the policy's quorum is none, so no "
                    "cosignature carries a time; drop the age limit or require witnesses",
                    checkpoint=note, quorum_time=None, now=now, max_age=max_age)
            return TrustedCheckpoint(checkpoint, note, pairs, None)
        quorum_time = _quorum_time(self.quorum, c.groups, cosigned)
        if quorum_time is None:
            got = ", ".join(sorted(cosigned)) or "no trusted witness"
            raise QuorumNotMet(f"checkpoint of {checkpoint.origin} at size {checkpoint.size} "
                               f"does not meet quorum {self.quorum}: cosigned by {got}",
                               checkpoint=note, witnesses=cosigned)
        if max_age is not None and quorum_time < now - max_age:
            raise CheckpointStale(
                f"checkpoint of {checkpoint.origin} at size {checkpoint.size} was last "
                f"cosigned by quorum {self.quorum} {now - quorum_time} s ago, more than "
                f"the {max_age} s accepted", checkpoint=note, quorum_time=quorum_time,
                now=now, max_age=max_age)
        return TrustedCheckpoint(checkpoint, note, pairs, quorum_time)


# ---- Compilation: what both parse_policy and TrustPolicy check --------------------------


@dataclasses.dataclass(frozen=True)
class _Compiled:
    logs: tuple[Ed25519Verifier, ...]
    witnesses: dict[str, CosignatureVerifier]
    by_key: dict[tuple[str, int], str]  # (key name, key ID) -> policy witness name
    groups: dict[str, Group]


def _compile(decls: Sequence[tuple[int | None, _Decl]]) -> _Compiled:
    logs: list[Ed25519Verifier] = []
    witnesses: dict[str, CosignatureVerifier] = {}
    groups: dict[str, Group] = {}
    by_key: dict[tuple[str, int], str] = {}
    log_keys: set[bytes] = set()
    witness_keys: set[bytes] = set()
    members_seen: set[str] = set()
    quorum: str | None = None

    def defined(name: str) -> bool:
        return name in witnesses or name in groups

    for line, d in decls:
        def fail(reason: str, line: int | None = line) -> PolicyError:
            return PolicyError(reason, line=line)

        if isinstance(d, LogKey):
            v = _key(d.vkey, new_verifier, "log", fail)
            raw = parse_verifier_key(d.vkey).public_key
            if raw in log_keys:
                raise fail("duplicate log: another log line has the same public key")
            log_keys.add(raw)
            _check_url(d.url, fail)
            logs.append(v)
            if len(logs) > MAX_LOGS:
                raise fail(f"more than {MAX_LOGS} logs")
        elif isinstance(d, Witness):
            _check_name(d.name, fail)
            if defined(d.name):
                raise fail(f"duplicate name {d.name!r}")
            w = _key(d.vkey, new_cosignature_verifier, "witness", fail)
            raw = parse_verifier_key(d.vkey).public_key
            if raw in witness_keys:
                raise fail("duplicate witness: another witness line has the same public key")
            witness_keys.add(raw)
            if (w.name, w.key_id) in by_key:  # a key ID collision: notes would be ambiguous
                raise fail(f"witness key {w.name}+{w.key_id:08x} is already in use")
            _check_url(d.url, fail)
            witnesses[d.name] = w
            by_key[(w.name, w.key_id)] = d.name
            if len(witnesses) > MAX_WITNESSES:
                raise fail(f"more than {MAX_WITNESSES} witnesses")
        elif isinstance(d, Group):
            _check_name(d.name, fail)
            if defined(d.name):
                raise fail(f"duplicate name {d.name!r}")
            if not d.members:
                raise fail(f"group {d.name!r} has no members")
            for m in d.members:
                if m == NONE:
                    raise fail("'none' cannot be a group member")
                if not defined(m):
                    raise fail(f"group {d.name!r} names {m!r}, which no earlier line defines")
                if m in members_seen:
                    raise fail(f"{m!r} is already a member of a group; each name may be a "
                               "member once")
                members_seen.add(m)
            if isinstance(d.threshold, bool) or not 1 <= d.threshold <= len(d.members):
                raise fail(f"threshold {d.threshold} is not between 1 and the "
                           f"{len(d.members)} members")
            groups[d.name] = d
            if len(groups) > MAX_GROUPS:
                raise fail(f"more than {MAX_GROUPS} groups")
        else:
            if quorum is not None:
                raise fail("a second quorum line; a policy has exactly one")
            if d.name != NONE and not defined(d.name):
                raise fail(f"quorum names {d.name!r}, which no earlier line defines")
            quorum = d.name
    if quorum is None:
        raise PolicyError("no quorum line (write `quorum none` to require no cosignature)")
    # A log key and a cosigner key with one (name, ID) would make notes ambiguous.
    for v in logs:
        if (v.name, v.key_id) in by_key:
            raise PolicyError(f"log key {v.name} has the name and key ID of a witness key")
    return _Compiled(tuple(logs), witnesses, by_key, groups)


_Fail = Callable[[str], PolicyError]
_V = TypeVar("_V")


def _key(vkey: str, make: Callable[[str], _V], what: str, fail: _Fail) -> _V:
    try:
        return make(vkey)
    except LedgerError as exc:
        raise fail(f"bad {what} key {vkey!r}: {exc}") from None


def _check_name(name: str, fail: _Fail) -> None:
    if not name or _FIELD_SEP.search(name) or _FORBIDDEN.search(name) or "\n" in name:
        raise fail(f"invalid name {name!r}")
    if name == NONE:
        raise fail("'none' is predefined and cannot be redefined")


def _check_url(url: str | None, fail: _Fail) -> None:
    if url is not None and (not url or _FIELD_SEP.search(url) or _FORBIDDEN.search(url)
                            or "\n" in url):
        raise fail(f"invalid URL {url!r}")


# ---- Parsing and formatting ------------------------------------------------------------


def parse_policy(text: str | bytes) -> TrustPolicy:
    """Parse a policy file, raising PolicyError with the line number of the first fault.

    Bytes that are not UTF-8 are refused: names are compared octet for octet as the
    spec asks, but keys, names and URLs all end up in UTF-8 text elsewhere.
    """
    if isinstance(text, bytes):
        raw = text
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PolicyError("not valid UTF-8",
                              line=raw[: exc.start].count(b"\n") + 1) from None
    if len(text) > MAX_POLICY_SIZE:
        raise PolicyError(f"larger than {MAX_POLICY_SIZE} bytes")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline ending the last line
    decls: list[tuple[int | None, _Decl]] = []
    for number, line in enumerate(lines, 1):
        bad = _FORBIDDEN.search(line)
        if bad:
            what = "a carriage return (CRLF line ends?)" if bad.group() == "\r" else \
                f"control character {bad.group()!r}"
            raise PolicyError(f"holds {what}", line=number)
        fields = _FIELD_SEP.split(line.strip(" \t"))
        if fields == [""] or fields[0].startswith("#"):
            continue
        decls.append((number, _parse_line(fields, number)))
    _compile(decls)  # for the line numbers; TrustPolicy checks its parts again
    return TrustPolicy(
        logs=tuple(d for _, d in decls if isinstance(d, LogKey)),
        witnesses=tuple(d for _, d in decls if isinstance(d, Witness)),
        groups=tuple(d for _, d in decls if isinstance(d, Group)),
        quorum=next(None if d.name == NONE else d.name
                    for _, d in decls if isinstance(d, Quorum)))


def _parse_line(fields: list[str], number: int) -> _Decl:
    keyword, args = fields[0], fields[1:]
    # Go's parsers cut a line at any '#'; the spec does not, so say why it fails here.
    hint = " (comments must be on a line of their own)" if any(
        a.startswith("#") for a in args) else ""

    def arity(lo: int, hi: int | None, usage: str) -> None:
        if len(args) < lo or (hi is not None and len(args) > hi):
            raise PolicyError(f"expected `{usage}`{hint}", line=number)

    if keyword == "log":
        arity(1, 2, "log <vkey> [<url>]")
        return LogKey(args[0], args[1] if len(args) > 1 else None)
    if keyword == "witness":
        arity(2, 3, "witness <name> <vkey> [<url>]")
        return Witness(args[0], args[1], args[2] if len(args) > 2 else None)
    if keyword == "group":
        arity(3, None, "group <name> <k|all|any> <name>...")
        name, k, members = args[0], args[1], tuple(args[2:])
        if k == "all":
            threshold = len(members)
        elif k == "any":
            threshold = 1
        elif _THRESHOLD.fullmatch(k):
            threshold = int(k)
        else:
            raise PolicyError(f"threshold {k!r} is not all, any or a decimal from 1",
                              line=number)
        return Group(name, threshold, members)
    if keyword == "quorum":
        arity(1, 1, "quorum <name|none>")
        return Quorum(args[0])
    raise PolicyError(f"unknown keyword {keyword!r}", line=number)


def format_policy(policy: TrustPolicy) -> str:
    """The policy as text that parse_policy reads back to an equal policy."""
    out = [" ".join(("log", log.vkey, *((log.url,) if log.url else ()))) for log in policy.logs]
    out += [" ".join(("witness", w.name, w.vkey, *((w.url,) if w.url else ())))
            for w in policy.witnesses]
    for g in policy.groups:
        k = "all" if g.threshold == len(g.members) else \
            "any" if g.threshold == 1 else str(g.threshold)
        out.append(" ".join(("group", g.name, k, *g.members)))
    out.append(f"quorum {NONE if policy.quorum is None else policy.quorum}")
    return "".join(line + "\n" for line in out)


# ---- Checking --------------------------------------------------------------------------


def _open(note: bytes, c: _Compiled) -> tuple[Checkpoint, tuple[Signature, ...]]:
    """The checkpoint and its verified signatures, by the first policy log that signed."""
    try:
        text, _ = split_note(note)
    except LedgerError as exc:
        raise CheckpointRejected(f"not a signed note: {exc}", checkpoint=note) from None
    origin = text.split("\n", 1)[0]
    candidates = [v for v in c.logs if v.name == origin]
    if not candidates:
        raise CheckpointRejected(f"no log in the policy has origin {origin!r}",
                                 checkpoint=note)
    cosigners = list(c.witnesses.values())
    for log in candidates:
        try:
            checkpoint, opened = open_checkpoint(note, log, cosigners=cosigners)
        except UnverifiedNoteError:
            continue  # another key of the same log (a rotation) may have signed
        except LedgerError as exc:
            raise CheckpointRejected(f"checkpoint of {origin} rejected: {exc}",
                                     checkpoint=note) from None
        return checkpoint, opened.signatures
    raise CheckpointRejected(f"checkpoint of {origin} is not signed by a log key in the "
                             "policy", checkpoint=note)


def _satisfied(name: str, groups: dict[str, Group], have: set[str]) -> bool:
    group = groups.get(name)
    if group is None:
        return name in have
    met = 0
    for m in group.members:
        met += _satisfied(m, groups, have)
        if met >= group.threshold:
            return True
    return False


def _quorum_time(quorum: str, groups: dict[str, Group], cosigned: dict[str, int]) -> int | None:
    """The latest T such that cosignatures made at T or later meet the quorum."""
    for t in sorted(set(cosigned.values()), reverse=True):
        if _satisfied(quorum, groups, {w for w, ts in cosigned.items() if ts >= t}):
            return t
    return None
