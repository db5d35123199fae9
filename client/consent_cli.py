"""Consent on the command line, for people who script: `grant`, `revoke`, `status`, `verify`.

Each command prints a short summary, or with `--json` one JSON object. Nothing the node
says is taken on its word: a grant or revocation is printed only once its inclusion in
a checkpoint signed by the log key is proven (LogClient), a status only once its map
proof, root entry and checkpoint verify (client/status.py), a log only once it replays
from genesis. Without --log-key the log key is fetched from GET /v1/keys (trust on
first use) and the output says so.

`grant` writes the person's receipt and `revoke --receipt` (the person, with the token
from it) writes a receipt of the revocation: C2SP tlog-proof files (client/receipts.py)
that `consent-ledger receipt verify` checks offline.

Exit codes: 0 done (for `status`, whatever the status: it is an answer), 1 the node
refused, could not be reached, or gave an answer that does not verify, 2 bad arguments.
Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client.admin import TOFU_NOTE, Refused, now_ms
from client.command import Parser, UsageError, run_command
from client.errors import (
    ClientError,
    LogVerificationError,
    NodeUnavailableError,
    ProblemError,
    ReplyError,
)
from client.keys import load_private_key
from client.log_client import Accepted, LogClient
from client.receipts import (
    SUFFIX,
    build_receipt,
    load_held_grant,
    pending_receipt,
    write_private,
)
from client.status import verify_status
from client.verify_log import LogVerificationFailed, verify_log
from ledger.checkpoint import Checkpoint, open_checkpoint
from ledger.commitment import new_salt, new_token, subject_commitment, token_hash
from ledger.errors import DecodeError, LedgerError
from ledger.events import COLLECTION_METHODS, Grant, Notice, Revoke
from ledger.note import new_verifier
from ledger.signed import SignedEvent, sign_event, token_revocation

DAY_MS = 86_400_000
MAX_NOTICE = 64 * 1024 * 1024  # a notice is a page of text; this only bounds a wrong file
MAX_STATUS_REPLY = 1024 * 1024
# Grant fields as the user typed them: an error names the flag, not the field.
_FLAGS = {"controller": "--controller", "purposes": "--purpose",
          "data_categories": "--data-category", "legal_basis": "--legal-basis",
          "collection_method": "--collection-method", "jurisdiction": "--jurisdiction",
          "language": "--language", "valid_until": "--valid-days",
          "retention_days": "--retention-days", "withdrawal": "--withdrawal",
          "version": "--notice-version", "url": "--notice-url", "reason": "--reason"}


# ---------------------------------------------------------------- parsers


def _base(prog: str, description: str) -> Parser:
    p = Parser(prog=f"consent-ledger {prog}", description=description)
    p.add_argument("--log", required=True, metavar="URL", help="the node's base URL")
    p.add_argument("--json", action="store_true", help="print one JSON object, for scripts")
    return p


def _log_key_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-key", metavar="VKEY", help="the log's note verifier key; without "
                   "it, GET /v1/keys is trusted on first use")


def _days(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of days >= 1")
    return int(text)


def _grant_parser() -> Parser:
    p = _base("grant", "Record a person's consent, signed by the controller, and write the "
              "receipt the person keeps (mode 0600).")
    p.add_argument("--key", required=True, metavar="FILE", help="the controller's key file")
    p.add_argument("--controller", required=True, metavar="ID")
    p.add_argument("--subject-ref", required=True, metavar="REF",
                   help="the person's reference at the controller (never put on the log)")
    p.add_argument("--purpose", required=True, action="append", metavar="P")
    p.add_argument("--data-category", required=True, action="append", metavar="C")
    p.add_argument("--notice-file", required=True, metavar="FILE",
                   help="the exact notice shown to the person (its SHA-256 is logged)")
    p.add_argument("--notice-version", required=True, metavar="V")
    p.add_argument("--notice-url", metavar="URL")
    p.add_argument("--jurisdiction", required=True, metavar="CC")
    p.add_argument("--language", required=True, metavar="LL")
    p.add_argument("--valid-days", type=_days, default=365, metavar="N")
    p.add_argument("--retention-days", type=_days, default=730, metavar="N")
    p.add_argument("--withdrawal", metavar="TEXT", help="how to withdraw (default: a sentence "
                   "naming the revocation token in the receipt)")
    p.add_argument("--collection-method", default="web-form",
                   choices=sorted(COLLECTION_METHODS))
    p.add_argument("--legal-basis", default="dpv:Consent", metavar="TERM")
    p.add_argument("--receipt-out", metavar="FILE", help="where to write the receipt, a "
                   "c2sp.org/tlog-proof (default consent-receipt-<event id>.tlog-proof); "
                   "never overwritten")
    _log_key_flag(p)
    return p


def _revoke_parser() -> Parser:
    p = _base("revoke", "Revoke a grant: by the controller (signed) or by the person with "
              "the revocation token from their receipt (no key needed).")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--key", metavar="FILE", help="the controller's key file "
                     "(with --controller and --grant)")
    who.add_argument("--receipt", metavar="FILE", help="the person's receipt")
    p.add_argument("--controller", metavar="ID")
    p.add_argument("--grant", metavar="EVENT_ID_HEX")
    p.add_argument("--reason", metavar="TEXT")
    p.add_argument("--receipt-out", metavar="FILE", help="where to write the revocation's "
                   "receipt (default with --receipt: beside it, <name>.revocation"
                   f"{SUFFIX}; with --key: none)")
    _log_key_flag(p)
    return p


def _status_parser() -> Parser:
    p = _base("status", "Fetch the current status of a consent and verify its proof.")
    p.add_argument("--controller", required=True, metavar="ID")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--subject", metavar="HEX_COMMITMENT")
    which.add_argument("--receipt", metavar="FILE")
    p.add_argument("--purpose", required=True, metavar="P")
    _log_key_flag(p)
    return p


def _verify_parser() -> Parser:
    p = _base("verify", "Replay the whole log from genesis, checking every entry.")
    _log_key_flag(p)
    return p


# ---------------------------------------------------------------- shared


def _usage_from(exc: DecodeError) -> UsageError:
    field = (exc.field or "").split("[", 1)[0]
    return UsageError(f"{_FLAGS.get(field, field or 'argument')}: {exc.reason}")


def _hex(text: str, size: int, flag: str) -> bytes:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != size:
        raise UsageError(f"{flag}: expected {2 * size} hex digits")
    return raw


def _iso(ms: int) -> str:
    when = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


def _output(args: argparse.Namespace, data: dict[str, Any], lines: list[tuple[str, Any]]
            ) -> str:
    if args.json:
        return json.dumps(data)
    return "\n".join(f"{label:<14} {value}" for label, value in lines)


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))


async def _log_key(session: aiohttp.ClientSession, url: str, given: str | None
                   ) -> tuple[str, str]:
    """The log key and where it came from ("given" or the trust-on-first-use note)."""
    if given is not None:
        try:
            new_verifier(given)
        except LedgerError as exc:
            raise UsageError(f"--log-key: not a note verifier key ({exc})") from None
        return given, "given"
    return await LogClient.fetch_log_key(url, session), TOFU_NOTE


async def _submit(url: str, signed: SignedEvent, log_key: str | None, *,
                  before: Callable[[], None] = lambda: None) -> tuple[Accepted, str]:
    """Submit one envelope, its acceptance proven; `before` runs once the node has
    answered for its key, just before the event is sent."""
    async with _session() as session:
        vkey, source = await _log_key(session, url, log_key)
        client = LogClient(url, log_key=vkey, session=session)
        before()
        (result,) = await client.submit([signed])
    if not isinstance(result, Accepted):
        raise Refused(result.problem)
    return result, source


# ---------------------------------------------------------------- grant


def _build_grant(args: argparse.Namespace, subject: bytes, token: bytes) -> Grant:
    try:
        with open(args.notice_file, "rb") as f:
            notice_text = f.read(MAX_NOTICE + 1)
    except OSError as exc:
        raise ClientError(f"{args.notice_file}: cannot read the notice: "
                          f"{exc.strerror or exc}") from None
    if len(notice_text) > MAX_NOTICE:
        raise UsageError(f"--notice-file: larger than {MAX_NOTICE} bytes")
    hashed = token_hash(token)
    withdrawal = args.withdrawal or (
        "Withdraw this consent at any time with the revocation token in your receipt "
        f"(token hash {hashed.hex()[:16]}), or by contacting the controller.")
    now = now_ms()
    try:
        notice = Notice(version=args.notice_version,
                        sha256=hashlib.sha256(notice_text).digest(), url=args.notice_url)
        return Grant(
            controller=args.controller, subject=subject,
            purposes=tuple(sorted(set(args.purpose))),
            data_categories=tuple(sorted(set(args.data_category))),
            legal_basis=args.legal_basis, notice=notice,
            collection_method=args.collection_method, jurisdiction=args.jurisdiction,
            language=args.language, consented_at=now,
            valid_until=now + args.valid_days * DAY_MS, retention_days=args.retention_days,
            withdrawal=withdrawal, token_hash=hashed)
    except DecodeError as exc:
        raise _usage_from(exc) from None


def grant(argv: Sequence[str]) -> str:
    args = _grant_parser().parse_args(list(argv))
    salt, token = new_salt(), new_token()
    subject = subject_commitment(args.controller, args.subject_ref, salt)
    event = _build_grant(args, subject, token)
    key: Ed25519PrivateKey = load_private_key(args.key)
    signed = sign_event(event, key)
    path = Path(args.receipt_out or f"consent-receipt-{signed.id.hex()[:16]}{SUFFIX}")
    if path.exists():  # checked early too, so that nothing is sent in vain
        raise ClientError(f"{path}: a file already exists; refusing to overwrite a receipt")

    def pending() -> None:
        # Written before submitting: once the node may hold the grant, the person must
        # already hold its token and salt, even if this process dies before the proof.
        # After the key fetch, so that a node that is down leaves no receipt behind.
        write_private(path, pending_receipt(grant=signed.event, subject_ref=args.subject_ref,
                                            salt=salt, token=token, log=args.log),
                      create=True)

    try:
        accepted, source = asyncio.run(_submit(args.log, signed, args.log_key,
                                               before=pending))
    except Refused:
        path.unlink(missing_ok=True)  # the log refused it: there is nothing to keep
        raise
    write_private(path, build_receipt(accepted, log=args.log, subject_ref=args.subject_ref,
                                      salt=salt, token=token), create=False)
    data = {"index": accepted.index, "event_id": signed.id.hex(), "subject": subject.hex(),
            "duplicate": accepted.duplicate, "checkpoint_size": accepted.checkpoint.size,
            "valid_until": event.valid_until, "receipt": str(path), "log_key": source}
    return _output(args, data, [
        ("grant", f"accepted at entry {accepted.index}, proven included in the checkpoint "
                  f"of size {accepted.checkpoint.size}"),
        ("index", accepted.index), ("event id", signed.id.hex()),
        ("subject", subject.hex()), ("valid until", _iso(event.valid_until)),
        ("receipt", f"{path} (keep it: it holds the salt and the revocation token)"),
        ("log key", source)])


# ---------------------------------------------------------------- revoke


def _revocation(args: argparse.Namespace) -> tuple[SignedEvent, str, Path | None]:
    """The envelope to submit, who revokes ("controller" or "subject"), and where its
    receipt goes (None: nowhere)."""
    now = now_ms()
    out = None if args.receipt_out is None else Path(args.receipt_out)
    try:
        if args.receipt is not None:
            if args.controller is not None or args.grant is not None:
                raise UsageError("--receipt: names the grant itself; drop --controller "
                                 "and --grant")
            held = load_held_grant(args.receipt)
            revoke = Revoke(controller=held.grant.controller, by="subject", revoked_at=now,
                            grant=held.grant_id, reason=args.reason)
            if out is None:
                source = Path(args.receipt)
                out = source.with_name(f"{source.name.removesuffix(SUFFIX)}.revocation{SUFFIX}")
            return token_revocation(revoke, held.token), "subject", out
        if args.controller is None or args.grant is None:
            raise UsageError("--key: needs --controller and --grant")
        gid = _hex(args.grant, 32, "--grant")
        revoke = Revoke(controller=args.controller, by="controller", revoked_at=now,
                        grant=gid, reason=args.reason)
    except DecodeError as exc:
        raise _usage_from(exc) from None
    return sign_event(revoke, load_private_key(args.key)), "controller", out


def revoke(argv: Sequence[str]) -> str:
    args = _revoke_parser().parse_args(list(argv))
    signed, by, out = _revocation(args)
    if out is not None and out.exists():
        raise ClientError(f"{out}: a file already exists; refusing to overwrite a receipt")
    accepted, source = asyncio.run(_submit(args.log, signed, args.log_key))
    if out is not None:
        write_private(out, build_receipt(accepted, log=args.log), create=True)
    body = signed.body
    assert isinstance(body, Revoke) and body.grant is not None  # built just above
    data = {"index": accepted.index, "event_id": signed.id.hex(), "grant": body.grant.hex(),
            "by": by, "duplicate": accepted.duplicate,
            "checkpoint_size": accepted.checkpoint.size,
            "receipt": None if out is None else str(out), "log_key": source}
    lines: list[tuple[str, Any]] = [
        ("revocation", f"by the {by}: accepted at entry {accepted.index}, proven included "
                       f"in the checkpoint of size {accepted.checkpoint.size}"),
        ("index", accepted.index), ("event id", signed.id.hex()),
        ("grant", body.grant.hex())]
    if out is not None:
        lines.append(("receipt", f"{out} (proof of the revocation)"))
    lines.append(("log key", source))
    return _output(args, data, lines)


# ---------------------------------------------------------------- status


async def get_json(session: aiohttp.ClientSession, url: str, params: dict[str, str]) -> Any:
    """One GET of a JSON reply, capped; a non-200 becomes its ProblemError."""
    try:
        async with session.get(url, params=params) as resp:
            data = await resp.content.read(MAX_STATUS_REPLY + 1)
            if len(data) > MAX_STATUS_REPLY:
                raise ReplyError(f"GET {url}: the reply is larger than {MAX_STATUS_REPLY} bytes")
            try:
                reply = json.loads(data)
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
                reply = {"detail": data[:200].decode("utf-8", "replace")}
            if resp.status != 200:
                raise ProblemError.from_json(reply, resp.status)
            return reply
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise NodeUnavailableError(f"GET {url}: {exc or type(exc).__name__}") from None


async def _fetch_status(args: argparse.Namespace, subject: bytes) -> tuple[Any, str, str]:
    async with _session() as session:
        vkey, source = await _log_key(session, args.log, args.log_key)
        answer = await get_json(session, f"{args.log.rstrip('/')}/v1/status",
                                 {"controller": args.controller, "subject": subject.hex(),
                                  "purpose": args.purpose})
    return answer, vkey, source


def status(argv: Sequence[str]) -> str:
    args = _status_parser().parse_args(list(argv))
    if args.receipt is not None:
        held = load_held_grant(args.receipt)
        if held.grant.controller != args.controller:
            raise UsageError(f"--receipt: its grant is at {held.grant.controller}, "
                             f"not {args.controller}")
        subject = held.grant.subject
    else:
        subject = _hex(args.subject, 32, "--subject")
    answer, vkey, source = asyncio.run(_fetch_status(args, subject))
    verifier = new_verifier(vkey)

    def opened(note: bytes) -> Checkpoint:
        try:
            return open_checkpoint(note, verifier)[0]
        except LedgerError as exc:
            raise LogVerificationError(f"the status checkpoint does not verify against the "
                                       f"log key: {exc}", checkpoint=note) from None

    decision = verify_status(answer, controller=args.controller, subject=subject,
                             purpose=args.purpose, open_checkpoint=opened, now_ms=now_ms())
    value = decision.value
    data: dict[str, Any] = {
        "status": decision.status.value, "controller": args.controller,
        "subject": subject.hex(), "purpose": args.purpose,
        "since_index": None if value is None else value.index,
        "grant": None if value is None else value.grant.hex(),
        "valid_until": None if value is None else value.valid_until,
        "checkpoint_size": decision.checkpoint.size, "log_key": source}
    lines: list[tuple[str, Any]] = [("status", f"{decision.status.value} (verified against "
                                               f"the checkpoint of size "
                                               f"{decision.checkpoint.size})")]
    if value is not None:
        lines += [("since entry", value.index), ("grant", value.grant.hex()),
                  ("valid until", _iso(value.valid_until))]
    lines.append(("log key", source))
    return _output(args, data, lines)


# ---------------------------------------------------------------- verify


class LogDoesNotVerify(ClientError):
    """The log failed its replay; the message names the entry and the reason."""


async def _verify(args: argparse.Namespace) -> tuple[Any, str]:
    url = args.log.rstrip("/")
    async with _session() as session:
        vkey, source = await _log_key(session, url, args.log_key)
        try:
            return await verify_log(session, url, vkey), source
        except LogVerificationFailed as exc:
            raise LogDoesNotVerify(f"the log does not verify: {exc}") from None


def verify(argv: Sequence[str]) -> str:
    args = _verify_parser().parse_args(list(argv))
    log, source = asyncio.run(_verify(args))
    grants = log.state.grants.values()
    # Counted from the replayed state: a grant is revoked once a revocation named it or
    # withdrew its current status. (Counting revocation entries themselves would need
    # verify_log to report entry kinds.)
    withdrawn = {s.grant for s in log.state.statuses.values() if s.withdrawn_by is not None}
    revoked = sum(1 for gid, g in log.state.grants.items()
                  if g.revoked_at is not None or gid in withdrawn)
    cp = log.checkpoint
    root = base64.b64encode(cp.root).decode()
    data = {"entries": log.state.size, "checkpoint_size": cp.size, "root": root,
            "grants": len(grants), "grants_revoked": revoked, "log_key": source}
    return _output(args, data, [
        ("verified", f"{log.state.size} entries from genesis, every signature and link "
                     "checked"),
        ("checkpoint", f"size {cp.size}, root {root}"),
        ("grants", f"{len(grants)} ({revoked} since revoked or withdrawn)"),
        ("log key", source)])


# ---------------------------------------------------------------- entry points


COMMANDS = {"grant": grant, "revoke": revoke, "status": status, "verify": verify}


def consent_main(command: str, argv: Sequence[str]) -> int:
    body = COMMANDS[command]
    return run_command(command, lambda: body(argv))

