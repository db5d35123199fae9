"""`consent-ledger audit`: the regulator's audit of a whole log, with a report.

    consent-ledger audit --log URL [--mirror URL ...] [--policy FILE | --log-key VKEY]
                         [--report PATH] [--json PATH] [--state DIR] [--quiet]

Exit 0 when everything verifies; 1 with one line naming the entry and the reason when
something does not (the report is written either way); 2 for bad arguments; 130 on
Ctrl-C, after which a rerun resumes from the tiles already fetched. Without --report
and --json both reports go into the state directory.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import aiohttp

from client.audit import Auditor, AuditResult, AuditStore, default_state_dir
from client.audit_report import report_json, write_html, write_json
from client.command import Parser, UsageError, one_line, run_command
from client.errors import ClientError
from client.log_client import LogClient
from client.policy import PolicyError, TrustPolicy, parse_policy
from ledger.checkpoint import Checkpoint, open_checkpoint
from ledger.errors import LedgerError
from ledger.heap import tune_collector
from ledger.note import Ed25519Verifier, new_verifier

TOFU_NOTE = "fetched from GET /v1/keys and trusted on first use"


class AuditFailed(ClientError):
    """The log did not verify; the message names the entry and the reason."""


class Progress:
    """One line rewritten in place on a terminal; a line every few seconds otherwise."""

    def __init__(self, out: TextIO, *, quiet: bool) -> None:
        self._out = out
        self._quiet = quiet
        self._tty = out.isatty()
        self._start = time.monotonic()
        self._last = 0.0
        self._width = 0

    def __call__(self, done: int, total: int, phase: str) -> None:
        if self._quiet:
            return
        now = time.monotonic()
        final = phase != "verifying"
        if not final and now - self._last < (0.25 if self._tty else 5.0):
            return
        self._last = now
        elapsed = now - self._start
        rate = done / elapsed if elapsed > 0 else 0.0
        pct = 100.0 * done / total if total else 100.0
        line = f"audit: {phase} {done:,}/{total:,} entries ({pct:.1f} %), {rate:,.0f}/s"
        if self._tty:
            self._out.write("\r" + line.ljust(self._width))
            self._width = len(line)
            if final:
                self._out.write("\n")
        else:
            self._out.write(line + "\n")
        self._out.flush()


def _parser() -> Parser:
    p = Parser(prog="consent-ledger audit", description=(
        "Verify a whole log from genesis (entries, signatures, keys, chain, tree, "
        "checkpoints, status roots) and its agreement with mirrors; write a report."))
    p.add_argument("--log", required=True, metavar="URL", help="the log's base URL")
    p.add_argument("--mirror", action="append", default=[], metavar="URL",
                   help="a mirror or other node of the same log (repeatable)")
    trust = p.add_mutually_exclusive_group()
    trust.add_argument("--policy", metavar="FILE", help="a C2SP tlog-policy file: the log's "
                       "checkpoint must meet its witness quorum")
    trust.add_argument("--log-key", metavar="VKEY", help="the log's note verifier key")
    p.add_argument("--report", metavar="PATH", help="write the HTML report here")
    p.add_argument("--json", metavar="PATH", help="write the JSON report here")
    p.add_argument("--state", metavar="DIR", help="where fetched tiles and the last audited "
                   f"checkpoint are kept, per origin (default {default_state_dir()})")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="signature-checking processes (default: one per core)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p


async def _trust(args: argparse.Namespace
                 ) -> tuple[Ed25519Verifier, object, str]:
    """The log verifier, the function that opens the log's checkpoints, and its source."""
    if args.policy is not None:
        try:
            policy: TrustPolicy = parse_policy(Path(args.policy).read_bytes())
        except PolicyError as exc:
            raise UsageError(f"--policy: {exc}") from None
        if len(policy.log_verifiers) != 1:
            raise UsageError("--policy: name exactly one log to audit")

        def by_policy(note: bytes) -> Checkpoint:
            return policy.check_checkpoint(note, now=int(time.time()), max_age=None
                                           ).checkpoint

        return policy.log_verifiers[0], by_policy, f"policy {args.policy}"
    if args.log_key is not None:
        vkey, source = args.log_key, "given"
    else:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
            vkey, source = await LogClient.fetch_log_key(args.log, s), TOFU_NOTE
    try:
        verifier = new_verifier(vkey)
    except LedgerError as exc:
        raise UsageError(f"--log-key: not a note verifier key ({exc})") from None

    def by_key(note: bytes) -> Checkpoint:
        return open_checkpoint(note, verifier)[0]

    return verifier, by_key, source


async def _audit(args: argparse.Namespace, progress: Progress
                 ) -> tuple[AuditResult, str, AuditStore]:
    verifier, opener, source = await _trust(args)
    store = AuditStore(Path(args.state) if args.state else default_state_dir(),
                       verifier.name)
    auditor = Auditor(args.log, open_log_checkpoint=opener,  # type: ignore[arg-type]
                      log_verifier=verifier, mirrors=args.mirror, store=store,
                      workers=args.workers, processes=True, progress=progress)
    return await auditor.run(), source, store


def audit(argv: Sequence[str]) -> str:
    args = _parser().parse_args(list(argv))
    if args.workers is not None and args.workers < 1:
        raise UsageError("--workers must be at least 1")
    progress = Progress(sys.stderr, quiet=args.quiet)
    tune_collector()  # an audit replays the whole log in memory
    try:
        result, source, store = asyncio.run(_audit(args, progress))
    except KeyboardInterrupt:
        if not args.quiet:
            print("\naudit: interrupted; the tiles fetched so far are kept, rerun to resume",
                  file=sys.stderr)
        raise
    report = report_json(result, audited_at=time.time_ns() // 1_000_000)
    report["log_key"] = source
    html_path = args.report or str(store.dir / "report.html")
    json_path = args.json or str(store.dir / "report.json")
    store.dir.mkdir(parents=True, exist_ok=True)
    write_html(report, html_path)
    write_json(report, json_path)
    if result.failure is not None:
        raise AuditFailed(f"the log does not verify: {one_line(result.failure)} "
                          f"(report: {html_path})")
    v = report["verification"]
    lines = [("verified", f"{result.size:,} entries of {result.origin} from genesis"),
             ("root", result.root),
             ("signatures", f"{result.signatures_checked:,} checked"),
             ("hash tiles", f"{result.hash_tiles_checked:,} checked"),
             ("mirrors", ", ".join(f"{s.url} {s.verdict} at {s.size}"
                                   for s in result.sources if s.role == "mirror") or "none"),
             ("requests", f"{result.requests:,} ({result.tiles_reused:,} tiles reused)"),
             ("speed", f"{v['entries_per_second'] or 0:,} entries/s verified"),
             ("log key", source), ("report", html_path), ("json", json_path)]
    return "\n".join(f"{label:<12} {value}" for label, value in lines)


def audit_main(argv: Sequence[str]) -> int:
    return run_command("audit", lambda: audit(argv))
