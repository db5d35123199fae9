"""The demo workload: a web shop recording its customers' consent, driven into a log.

`Workload` makes the events (I/O free, so tests feed them to a LedgerState directly);
`run_demo` registers the demo controller with the operator's key, submits the events
in concurrent signed batches through a LogClient that proves every acceptance, and
ends by re-proving a sample of entries against the final checkpoint.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import math
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client.command import Parser, run_command
from client.errors import ClientError, KeyFileError
from client.keys import generate_key_file, load_private_key
from client.log_client import Accepted, LogClient, Rejected, SubmitResult, VerifiedCheckpoint
from client.wire import MAX_BATCH_ITEMS
from ledger.commitment import new_salt, new_token, subject_commitment, token_hash
from ledger.events import ControllerRegister, Event, Grant, Notice, Revoke
from ledger.signed import (
    SignedEvent,
    key_id,
    public_bytes,
    sign_batch,
    sign_event,
    token_revocation,
)

DEMO_CONTROLLER = "demo-shop.example"
DAY_MS = 86_400_000
SAMPLE_SIZE = 32
NOTICE_TEXT = (b"Demo Shop privacy notice, version 2026-01. We use your data to deliver "
               b"your orders and, where you agree, to send offers and improve our service.")

# (purpose, weight, the data categories it typically needs)
PURPOSES: tuple[tuple[str, int, tuple[str, ...]], ...] = (
    ("dpv:ServiceProvision", 30, ("pd:Name", "pd:EmailAddress", "pd:PhysicalAddress",
                                  "pd:PurchaseHistory")),
    ("dpv:Marketing", 20, ("pd:EmailAddress", "pd:Name", "pd:PurchaseHistory")),
    ("dpv:Personalisation", 15, ("pd:PurchaseHistory", "pd:BrowsingBehavior",
                                 "pd:Preference")),
    ("dpv:PersonalisedAdvertising", 8, ("pd:BrowsingBehavior", "pd:Location", "pd:Age")),
    ("dpv:ResearchAndDevelopment", 8, ("pd:BrowsingBehavior", "pd:Age", "pd:Location")),
    ("dpv:CustomerCare", 7, ("pd:Name", "pd:EmailAddress", "pd:TelephoneNumber")),
    ("dpv:ServiceOptimisation", 6, ("pd:BrowsingBehavior", "pd:Location")),
    ("dpv:FraudPreventionAndDetection", 6, ("pd:Name", "pd:PurchaseHistory", "pd:Location")),
)
OWN_PURPOSES = ("newsletter", "loyalty-programme", "product-reviews")
LOCALES = (("DE", "de"), ("FR", "fr"), ("NL", "nl"), ("IE", "en"), ("ES-CT", "ca"),
           ("AT", "de"), ("BE", "fr"), ("SE", "sv"))
METHODS = (("web-form", 60), ("mobile-app", 30), ("email", 5), ("in-person", 5))
CONTROLLER_REASONS = ("account closed", "consent refresh policy: older than two years",
                      "customer asked support to stop contact", "service discontinued")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class DemoError(ClientError):
    """The demo could not run; the message says why in one line."""


# ---------------------------------------------------------------- the workload


@dataclasses.dataclass(frozen=True)
class IssuedGrant:
    event_id: bytes
    token: bytes  # what the person keeps to withdraw without the controller's help


@dataclasses.dataclass(frozen=True)
class Batch:
    signed: list[SignedEvent]
    kinds: list[str]  # per envelope: "grant", "revoke-token" or "revoke-controller"
    grants: dict[int, IssuedGrant]  # position in `signed` -> the grant made there


@dataclasses.dataclass
class _Subject:
    commitment: bytes


class Workload:
    """Consent events of one controller: grants by many people, ~20% later withdrawn.

    Revocations only name grants reported accepted (`record`), each one once, so that
    concurrent batches never race a revocation ahead of its grant.
    """

    def __init__(self, controller: str, key: Ed25519PrivateKey, *,
                 rng: random.Random | None = None, clock: Callable[[], int] = now_ms,
                 revoke_share: float = 0.2, token_share: float = 0.6) -> None:
        self.controller = controller
        self.key = key
        self.rng = rng or random.Random()
        self.clock = clock
        self.revoke_share = revoke_share
        self.token_share = token_share
        self._subjects: list[_Subject] = []
        self._revocable: list[IssuedGrant] = []
        self._emitted = 0
        self._revocations = 0
        self._notice = Notice(version="2026-01", sha256=hashlib.sha256(NOTICE_TEXT).digest(),
                              url=f"https://{controller}/privacy/2026-01")

    def register(self, operator_key: Ed25519PrivateKey) -> SignedEvent:
        """The operator's admission of this controller's key."""
        event = ControllerRegister(
            controller=self.controller, name="Demo Shop", contact=f"dpo@{self.controller}",
            key=public_bytes(self.key), registered_at=self.clock(),
            policy_url=f"https://{self.controller}/privacy")
        return sign_event(event, operator_key)

    def next_batch(self, n: int) -> Batch:
        """`n` envelopes: controller-signed events under one batch signature, plus tokens."""
        if not 1 <= n <= MAX_BATCH_ITEMS:
            raise ValueError(f"a batch holds 1 to {MAX_BATCH_ITEMS} events")
        # Aim at the share over the whole run, so early batches (nothing to revoke yet)
        # are made up for later.
        due = round(self.revoke_share * (self._emitted + n)) - self._revocations
        revocations = max(0, min(due, n, len(self._revocable)))
        plan = ["revoke"] * revocations + ["grant"] * (n - revocations)
        self.rng.shuffle(plan)
        now = self.clock()
        signed_events: list[Event] = []
        signed_at: list[int] = []  # positions of the controller-signed envelopes
        tokens: dict[int, SignedEvent] = {}
        kinds: list[str] = []
        issued: dict[int, IssuedGrant] = {}
        for pos, what in enumerate(plan):
            if what == "grant":
                grant, token = self._grant(now)
                issued[pos] = IssuedGrant(grant.hash(), token)
                signed_events.append(grant)
                signed_at.append(pos)
                kinds.append("grant")
                continue
            target = self._take_revocable()
            if self.rng.random() < self.token_share:
                revoke = Revoke(controller=self.controller, by="subject", revoked_at=now,
                                grant=target.event_id)
                tokens[pos] = token_revocation(revoke, target.token)
                kinds.append("revoke-token")
            else:
                signed_events.append(Revoke(
                    controller=self.controller, by="controller", revoked_at=now,
                    grant=target.event_id, reason=self.rng.choice(CONTROLLER_REASONS)))
                signed_at.append(pos)
                kinds.append("revoke-controller")
        # One Ed25519 signature covers every controller-signed event of the request.
        batch_signed = sign_batch(signed_events, self.key) if signed_events else []
        by_pos = dict(zip(signed_at, batch_signed, strict=True)) | tokens
        self._emitted += n
        self._revocations += revocations
        return Batch([by_pos[i] for i in range(n)], kinds, issued)

    def record(self, batch: Batch, results: Sequence[SubmitResult]) -> None:
        """Make the batch's accepted grants available for later revocation."""
        for pos, grant in batch.grants.items():
            if isinstance(results[pos], Accepted):
                self._revocable.append(grant)

    def _take_revocable(self) -> IssuedGrant:
        i = self.rng.randrange(len(self._revocable))
        # Swap-remove: O(1), and a grant is never revoked twice.
        self._revocable[i], self._revocable[-1] = self._revocable[-1], self._revocable[i]
        return self._revocable.pop()

    def _subject(self) -> _Subject:
        # Returning customers give further consents under the same commitment.
        if self._subjects and self.rng.random() < 0.3:
            return self.rng.choice(self._subjects)
        ref = f"customer-{self.rng.getrandbits(48):012x}"
        subject = _Subject(subject_commitment(self.controller, ref, new_salt()))
        self._subjects.append(subject)
        return subject

    def _grant(self, now: int) -> tuple[Grant, bytes]:
        rng = self.rng
        chosen = set(rng.choices([p for p in PURPOSES], weights=[p[1] for p in PURPOSES],
                                 k=rng.choice((1, 1, 2, 2, 3))))
        purposes = {p[0] for p in chosen}
        categories = {c for p in chosen for c in rng.sample(p[2], k=rng.randint(1, len(p[2])))}
        if rng.random() < 0.15:
            purposes.add(f"{self.controller}:{rng.choice(OWN_PURPOSES)}")
        jurisdiction, language = rng.choice(LOCALES)
        token = new_token()
        grant = Grant(
            controller=self.controller,
            subject=self._subject().commitment,
            purposes=tuple(sorted(purposes)),
            data_categories=tuple(sorted(categories)),
            legal_basis="dpv:Consent" if rng.random() < 0.8 else "eu-gdpr:A6-1-a",
            notice=self._notice,
            collection_method=rng.choices([m for m, _ in METHODS],
                                          weights=[w for _, w in METHODS])[0],
            jurisdiction=jurisdiction,
            language=language,
            consented_at=now,
            valid_until=now + rng.choice((365, 730)) * DAY_MS,
            retention_days=rng.choice((365, 730, 1095)),
            withdrawal=f"https://{self.controller}/consent",
            token_hash=token_hash(token),
            service=rng.choice(("webshop", "mobile-app", None)),
        )
        return grant, token


# ---------------------------------------------------------------- the run


@dataclasses.dataclass
class DemoReport:
    log_url: str
    origin: str
    log_key_source: str  # "given" or "fetched from GET /v1/keys (trust on first use)"
    controller: str
    controller_key_id: str
    registration: str
    submitted: int = 0
    batches: int = 0
    concurrency: int = 0
    grants: int = 0
    revoked_by_token: int = 0
    revoked_by_controller: int = 0
    duplicates: int = 0
    rejected: Counter[str] = dataclasses.field(default_factory=Counter)
    seconds: float = 0.0
    latencies_ms: list[float] = dataclasses.field(default_factory=list, repr=False)
    inclusion_proven: int = 0
    tree_size: int = 0
    first_size: int = 0
    checkpoint_verified: bool = False
    consistent: bool = False
    sample_verified: int = 0
    sample_total: int = 0

    @property
    def events_per_second(self) -> float:
        return self.submitted / self.seconds if self.seconds > 0 else 0.0

    def latency_ms(self, q: float) -> float:
        """Nearest-rank percentile of per-batch latency."""
        if not self.latencies_ms:
            return 0.0
        ordered = sorted(self.latencies_ms)
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]

    def format(self) -> str:
        rejected = sum(self.rejected.values())
        why = ", ".join(f"{n} {code}" for code, n in self.rejected.most_common())
        ok = "verified" if self.checkpoint_verified else "NOT verified"
        lines = [
            f"consent-ledger demo → {self.log_url}  log {self.origin}",
            f"  log key {self.log_key_source}",
            f"  controller {self.controller} (key {self.controller_key_id}): "
            f"{self.registration}",
            f"  {self.submitted} events in {self.seconds:.2f} s = "
            f"{self.events_per_second:,.0f} events/s ({self.batches} batches, "
            f"{self.concurrency} in flight); latency to a proven receipt per batch "
            f"p50 {self.latency_ms(0.5):.0f} ms, "
            f"p99 {self.latency_ms(0.99):.0f} ms",
            f"  {self.grants} grants, {self.revoked_by_token} withdrawn by token, "
            f"{self.revoked_by_controller} revoked by the controller, "
            f"{self.duplicates} duplicates, {rejected} rejected" + (f" ({why})" if why else ""),
            f"  tree size {self.tree_size}: checkpoint {ok}"
            + (f", consistent with size {self.first_size} seen first" if self.consistent
               else "")
            + f"; {self.inclusion_proven} inclusion proofs checked on submit, "
            f"{self.sample_verified}/{self.sample_total} sampled entries re-proven "
            "in the final checkpoint",
        ]
        return "\n".join(lines)


def _controller_key(path: Path) -> tuple[Ed25519PrivateKey, str]:
    if path.exists():
        return load_private_key(path), f"key file {path}"
    try:
        return generate_key_file(path), f"new key file {path}"
    except KeyFileError:
        # A read-only secrets directory must not stop the demo: an unsaved key only
        # means the next run registers another one.
        return Ed25519PrivateKey.generate(), "unsaved key"


async def _register(client: LogClient, workload: Workload, operator_key: Ed25519PrivateKey
                    ) -> str:
    (result,) = await client.submit([workload.register(operator_key)])
    if isinstance(result, Accepted):
        return f"already registered (entry {result.index})" if result.duplicate \
            else f"registered at entry {result.index}"
    if result.problem.code.endswith("duplicate-key"):
        return "already registered"
    raise DemoError(f"registering the demo controller failed: {result.problem}")


async def run_demo(log_url: str, operator_key_path: str | os.PathLike[str], events: int, *,
                   concurrency: int = 16, batch: int = 100, log_key: str | None = None,
                   controller_key_path: str | os.PathLike[str] | None = None,
                   seed: int | None = None) -> DemoReport:
    """Register the demo controller, then drive `events` events into the log at `log_url`."""
    if events < 1 or concurrency < 1 or not 1 <= batch <= MAX_BATCH_ITEMS:
        raise DemoError(f"need events >= 1, concurrency >= 1 and 1 <= batch <= "
                        f"{MAX_BATCH_ITEMS}")
    operator_key = load_private_key(operator_key_path)
    key_path = Path(controller_key_path) if controller_key_path is not None \
        else Path(operator_key_path).with_name("demo-controller.key")
    controller_key, key_note = _controller_key(key_path)
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=max(32, 4 * concurrency))
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        source = "given"
        if log_key is None:
            log_key = await LogClient.fetch_log_key(log_url, session)
            source = "fetched from GET /v1/keys (trust on first use)"
        client = LogClient(log_url, log_key=log_key, session=session)
        first = await client.checkpoint()
        workload = Workload(DEMO_CONTROLLER, controller_key, rng=random.Random(seed))
        report = DemoReport(
            log_url=log_url, origin=client.origin, log_key_source=source,
            controller=DEMO_CONTROLLER,
            controller_key_id=key_id(public_bytes(controller_key)).hex(),
            registration="", concurrency=concurrency, first_size=first.size)
        report.registration = f"{await _register(client, workload, operator_key)}, {key_note}"
        accepted = await _drive(client, workload, report, events, concurrency, batch)
        final = await client.checkpoint()
        report.checkpoint_verified = True
        await client.consistency(first, final)
        report.consistent = True
        report.tree_size = final.size
        await _resample(client, final, accepted, report, random.Random(seed))
    return report


async def _drive(client: LogClient, workload: Workload, report: DemoReport, events: int,
                 concurrency: int, batch: int) -> list[tuple[int, bytes]]:
    remaining = events
    accepted: list[tuple[int, bytes]] = []

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            n = min(batch, remaining)
            remaining -= n
            # Made just before sending: the node refuses events whose time is skewed.
            b = workload.next_batch(n)
            t0 = time.perf_counter()
            results = await client.submit(b.signed)
            report.latencies_ms.append((time.perf_counter() - t0) * 1000)
            workload.record(b, results)
            _tally(report, b, results, accepted)

    start = time.perf_counter()
    try:
        async with asyncio.TaskGroup() as tg:
            for _ in range(min(concurrency, -(-events // batch))):
                tg.create_task(worker())
    except ExceptionGroup as group:
        # The first failure is the story; the others are its consequences.
        raise group.exceptions[0] from None
    report.seconds = time.perf_counter() - start
    return accepted


def _tally(report: DemoReport, b: Batch, results: Sequence[SubmitResult],
           accepted: list[tuple[int, bytes]]) -> None:
    report.batches += 1
    report.submitted += len(results)
    for kind, result in zip(b.kinds, results, strict=True):
        if isinstance(result, Rejected):
            report.rejected[result.problem.code] += 1
            continue
        report.inclusion_proven += 1
        accepted.append((result.index, result.event_id))
        if result.duplicate:
            report.duplicates += 1
        elif kind == "grant":
            report.grants += 1
        elif kind == "revoke-token":
            report.revoked_by_token += 1
        else:
            report.revoked_by_controller += 1


async def _resample(client: LogClient, final: VerifiedCheckpoint,
                    accepted: list[tuple[int, bytes]], report: DemoReport,
                    rng: random.Random) -> None:
    """Re-prove a sample of entries, fetched afresh, against the final checkpoint."""
    sample = rng.sample(accepted, k=min(SAMPLE_SIZE, len(accepted)))
    report.sample_total = len(sample)
    entries = await asyncio.gather(*(client.entry(index, final) for index, _ in sample))
    for (index, event_id), entry in zip(sample, entries, strict=True):
        if entry.signed.id != event_id:
            raise DemoError(f"entry {index} no longer holds the event accepted there")
        report.sample_verified += 1


# ---------------------------------------------------------------- command line


def _parser() -> Parser:
    p = Parser(prog="consent-ledger demo",
                description="Drive a realistic consent workload into a log and verify it.")
    p.add_argument("--log", required=True, metavar="URL", help="the node's base URL")
    p.add_argument("--operator-key", required=True, metavar="FILE",
                   help="the operator's Ed25519 key (PKCS#8 PEM), to register the demo "
                        "controller")
    p.add_argument("--events", required=True, type=int, metavar="N")
    p.add_argument("--concurrency", type=int, default=16, metavar="C",
                   help="batches in flight (default 16)")
    p.add_argument("--batch", type=int, default=100, metavar="B",
                   help="events per request (default 100)")
    p.add_argument("--log-key", metavar="VKEY",
                   help="the log's note verifier key; without it, GET /v1/keys is trusted "
                        "on first use")
    p.add_argument("--controller-key", metavar="FILE",
                   help="the demo controller's key (default: demo-controller.key next to "
                        "the operator key; created if missing)")
    p.add_argument("--seed", type=int, help="seed of the workload's random choices")
    return p


def demo_main(argv: Sequence[str]) -> int:
    """`consent-ledger demo ...`: 0 on success, 2 on bad usage, 1 on any other error."""

    def body() -> str:
        args = _parser().parse_args(list(argv))
        return asyncio.run(run_demo(
            args.log, args.operator_key, args.events, concurrency=args.concurrency,
            batch=args.batch, log_key=args.log_key, controller_key_path=args.controller_key,
            seed=args.seed)).format()

    return run_command("demo", body)
