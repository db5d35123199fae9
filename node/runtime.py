"""The running node's parts, opened in order and closed in reverse."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client.keys import generate_key_file, load_private_key
from ledger.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from ledger.events import Genesis
from ledger.heap import GrowingState, settle_loaded_state
from ledger.note import ALG_ED25519, Ed25519Signer, format_verifier_key, new_verifier
from ledger.signed import public_bytes, sign_event
from ledger.state import LedgerState
from ledger.tree import MerkleTree
from node.config import ConfigError, NodeConfig, make_data_dir
from node.decode_worker import DecodeWorker
from node.local_commit import local_commit
from node.metrics import Metrics
from node.recovery import recover
from node.sequencer import Sequencer
from node.snapshots import Snapshotter
from node.storage import Storage, StorageError
from node.storage_failures import sequence_through_failures
from node.verifier import SignatureVerifier

if TYPE_CHECKING:
    from node.replica import Replica

log = logging.getLogger("consent_ledger.node")


@dataclasses.dataclass
class NodeRuntime:
    config: NodeConfig
    origin: str
    log_vkey: str
    operator_public: bytes
    storage: Storage
    state: LedgerState
    tree: MerkleTree
    sequencer: Sequencer
    verifier: SignatureVerifier
    metrics: Metrics
    replica: Replica | None = None  # set on a cluster member
    decoder: DecodeWorker | None = None  # decodes large bodies and batches off the loop
    # Resolved with an exit status when the node must be restarted (node/serving.py).
    exit_request: asyncio.Future[int] = dataclasses.field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


RUNTIME = web.AppKey("runtime", NodeRuntime)


def key_file(path: os.PathLike[str]) -> Ed25519PrivateKey:
    if not os.path.exists(path):
        generate_key_file(path)
        log.info("created key", extra={"path": str(path)})
    return load_private_key(path)


async def _origin(storage: Storage, config: NodeConfig) -> str:
    stored = await storage.get_meta("origin")
    if stored is not None:
        if config.origin is not None and config.origin != stored.decode():
            raise ConfigError(f"this log's origin is {stored.decode()!r}; "
                              f"it cannot become {config.origin!r}")
        return stored.decode()
    origin = config.origin or f"consent-ledger.local/{os.urandom(4).hex()}"
    await storage.set_meta("origin", origin.encode())
    return origin


async def housekeeping_every(storage: Storage, size: Callable[[], int],
                             seconds: float) -> None:
    """Copy the WAL into the database; keep the ledger's growth out of the collector."""
    growing = GrowingState(size())
    failing = False
    while True:
        await asyncio.sleep(seconds)  # a timer, not synchronisation
        growing.grew_to(size())
        try:
            await storage.checkpoint_wal()
        except Exception:  # a failed checkpoint loses nothing: the WAL still holds it all
            if not failing:  # once a spell: a full disk would fail it every second
                log.exception("WAL checkpoint failed; tried again each second, and logged "
                              "once it works")
            failing = True
        else:
            if failing:
                log.info("WAL checkpoint works again")
            failing = False


async def stop_sequencing(sequencer: Sequencer, task: asyncio.Task[None],
                          wal_task: asyncio.Task[None], *, timeout: float) -> None:
    """Stop the WAL timer, finish the batch in flight (for at most `timeout` seconds)."""
    wal_task.cancel()
    await asyncio.gather(wal_task, return_exceptions=True)
    await sequencer.drain()
    if not sequencer.healthy:  # nothing in flight: it waits for a failed disk
        task.cancel()
    try:
        await asyncio.wait_for(task, timeout=timeout)
    except (TimeoutError, asyncio.CancelledError):
        task.cancel()


@contextlib.asynccontextmanager
async def open_runtime(config: NodeConfig) -> AsyncIterator[NodeRuntime]:
    """Open storage, verify it, start the sequencer; on exit, finish the batch in flight."""
    if config.cluster_file is not None:
        from node.cluster_runtime import open_cluster_runtime

        async with open_cluster_runtime(config) as runtime:
            yield runtime
        return
    make_data_dir(config.data_dir)
    storage = await Storage.open(config.db_path)
    verifier = SignatureVerifier(config.verify_threads)
    try:
        if not os.path.exists(config.log_key_path) and await storage.get_meta("origin"):
            # A new key could never sign this log's next checkpoint consistently with
            # what clients hold: refuse rather than create one.
            raise ConfigError(f"the log key {config.log_key_path} is missing, and this log's "
                              "checkpoints are signed by it: restore it from a backup")
        log_key = key_file(config.log_key_path)
        origin = await _origin(storage, config)
        signer = Ed25519Signer.from_private_key(origin, log_key)
        log_vkey = format_verifier_key(origin, ALG_ED25519, public_bytes(log_key))
        verifier_of_log = new_verifier(log_vkey)

        def open_note(note: bytes) -> Checkpoint:
            return open_checkpoint(note, verifier_of_log)[0]

        state, tree, checkpoint = await recover(storage, open_note)
        settle_loaded_state()
        genesis = None
        if state.size == 0:
            # The operator key is needed once, here; after genesis it may live offline.
            operator_key = key_file(config.operator_key_path)
            genesis = sign_event(Genesis(origin=origin, operator_key=public_bytes(operator_key),
                                         created_at=time.time_ns() // 1_000_000,
                                         max_skew_ms=config.max_skew_ms), operator_key)
            operator_public = public_bytes(operator_key)
        else:
            assert state.operator_key_id is not None  # genesis is entry 0
            operator_public = state.keys[state.operator_key_id].public_key
        metrics = Metrics(tree_size=tree.size)
        snapshots = Snapshotter(storage, every=config.snapshot_every,
                                nice=config.snapshot_nice, quiet_ms=config.snapshot_quiet_ms)
        sequencer = Sequencer(
            state=state, tree=tree,
            commit=local_commit(storage, lambda: rt.tree, origin,
                                lambda cp: sign_checkpoint(cp, signer), snapshots=snapshots),
            checkpoint=checkpoint or sign_checkpoint(Checkpoint(origin, 0, tree.root()), signer),
            metrics=metrics, max_queue=config.max_queue,
            max_commit_entries=config.max_commit_entries,
        )
        rt = NodeRuntime(config, origin, log_vkey, operator_public, storage, state, tree,
                         sequencer, verifier, metrics)

        async def reload() -> tuple[LedgerState, MerkleTree, bytes]:
            state, tree, checkpoint = await recover(storage, open_note)
            if checkpoint is None:
                raise StorageError("the reloaded log has no checkpoint")
            return state, tree, checkpoint

        def on_resumed(state: LedgerState, tree: MerkleTree) -> None:
            rt.state, rt.tree = state, tree
            metrics.storage_recoveries += 1

        task = asyncio.create_task(sequence_through_failures(
            sequencer, probe=storage.probe_write, reload=reload, on_resumed=on_resumed),
            name="sequencer")
        wal_task = asyncio.create_task(
            housekeeping_every(storage, lambda: rt.state.size, 1.0), name="housekeeping")
        try:
            if genesis is not None:
                await sequencer.submit([(genesis, False)])
                log.info("created log", extra={"origin": origin})
            rt.decoder = await DecodeWorker.start(
                metrics.count_decoded, metrics.count_decode_process_restart) \
                if config.decode_process else None
            try:
                yield rt
            finally:
                if rt.decoder is not None:
                    await rt.decoder.close()
        finally:
            await stop_sequencing(sequencer, task, wal_task, timeout=30)
            await snapshots.close()  # a build in progress is stopped: a cache, not the log
    finally:
        verifier.close()
        await storage.close()
