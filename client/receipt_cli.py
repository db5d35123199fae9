"""`consent-ledger receipt verify | refresh | show`: what a person does with a receipt.

- `verify FILE --log-key VKEY | --policy FILE` checks a receipt offline: the checkpoint
  against the log key (or a tlog-policy's log and witness quorum), the entry's inclusion,
  and that the salt and token it holds fit the grant. No network.
- `refresh FILE [--log URL]` verifies it, then proves it is still in the log's newest
  checkpoint (a consistency proof from the receipt's checkpoint, the entry fetched and
  proven included again) and reports the grant's status now, each purpose's status
  verified through GET /v1/status. Without --log-key or --policy the node's own key is
  trusted on first use, and the output says so. `--out FILE` also writes the receipt
  re-proven against that newest checkpoint (FILE may be the receipt itself).
- `show FILE [--format json|kantara|iso27560]` prints the receipt for a person (json),
  or exported as a Kantara Consent Receipt v1.1 or an ISO/IEC TS 27560 record (DPV
  JSON-LD). With a key or policy it verifies first; otherwise the output says
  `"verified": false` (json) and nothing in it is vouched for.

Exit codes as for every client command (client/command.py): 0 verified, 1 the receipt
or the log does not verify (one line naming what failed), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from client.admin import TOFU_NOTE
from client.command import Parser, UsageError, run_command
from client.consent_cli import get_json
from client.errors import ClientError, LogVerificationError
from client.log_client import LogClient, VerifiedCheckpoint
from client.policy import PolicyError, TrustPolicy, parse_policy
from client.receipts import (
    Receipt,
    ReceiptError,
    ReceiptFile,
    iso_time,
    open_receipt,
    policy_opener,
    read_file,
    read_receipt,
    render,
    to_iso27560,
    to_kantara,
    verify_receipt,
    write_private,
)
from client.status import verify_status
from ledger.checkpoint import Checkpoint
from ledger.errors import LedgerError
from ledger.events import Grant
from ledger.note import new_verifier
from ledger.status import ConsentStatus
from ledger.tlog_proof import OpenCheckpoint, TlogProof, format_proof, log_key_opener

FORMATS = ("json", "kantara", "iso27560")
MAX_POLICY = 1 << 20


class ReceiptDoesNotVerify(ClientError):
    """The receipt failed a check; the message names the file and the check."""


# ---------------------------------------------------------------- parsers


def _trust_flags(p: argparse.ArgumentParser) -> None:
    trust = p.add_mutually_exclusive_group()
    trust.add_argument("--log-key", metavar="VKEY", help="the log's note verifier key")
    trust.add_argument("--policy", metavar="FILE", help="a C2SP tlog-policy file: log keys, "
                       "witnesses and the quorum their cosignatures must meet")


def _parser(command: str, description: str) -> Parser:
    p = Parser(prog=f"consent-ledger receipt {command}", description=description)
    p.add_argument("file", metavar="FILE", help="the receipt (a .tlog-proof file)")
    return p


def _verify_parser() -> Parser:
    p = _parser("verify", "Verify a receipt offline against the log key or a trust policy.")
    _trust_flags(p)
    p.add_argument("--json", action="store_true", help="print one JSON object, for scripts")
    return p


def _refresh_parser() -> Parser:
    p = _parser("refresh", "Prove a receipt is still in the log's newest checkpoint and "
                "report the grant's status now.")
    p.add_argument("--log", metavar="URL", help="the node's base URL (default: the one "
                   "recorded in the receipt)")
    p.add_argument("--out", metavar="FILE", help="also write the receipt re-proven against "
                   "the newest checkpoint there (FILE itself may be given: it is replaced "
                   "whole, readable only by you)")
    _trust_flags(p)
    p.add_argument("--json", action="store_true", help="print one JSON object, for scripts")
    return p


def _show_parser() -> Parser:
    p = _parser("show", "Print a receipt for people, or export it.")
    p.add_argument("--format", choices=FORMATS, default="json")
    _trust_flags(p)
    return p


# ---------------------------------------------------------------- trust


def _load_policy(path: str) -> TrustPolicy:
    try:
        with open(path, "rb") as f:
            text = f.read(MAX_POLICY + 1)
    except OSError as exc:
        raise UsageError(f"--policy: cannot read {path}: {exc.strerror or exc}") from None
    try:
        return parse_policy(text)
    except PolicyError as exc:
        raise UsageError(f"--policy: {path}: {exc}") from None


def _opener(args: argparse.Namespace) -> tuple[OpenCheckpoint, str] | None:
    """How to open checkpoints, and what that trust is called; None if not given."""
    if args.log_key is not None:
        try:
            return log_key_opener(new_verifier(args.log_key)), "the given log key"
        except LedgerError as exc:
            raise UsageError(f"--log-key: not a note verifier key ({exc})") from None
    if args.policy is not None:
        return policy_opener(_load_policy(args.policy), now=int(time.time())), \
            f"the policy {args.policy}"
    return None


def _checked(path: str, file: ReceiptFile, opener: OpenCheckpoint) -> Receipt:
    try:
        return verify_receipt(file, opener)
    except ReceiptError as exc:
        raise ReceiptDoesNotVerify(f"{path}: the receipt does not verify: {exc}") from None


def _verified(path: str, opener: OpenCheckpoint) -> Receipt:
    return _checked(path, _read(path), opener)


def _read(path: str) -> ReceiptFile:
    data = read_file(path)  # its errors name the file already
    try:
        return read_receipt(data)
    except ReceiptError as exc:
        raise ReceiptError(f"{path}: {exc}") from None


def _output(args: argparse.Namespace, data: dict[str, Any], lines: list[tuple[str, Any]]
            ) -> str:
    if args.json:
        return json.dumps(data)
    return "\n".join(f"{label:<14} {value}" for label, value in lines)


def _summary(r: Receipt) -> list[tuple[str, Any]]:
    event = r.event
    lines: list[tuple[str, Any]] = [("controller", event.controller)]
    if isinstance(event, Grant):
        lines += [("purposes", ", ".join(event.purposes)),
                  ("data", ", ".join(event.data_categories)),
                  ("consented at", iso_time(event.consented_at)),
                  ("valid until", iso_time(event.valid_until))]
    else:
        lines += [("grant", r.grant_id.hex()), ("revoked at", iso_time(event.revoked_at))]
    return [*lines, ("event id", r.event_id.hex())]


def _kind(r: Receipt) -> str:
    event = r.event
    return "grant" if isinstance(event, Grant) else f"revocation by the {event.by}"


# ---------------------------------------------------------------- verify


def verify(argv: Sequence[str]) -> str:
    args = _verify_parser().parse_args(list(argv))
    trust = _opener(args)
    if trust is None:
        raise UsageError("give --log-key or --policy: a receipt is verified against the "
                         "keys you trust, never against itself")
    opener, trusted = trust
    r = _verified(args.file, opener)
    cp = r.verified
    assert cp is not None  # verify_receipt sets it
    data = {**render(r), "verified_with": trusted}
    return _output(args, data, [
        ("receipt", f"{_kind(r)} at entry {r.file.index} of {cp.origin}: verified offline"),
        ("checkpoint", f"size {cp.size}, accepted by {trusted}"), *_summary(r)])


# ---------------------------------------------------------------- refresh


async def _refresh_trust(args: argparse.Namespace, url: str, file: ReceiptFile,
                         session: aiohttp.ClientSession) -> tuple[str, OpenCheckpoint, str]:
    """The log key LogClient checks the node with, how checkpoints are opened, and what
    that trust is called. Under a policy, the log key is the policy's key whose name is
    the receipt's origin, and every checkpoint must also meet the policy's quorum."""
    if args.policy is not None:
        policy, origin = _load_policy(args.policy), file.checkpoint.origin
        keys = [k.vkey for k in policy.logs if new_verifier(k.vkey).name == origin]
        if not keys:
            raise UsageError(f"--policy: no log in it has the receipt's origin {origin!r}")
        return keys[0], policy_opener(policy, now=int(time.time())), \
            f"the policy {args.policy}"
    given = _opener(args)
    if given is not None:  # --log-key
        return args.log_key, given[0], given[1]
    vkey = await LogClient.fetch_log_key(url, session)
    return vkey, log_key_opener(new_verifier(vkey)), TOFU_NOTE


async def _status_now(session: aiohttp.ClientSession, url: str, grant: Grant,
                      opener: OpenCheckpoint, client: LogClient) -> dict[str, ConsentStatus]:
    """Each purpose's status now, each answer verified and its checkpoint proven to lie
    on one chain with the newest checkpoint seen."""

    def opened(note: bytes) -> Checkpoint:
        try:
            return opener(note)
        except LedgerError as exc:
            raise LogVerificationError(f"the status checkpoint does not verify: {exc}",
                                       checkpoint=note) from None

    statuses: dict[str, ConsentStatus] = {}
    for purpose in grant.purposes:
        answer = await get_json(session, f"{url}/v1/status", {
            "controller": grant.controller, "subject": grant.subject.hex(),
            "purpose": purpose})
        decision = verify_status(answer, controller=grant.controller, subject=grant.subject,
                                 purpose=purpose, open_checkpoint=opened,
                                 now_ms=int(time.time() * 1000))
        seen, latest = VerifiedCheckpoint(decision.checkpoint, decision.checkpoint_note), \
            client.latest
        assert latest is not None  # the newest checkpoint was fetched first
        if seen.size >= latest.size:
            await client.consistency(latest, seen)
        else:
            await client.consistency(seen, latest)
        statuses[purpose] = decision.status
    return statuses


async def _refresh(args: argparse.Namespace, file: ReceiptFile, url: str
                   ) -> tuple[Receipt, VerifiedCheckpoint, dict[str, ConsentStatus], str]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        vkey, opener, trusted = await _refresh_trust(args, url, file, session)
        r = _checked(args.file, file, opener)
        assert r.verified is not None
        client = LogClient(url, log_key=vkey, session=session)
        newest = await client.checkpoint()
        try:
            opener(newest.note)  # the newest checkpoint must meet the same trust
        except LedgerError as exc:
            raise LogVerificationError(f"the log's newest checkpoint does not verify: {exc}",
                                       checkpoint=newest.note) from None
        mine = VerifiedCheckpoint(r.verified, file.proof.checkpoint)
        if mine.size > newest.size:
            raise LogVerificationError(
                f"the log's newest checkpoint (size {newest.size}) is smaller than the "
                f"receipt's (size {mine.size}): the log rolled back", checkpoint=newest.note,
                other_checkpoint=mine.note)
        await client.consistency(mine, newest)
        entry = await client.entry(r.file.index, newest)
        if entry.encoded != file.extra.entry:
            raise LogVerificationError(f"entry {r.file.index} of the newest checkpoint is not "
                                       "the receipt's entry", checkpoint=newest.note,
                                       index=r.file.index, entry=entry.encoded)
        event = r.event
        statuses = {} if not isinstance(event, Grant) else \
            await _status_now(session, url, event, opener, client)
        if args.out is not None:
            path = await client.inclusion_proof(r.file.index, entry.leaf_hash, newest)
            refreshed = format_proof(TlogProof(r.file.index, path, newest.note,
                                               file.proof.extra))
            verify_receipt(read_receipt(refreshed), opener)  # what is written verifies
            out = Path(args.out)
            write_private(out, refreshed, create=not out.exists())
    return r, newest, statuses, trusted


def refresh(argv: Sequence[str]) -> str:
    args = _refresh_parser().parse_args(list(argv))
    file = _read(args.file)
    url = args.log if args.log is not None else file.extra.log
    if url is None:
        raise UsageError("--log: the receipt records no log URL; give one")
    url = url.rstrip("/")
    r, newest, statuses, trusted = asyncio.run(_refresh(args, file, url))
    assert r.verified is not None
    data: dict[str, Any] = {
        **render(r, status=statuses if r.is_grant else None),
        "newest_checkpoint_size": newest.size, "log_url": url, "log_key": trusted}
    lines: list[tuple[str, Any]] = [
        ("receipt", f"{_kind(r)} at entry {r.file.index}: still in the log's newest "
                    f"checkpoint (size {newest.size}), which extends the receipt's "
                    f"(size {r.verified.size})")]
    if statuses:
        lines.append(("status now", "; ".join(f"{p}: {s.value}" for p, s in statuses.items())))
    if args.out is not None:
        data["written"] = args.out
        lines.append(("written", f"{args.out}, proven against checkpoint size {newest.size}"))
    lines += [*_summary(r), ("log key", trusted)]
    return _output(args, data, lines)


# ---------------------------------------------------------------- show


def show(argv: Sequence[str]) -> str:
    args = _show_parser().parse_args(list(argv))
    trust = _opener(args)
    if trust is None:
        file = _read(args.file)
        try:
            r = open_receipt(file, verified=None)
        except ReceiptError as exc:
            raise ReceiptError(f"{args.file}: {exc}") from None
    else:
        r = _verified(args.file, trust[0])
    if args.format == "kantara":
        doc = to_kantara(r)
    elif args.format == "iso27560":
        doc = to_iso27560(r)
    else:
        doc = render(r)
    return json.dumps(doc, indent=2, ensure_ascii=False)


# ---------------------------------------------------------------- entry point


COMMANDS = {"verify": verify, "refresh": refresh, "show": show}
USAGE = "usage: consent-ledger receipt verify|refresh|show FILE [options] (see --help of each)"


def receipt_main(argv: Sequence[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        def usage() -> str:
            if argv and argv[0] in ("-h", "--help"):
                return USAGE
            raise UsageError("expected verify, refresh or show after 'receipt'")

        return run_command("receipt", usage)
    body = COMMANDS[argv[0]]
    return run_command(f"receipt {argv[0]}", lambda: body(argv[1:]))

