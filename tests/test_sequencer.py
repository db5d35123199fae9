"""The sequencer of a cluster member admits nothing while the member does not lead: what
it admitted would put its ledger in memory ahead of its log, under the batches its new
leader sends."""

from __future__ import annotations

import asyncio

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from factories import grant

from ledger.signed import sign_event
from ledger.state import LedgerState
from ledger.tree import MerkleTree
from node.metrics import Metrics
from node.sequencer import Sequencer, UnavailableError


async def test_a_member_that_no_longer_leads_admits_nothing() -> None:
    leads = True
    committed: list[int] = []

    async def commit(rows: list[tuple[int, bytes, bytes, bytes]], old: int, new: int) -> bytes:
        committed.append(new)
        return b""

    state, tree = LedgerState(), MerkleTree()
    sequencer = Sequencer(state=state, tree=tree, commit=commit, checkpoint=b"",
                          metrics=Metrics(), max_queue=100, max_commit_entries=100,
                          may_sequence=lambda: leads)
    runner = asyncio.create_task(sequencer.run())
    try:
        leads = False
        event = sign_event(grant(), Ed25519PrivateKey.generate())
        with pytest.raises(UnavailableError, match="no longer leads"):
            await sequencer.submit([(event, False)])
        assert (state.size, tree.size, committed) == (0, 0, [])
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
