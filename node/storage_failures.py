"""What a node does when its disk stops taking writes: a full disk, an I/O error.

A single node keeps sequencing through it. A commit that fails leaves the database as
it was before the batch (SQLite rolls the transaction back), but memory holds the
batch, so the sequencer stops taking writes: they get 503 with Retry-After and /readyz
is unready, while reads go on being served from what was committed. Nobody has to
restart the node once the disk is fixed: it tries a small synced write now and then,
and once the disk takes it, reloads the ledger from disk exactly as a start-up does
(every entry checked) and resumes. Tries back off from RETRY_S[0] to RETRY_S[1]
seconds, so a disk that stays full costs one small write every half minute, and a
reload only once it takes writes again.

A cluster member that cannot persist stops taking part in Raft (node/replica.py) and the
others go on without it. Its Raft state and ledger are reloaded by a start-up, so it
waits the same way for the disk and then exits with EXIT_RESTART, for its supervisor
(systemd's Restart=on-failure in deploy/) to start it again: not before, or a full disk
would make it restart in a loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ledger.state import LedgerState
from ledger.tree import MerkleTree
from node.backoff import Backoff
from node.sequencer import Sequencer

log = logging.getLogger("consent_ledger.storage")

RETRY_S = (1.0, 30.0)
EXIT_RESTART = 75  # EX_TEMPFAIL: start me again
# A failure this soon after resuming continues the back-off instead of starting over,
# so that a disk with room for the probe but not for a batch is not reloaded every second.
_SETTLED_S = 60.0

Ledger = tuple[LedgerState, MerkleTree, bytes]
T = TypeVar("T")


async def sequence_through_failures(
    sequencer: Sequencer, *, probe: Callable[[], Awaitable[None]],
    reload: Callable[[], Awaitable[Ledger]],
    on_resumed: Callable[[LedgerState, MerkleTree], None],
) -> None:
    """Run the sequencer until it is drained, resuming it after each storage failure.

    `probe` makes one small synced write; `reload` returns state, tree and checkpoint
    from disk; `on_resumed` hands the reloaded ledger to the readers."""
    backoff = Backoff(*RETRY_S, settled_s=_SETTLED_S)
    while True:
        await sequencer.run()
        if sequencer.healthy:
            return  # drained: the node is stopping
        failed_at = time.monotonic()
        delay = backoff.failed()
        log.error("writes suspended after a storage failure; retrying",
                  extra={"error": str(sequencer.failure), "retry_in_s": delay})

        async def resume_from_disk() -> Ledger:
            await probe()
            state, tree, checkpoint = await reload()
            sequencer.resume(state, tree, checkpoint)
            return state, tree, checkpoint

        state, tree, _ = await _retry(resume_from_disk, delay, backoff)
        on_resumed(state, tree)
        backoff.working()
        log.info("writes resumed", extra={
            "size": tree.size, "seconds": round(time.monotonic() - failed_at, 1)})


async def restart_once_disk_recovers(stopped: asyncio.Event,
                                     probe: Callable[[], Awaitable[None]],
                                     request_exit: Callable[[int], None]) -> None:
    """A cluster member: once `stopped` is set (replication stopped on a failure), wait
    until the disk takes a small synced write, then ask to exit with EXIT_RESTART."""
    await stopped.wait()
    backoff = Backoff(*RETRY_S, settled_s=_SETTLED_S)
    await _retry(probe, backoff.failed(), backoff)
    log.error("the disk takes writes again: exiting, to be restarted and reload the log "
              "from disk", extra={"exit_code": EXIT_RESTART})
    request_exit(EXIT_RESTART)


async def _retry(attempt: Callable[[], Awaitable[T]], delay: float, backoff: Backoff) -> T:
    """`attempt()`'s result once it works, tried after `delay` seconds, then after each
    pause `backoff` gives."""
    while True:
        await asyncio.sleep(delay)  # a retry timer: the disk gives no signal to wait on
        try:
            return await attempt()
        except Exception as exc:  # whatever fails, the next try may work
            delay = backoff.failed()
            log.warning("storage still failing", extra={"error": str(exc),
                                                        "retry_in_s": delay})
