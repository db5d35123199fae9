"""The sequencer: admits events in order and group-commits them with a checkpoint.

Submissions wait in a bounded queue; one task drains it, runs the state machine's
checks on each event in order, appends the admitted ones to the tree, signs one
checkpoint for the whole batch and commits everything in one SQLite transaction. Only
then are the submitters' futures resolved: an acknowledged event is on disk, and the
reply carries a signed checkpoint that covers it (publication latency = one commit).

While one batch commits, the next one fills: batching grows with load by itself. With
`max_in_flight` above 1 (a cluster, where a commit waits for followers to re-verify the
batch) the next batch is also admitted while earlier ones commit; replies still go out in
order, each once its own batch and every earlier one are durable. Status readers need
the status map to be exactly the one the served checkpoint commits to: while one waits,
no new batch starts (`map_as_published`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from ledger.errors import OversizeError, RejectedError, SignatureError
from ledger.events import StatusRoot
from ledger.signed import SignedEvent, log_authored
from ledger.state import LedgerState
from ledger.tree import MerkleTree
from node.metrics import Metrics

log = logging.getLogger("consent_ledger.sequencer")


class OverloadedError(Exception):
    """The queue is full; the client should retry after `retry_after` seconds."""

    def __init__(self, retry_after: int) -> None:
        self.retry_after = retry_after
        super().__init__(f"the write queue is full; retry in {retry_after} s")


class UnavailableError(Exception):
    """The node cannot sequence (storage failed, or it is shutting down)."""


@dataclasses.dataclass(frozen=True)
class Accepted:
    index: int
    event_id: bytes
    leaf_hash: bytes
    duplicate: bool


Outcome = Accepted | RejectedError

# Events admitted between two turns of the event loop: a batch of 1,000 would otherwise
# hold it for some 50 ms.
ADMIT_CHUNK = 200

# Makes a batch durable: given its (index, event id, leaf, entry bytes) rows and the tree
# sizes before and after it, returns the checkpoint note that publishes it. On one node
# that is one SQLite transaction (node/local_commit.py); in a cluster, replication to a
# majority and cosigning (node/replica.py). UnavailableError: the batch is not known to
# be committed (e.g. leadership was lost), and the sequencer's state must be reloaded.
CommitBatch = Callable[[list[tuple[int, bytes, bytes, bytes]], int, int], Awaitable[bytes]]


class _Submission:
    """One request's events: a single future for all of them, resolved in their order
    once every one is settled (one wake-up per request, not one per event)."""

    __slots__ = ("future", "left", "outcomes")

    def __init__(self, size: int) -> None:
        self.future: asyncio.Future[list[Outcome]] = asyncio.get_running_loop().create_future()
        self.outcomes: list[Outcome | None] = [None] * size
        self.left = size

    def settle(self, slot: int, outcome: Outcome) -> None:
        if self.future.done():
            return
        self.outcomes[slot] = outcome
        self.left -= 1
        if not self.left:
            self.future.set_result(self.outcomes)  # type: ignore[arg-type]  # all set now

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


@dataclasses.dataclass
class _Pending:
    signed: SignedEvent
    verified: bool
    submission: _Submission
    slot: int
    queued_at: float


class Sequencer:
    def __init__(
        self,
        *,
        state: LedgerState,
        tree: MerkleTree,
        commit: CommitBatch,
        checkpoint: bytes,
        metrics: Metrics,
        max_queue: int,
        max_commit_entries: int,
        max_in_flight: int = 1,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        may_sequence: Callable[[], bool] = lambda: True,
    ) -> None:
        self._state = state
        self._epoch = 0  # counts reset(): a batch admitted before one is never committed
        # A cluster member sequences only while it leads: what it admitted otherwise would
        # put its ledger in memory ahead of its log, under its new leader's batches.
        self._may_sequence = may_sequence
        self._tree = tree
        self._commit = commit
        self._metrics = metrics
        self._max_queue = max_queue
        self._max_commit = max_commit_entries
        self._clock_ms = clock_ms
        self._queue: deque[_Pending] = deque()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._failed: BaseException | None = None
        self.committed_size = tree.size
        self.checkpoint = checkpoint
        self._size_waiters: list[tuple[int, asyncio.Future[None]]] = []
        # Set while the status map is the one the latest checkpoint commits to.
        self._map_stable = asyncio.Event()
        self._map_stable.set()
        self._max_in_flight = max_in_flight
        # One task per sequenced batch, oldest first: each resolves its submitters once its
        # commit and every earlier batch's have settled.
        self._in_flight: deque[asyncio.Future[None]] = deque()
        self._map_readers = 0
        self._readers_gone = asyncio.Event()

    # ---------------------------------------------------------------- submitting

    @property
    def full(self) -> bool:
        """No room for more: refuse a request before spending CPU on its body."""
        return len(self._queue) >= self._max_queue

    def submit(self, items: Sequence[tuple[SignedEvent, bool]]
               ) -> asyncio.Future[list[Outcome]]:
        """Queue (event, signature already verified) pairs; the future gives their
        outcomes, in order, once every one is durable (or refused)."""
        if self._failed is not None:
            raise UnavailableError(self.why_suspended)
        if self._closing:
            raise UnavailableError("the node is not accepting writes")
        if len(self._queue) + len(items) > self._max_queue:
            self._metrics.overloaded += 1
            raise OverloadedError(retry_after=1)
        now = time.perf_counter()
        submission = _Submission(len(items))
        self._queue.extend(_Pending(signed, verified, submission, slot, now)
                           for slot, (signed, verified) in enumerate(items))
        self._metrics.queue_depth = len(self._queue)
        self._wakeup.set()
        return submission.future

    def reset(self, state: LedgerState, tree: MerkleTree) -> None:
        """Sequence onto a ledger brought back to what the log holds (a cluster member
        after a truncation, or after losing its leadership: reloaded from disk, or the
        same state rolled back).

        A batch admitted before, and not yet handed to `commit`, is dropped (its
        submitters are told to retry), never committed on top of the ledger now."""
        self._state, self._tree = state, tree
        self._epoch += 1

    @contextlib.asynccontextmanager
    async def map_as_published(self) -> AsyncIterator[None]:
        """Hold new batches off until the status map is the one the served checkpoint
        commits to; the caller reads map, tree and checkpoint without awaiting."""
        self._map_readers += 1
        try:
            while not self._map_stable.is_set():
                await self._map_stable.wait()
            yield
        finally:
            self._map_readers -= 1
            if not self._map_readers:
                self._readers_gone.set()

    def published(self, size: int, checkpoint: bytes) -> None:
        """A newer (or newly cosigned) checkpoint to serve, published by the cluster."""
        if size >= self.committed_size:
            self.committed_size, self.checkpoint = size, checkpoint
            self._wake_size_waiters()

    async def wait_for_size(self, size: int, timeout: float) -> bool:
        """Whether the served log reaches `size` within `timeout` seconds.

        A cluster member can be a moment behind the leader whose checkpoint a client just
        received (through this member); waiting here gives it read-your-writes."""
        if self.committed_size >= size:
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._size_waiters.append((size, waiter))
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except TimeoutError:
            pass
        finally:
            if (size, waiter) in self._size_waiters:
                self._size_waiters.remove((size, waiter))
        return self.committed_size >= size

    def _wake_size_waiters(self) -> None:
        for size, waiter in self._size_waiters:
            if size <= self.committed_size and not waiter.done():
                waiter.set_result(None)

    @property
    def healthy(self) -> bool:
        return self._failed is None

    @property
    def failure(self) -> BaseException | None:
        """Why the sequencer stopped taking writes (a storage failure), or None."""
        return self._failed

    @property
    def why_suspended(self) -> str:
        """What writers and readiness probes are told while writes are suspended."""
        return (f"writes are suspended after a storage failure ({self._failed}); they "
                "resume once the disk takes them again")

    def resume(self, state: LedgerState, tree: MerkleTree, checkpoint: bytes) -> None:
        """Take writes again after a storage failure, onto the ledger reloaded from disk
        and its checkpoint (memory held the batch that failed); then run `run()` again.

        The disk may hold that batch after all (a commit can fail after its data went
        down): its writers were told to retry, and a retry finds their events logged."""
        if self._failed is None or self._in_flight:
            raise RuntimeError("resume() is for a sequencer stopped by a failure")
        if tree.size < self.committed_size or state.size != tree.size:
            raise RuntimeError(f"the reloaded ledger holds {tree.size} entries, fewer "
                               f"than the {self.committed_size} acknowledged")
        self.reset(state, tree)
        self.committed_size, self.checkpoint = tree.size, checkpoint
        self._failed = None

    # ---------------------------------------------------------------- the loop

    async def run(self) -> None:
        try:
            while True:
                if self._failed is not None:
                    raise self._failed
                if not self._queue:
                    if self._closing:
                        while self._in_flight:
                            await asyncio.wait([self._in_flight[-1]])
                        if self._failed is not None:
                            raise self._failed
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                await self._sequence_one_batch()
        except asyncio.CancelledError:
            self._fail_pending(UnavailableError("the node is shutting down"))
            for task in self._in_flight:
                task.cancel()
            raise
        except BaseException as exc:
            # State is now ahead of disk: stop taking writes until the ledger is reloaded
            # from disk (node/storage_failures.py: on one node in place, a cluster member restarts).
            if exc is not self._failed:
                log.exception("sequencer stopped: storage failure")
            self._failed = exc
            self._metrics.storage_failures += 1
            self._map_stable.set()  # release status readers: they see `healthy` is false
            self._fail_pending(UnavailableError(f"storage failure: {exc}"))

    async def drain(self) -> None:
        """Stop taking new writes; the caller then awaits run() to finish the queue."""
        self._closing = True
        self._wakeup.set()

    def _fail_pending(self, exc: BaseException) -> None:
        while self._queue:
            self._queue.popleft().submission.fail(exc)

    async def _sequence_one_batch(self) -> None:
        if self._map_readers:
            # A status reader waits for the map to match the checkpoint: let the batches in
            # flight land and the reader read before the map moves on.
            while self._in_flight:
                await asyncio.wait([self._in_flight[-1]])
            while self._map_readers:
                self._readers_gone.clear()
                await self._readers_gone.wait()
            if not self._queue:
                return
        if not self._may_sequence():
            self._fail_pending(UnavailableError("this member no longer leads the cluster; "
                                                "retry: writes are idempotent"))
            return
        state, tree, epoch = self._state, self._tree, self._epoch
        old_size = tree.size
        now = max(self._clock_ms(), state.last_time)  # a clock stepped back must not show
        taken: list[tuple[_Pending, Outcome]] = []
        rows: list[tuple[int, bytes, bytes, bytes]] = []
        self._map_stable.clear()  # statuses move as events are admitted
        while self._queue and len(rows) < self._max_commit:
            p = self._queue.popleft()
            outcome: Outcome
            existing = state.index_of(p.signed.id)
            if existing is not None:
                outcome = Accepted(existing, p.signed.id, tree.hash_at(0, existing), True)
            else:
                try:
                    entry = state.admit(p.signed, now, signature_verified=p.verified)
                except RejectedError as exc:
                    outcome = exc
                except SignatureError as exc:
                    outcome = RejectedError("bad-signature", str(exc))
                except OversizeError as exc:
                    outcome = RejectedError("too-large", str(exc))
                else:
                    tree.append(entry.leaf_hash)
                    rows.append((entry.index, p.signed.id, entry.leaf_hash, entry.encoded))
                    outcome = Accepted(entry.index, p.signed.id, entry.leaf_hash, False)
            taken.append((p, outcome))
            if len(taken) % ADMIT_CHUNK == 0:
                await asyncio.sleep(0)  # requests, replication and replies in between
                if self._epoch != epoch:  # the ledger went back meanwhile: this batch too
                    retry = UnavailableError("the ledger was brought back to its log while "
                                             "this write was admitted; retry: writes are "
                                             "idempotent")
                    for p, _ in taken:
                        p.submission.fail(retry)
                    if not self._in_flight:
                        self._map_stable.set()
                    return
                if not self._may_sequence():
                    break  # what was taken fails at its commit; the rest at the next batch
        self._metrics.queue_depth = len(self._queue)
        commit: asyncio.Future[bytes] | None = None
        if rows:
            # Every batch ends with the log's own status root, so the last entry of every
            # checkpoint commits to the status map over all entries before it.
            root = state.admit(log_authored(StatusRoot(size=state.size,
                                                       map_root=state.map_root())),
                               now, signature_verified=True)
            tree.append(root.leaf_hash)
            rows.append((root.index, root.signed.id, root.leaf_hash, root.encoded))
            commit = asyncio.ensure_future(self._commit_onto(epoch, rows, old_size, tree.size))
        previous = self._in_flight[-1] if self._in_flight else None
        self._in_flight.append(asyncio.ensure_future(self._settle(
            commit, previous, taken, len(rows), tree.size, time.perf_counter())))
        # Let the commit start (a cluster proposes and sends it) before admitting more.
        await asyncio.sleep(0)
        while len(self._in_flight) >= self._max_in_flight:
            await asyncio.wait([self._in_flight[0]])

    async def _commit_onto(self, epoch: int, rows: list[tuple[int, bytes, bytes, bytes]],
                           old_size: int, new_size: int) -> bytes:
        if epoch != self._epoch:
            raise UnavailableError("the ledger was brought back to its log while this batch "
                                   "waited to be committed; retry: writes are idempotent")
        return await self._commit(rows, old_size, new_size)

    async def _settle(self, commit: asyncio.Future[bytes] | None,
                      previous: asyncio.Future[None] | None,
                      taken: list[tuple[_Pending, Outcome]], count: int, new_size: int,
                      started: float) -> None:
        """Answer one batch's submitters, in order: after every earlier batch has settled
        (a duplicate may point into one of them) and its own commit is durable."""
        try:
            if previous is not None:
                await asyncio.wait([previous])
            failure: BaseException | None = None
            note = None
            if commit is not None:
                try:
                    note = await commit
                except BaseException as exc:  # every failure is answered to its submitters
                    failure = exc
            if failure is None and self._failed is not None:
                failure = UnavailableError("an earlier batch failed to commit")
            if failure is not None:
                answer = failure if isinstance(failure, UnavailableError) else \
                    UnavailableError(f"storage failure: {failure}")
                for p, _ in taken:
                    p.submission.fail(answer)
                if not isinstance(failure, UnavailableError) and self._failed is None:
                    # State is now ahead of disk: stop; a restart recovers from disk.
                    log.error("sequencer stopped: storage failure", exc_info=failure)
                    self._failed = failure
                    self._wakeup.set()
                return
            if note is not None:
                self.committed_size = new_size
                self.checkpoint = note
                self._wake_size_waiters()
                self._metrics.observe_commit(count, time.perf_counter() - started, new_size)
            done = time.perf_counter()
            for p, outcome in taken:
                self._metrics.observe_latency(done - p.queued_at)
                p.submission.settle(p.slot, outcome)
        finally:
            self._in_flight.popleft()
            if not self._in_flight:
                self._map_stable.set()
