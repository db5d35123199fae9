"""Key management on the command line: `keygen`, and `controller register|rotate|retire`.

A controller makes its key with `keygen` and hands the operator the public half; the
operator signs the admin event with the operator key and submits it through a
LogClient, so what is printed (index, event id) is proven included in a checkpoint
signed by the log key, not merely claimed by the node.

Exit codes: 0 done, 1 the node refused or could not be reached (one line naming the
problem code), 2 bad arguments (one line). Never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import dataclasses
import re
import time
from collections.abc import Sequence

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client.command import Parser, UsageError, run_command
from client.errors import ClientError, ProblemError
from client.keys import generate_key_file, load_private_key
from client.log_client import Accepted, LogClient
from ledger.errors import DecodeError
from ledger.events import (
    KEY_ID_SIZE,
    KEY_SIZE,
    ControllerRegister,
    ControllerRetire,
    ControllerRotate,
    Event,
)
from ledger.signed import key_id, public_bytes, sign_event

TOFU_NOTE = "fetched from GET /v1/keys (trust on first use; pin it with --log-key)"
# A light check that catches a swapped flag or a typo; the log itself accepts any text.
_CONTACT = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+|https://\S+")
# Field names of the events, as the user typed them: errors name the flag, not the field.
_FLAGS = {"controller": "--controller", "name": "--name", "contact": "--contact",
          "policy_url": "--policy-url", "reason": "--reason"}
_HINTS = {"controller": "a lowercase DNS-style name such as shop.example",
          "policy_url": "an https:// URL"}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# ---------------------------------------------------------------- keygen


def _keygen_parser() -> Parser:
    p = Parser(prog="consent-ledger keygen",
                description="Write a new Ed25519 key (PKCS#8 PEM, mode 0600) and print its "
                            "public key and key id.")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="where to write the key; an existing file is never overwritten")
    return p


def keygen(argv: Sequence[str]) -> str:
    args = _keygen_parser().parse_args(list(argv))
    public = public_bytes(generate_key_file(args.out))
    return "\n".join([f"key file    {args.out}",
                      f"public key  {base64.b64encode(public).decode()}",
                      f"key id      {key_id(public).hex()}"])


def keygen_main(argv: Sequence[str]) -> int:
    return run_command("keygen", lambda: keygen(argv))


# ---------------------------------------------------------------- controller


def _controller_parser() -> Parser:
    p = Parser(prog="consent-ledger controller",
                description="Admit, rotate and retire controller keys (signed by the operator).")
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION",
                           parser_class=Parser)

    def common(name: str, help: str) -> argparse.ArgumentParser:
        a = sub.add_parser(name, help=help, description=help)
        a.add_argument("--log", required=True, metavar="URL", help="the node's base URL")
        a.add_argument("--operator-key", required=True, metavar="FILE",
                       help="the operator's Ed25519 key (PKCS#8 PEM)")
        a.add_argument("--controller", required=True, metavar="ID",
                       help="the controller's DNS-style id, e.g. shop.example")
        a.add_argument("--log-key", metavar="VKEY",
                       help="the log's note verifier key; without it, GET /v1/keys is "
                            "trusted on first use")
        return a

    def new_key(a: argparse.ArgumentParser) -> None:
        which = a.add_mutually_exclusive_group(required=True)
        which.add_argument("--key", metavar="FILE",
                           help="the controller's key file (only its public half is used)")
        which.add_argument("--public-key", metavar="B64",
                           help="the controller's Ed25519 public key, base64")

    reg = common("register", "Admit a controller key (the first one creates the controller).")
    reg.add_argument("--name", required=True, help="the controller's legal name")
    reg.add_argument("--contact", required=True, metavar="EMAIL_OR_URL",
                     help="whom people contact about their data")
    new_key(reg)
    reg.add_argument("--policy-url", metavar="URL", help="the privacy policy (https://)")
    rot = common("rotate", "Replace a controller key; the old one retires at once.")
    rot.add_argument("--old-key-id", required=True, metavar="HEX")
    new_key(rot)
    ret = common("retire", "Retire a controller key; what it signed before stays valid.")
    ret.add_argument("--key-id", required=True, metavar="HEX")
    ret.add_argument("--reason", metavar="TEXT")
    return p


@dataclasses.dataclass(frozen=True)
class _Request:
    """A parsed, validated admin command: the event to sign and what to report."""

    event: Event
    key_ids: list[tuple[str, bytes]]  # ("key id", ...), ("old key id", ...)


def _request(args: argparse.Namespace) -> _Request:
    """Build the event from the arguments; every problem with them is a UsageError."""
    now = now_ms()
    try:
        if args.action == "register":
            if not _CONTACT.fullmatch(args.contact):
                raise UsageError(f"--contact: {args.contact!r} is neither an email address "
                                 "nor an https:// URL")
            key = _new_key(args)
            return _Request(ControllerRegister(
                controller=args.controller, name=args.name, contact=args.contact, key=key,
                registered_at=now, policy_url=args.policy_url), [("key id", key_id(key))])
        if args.action == "rotate":
            old, key = _hex_key_id(args.old_key_id, "--old-key-id"), _new_key(args)
            return _Request(ControllerRotate(
                controller=args.controller, old_key_id=old, key=key, rotated_at=now),
                [("key id", key_id(key)), ("old key id", old)])
        kid = _hex_key_id(args.key_id, "--key-id")
        return _Request(ControllerRetire(controller=args.controller, key_id=kid,
                                         retired_at=now, reason=args.reason),
                        [("key id", kid)])
    except DecodeError as exc:
        flag = _FLAGS.get(exc.field or "", exc.field or "argument")
        hint = _HINTS.get(exc.field or "")
        raise UsageError(f"{flag}: must be {hint}" if hint else f"{flag}: {exc.reason}"
                         ) from None


def _new_key(args: argparse.Namespace) -> bytes:
    if args.key is not None:
        # Only the public half goes on the log; --public-key spares the operator from
        # ever holding a controller's secret.
        return public_bytes(load_private_key(args.key))
    try:
        key = base64.b64decode(args.public_key, validate=True)
    except (binascii.Error, ValueError):
        raise UsageError("--public-key: not base64") from None
    if len(key) != KEY_SIZE:
        raise UsageError(f"--public-key: an Ed25519 public key is {KEY_SIZE} bytes, "
                         f"not {len(key)}")
    return key


def _hex_key_id(text: str, flag: str) -> bytes:
    try:
        kid = bytes.fromhex(text)
    except ValueError:
        kid = b""
    if len(kid) != KEY_ID_SIZE:
        raise UsageError(f"{flag}: a key id is {2 * KEY_ID_SIZE} hex digits "
                         "(as keygen prints it)")
    return kid


class Refused(ClientError):
    """The node refused the event; the message names the problem code."""

    def __init__(self, problem: ProblemError) -> None:
        self.problem = problem
        super().__init__(f"refused by the node: {problem.code}: "
                         f"{problem.detail or problem.title}")


async def submit_admin(log_url: str, event: Event, operator_key: Ed25519PrivateKey, *,
                       log_key: str | None = None) -> tuple[Accepted, str]:
    """Sign `event` with the operator key and submit it; the acceptance comes proven.

    Returns the acceptance and where the log key came from ("given" or the TOFU note).
    """
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        source = "given"
        if log_key is None:
            log_key = await LogClient.fetch_log_key(log_url, session)
            source = TOFU_NOTE
        client = LogClient(log_url, log_key=log_key, session=session)
        (result,) = await client.submit([sign_event(event, operator_key)])
    if not isinstance(result, Accepted):
        raise Refused(result.problem)
    return result, source


def controller(argv: Sequence[str]) -> str:
    args = _controller_parser().parse_args(list(argv))
    request = _request(args)
    operator_key = load_private_key(args.operator_key)
    accepted, source = asyncio.run(
        submit_admin(args.log, request.event, operator_key, log_key=args.log_key))
    what = f"{request.event.KIND} of {args.controller}"
    where = f"already in the log at entry {accepted.index}" if accepted.duplicate \
        else f"accepted at entry {accepted.index}"
    lines = [f"{what}: {where}, proven included in the checkpoint of size "
             f"{accepted.checkpoint.size}",
             f"index       {accepted.index}",
             f"event id    {accepted.event_id.hex()}"]
    lines += [f"{label:<11} {kid.hex()}" for label, kid in request.key_ids]
    lines.append(f"log key     {source}")
    return "\n".join(lines)


def controller_main(argv: Sequence[str]) -> int:
    return run_command("controller", lambda: controller(argv))
