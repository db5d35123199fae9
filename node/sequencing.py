"""A single node keeps sequencing through storage failures: a full disk, an I/O error.

A commit that fails leaves the database as it was before the batch (SQLite rolls the
transaction back), but memory holds the batch, so the sequencer stops taking writes:
they get 503 with Retry-After and /readyz is unready, while reads go on being served
from what was committed. Nobody has to restart the node once the disk is fixed: this
loop tries a small synced write now and then, and once the disk takes it, reloads the
ledger from disk exactly as a start-up does (every entry checked) and resumes. Tries
back off from RETRY_S[0] to RETRY_S[1] seconds, so a disk that stays full costs one
small write every half minute, and a reload only once it takes writes again.

A cluster member does not do this: a member that cannot persist stops taking part in
Raft (node/replica.py) and the others go on without it until it is restarted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from ledger.state import LedgerState
from ledger.tree import MerkleTree
from node.sequencer import Sequencer

log = logging.getLogger("consent_ledger.sequencing")

RETRY_S = (1.0, 30.0)
# A failure this soon after resuming continues the back-off instead of starting over,
# so that a disk with room for the probe but not for a batch is not reloaded every second.
_SETTLED_S = 60.0

Ledger = tuple[LedgerState, MerkleTree, bytes]


async def sequence_through_failures(
    sequencer: Sequencer, *, probe: Callable[[], Awaitable[None]],
    reload: Callable[[], Awaitable[Ledger]],
    on_resumed: Callable[[LedgerState, MerkleTree], None],
) -> None:
    """Run the sequencer until it is drained, resuming it after each storage failure.

    `probe` makes one small synced write; `reload` returns state, tree and checkpoint
    from disk; `on_resumed` hands the reloaded ledger to the readers."""
    delay, resumed_at = RETRY_S[0], -_SETTLED_S
    while True:
        await sequencer.run()
        if sequencer.healthy:
            return  # drained: the node is stopping
        failed_at = time.monotonic()
        if failed_at - resumed_at > _SETTLED_S:
            delay = RETRY_S[0]
        log.error("writes suspended after a storage failure; retrying",
                  extra={"error": str(sequencer.failure), "retry_in_s": delay})
        while True:
            await asyncio.sleep(delay)  # a retry timer: the disk gives no signal to wait on
            try:
                await probe()
                state, tree, checkpoint = await reload()
                sequencer.resume(state, tree, checkpoint)
            except Exception as exc:  # whatever fails, the next try may work
                delay = min(2 * delay, RETRY_S[1])
                log.warning("storage still failing", extra={"error": str(exc),
                                                            "retry_in_s": delay})
                continue
            break
        on_resumed(state, tree)
        resumed_at = time.monotonic()
        log.info("writes resumed", extra={"size": tree.size,
                                          "seconds": round(resumed_at - failed_at, 1)})
