"""A cluster member's parts: the node's runtime with a Raft replica as its durability."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from client.keys import load_private_key
from ledger.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from ledger.cosignature import CosignatureSigner
from ledger.heap import settle_loaded_state
from ledger.note import (
    ALG_ED25519,
    Ed25519Signer,
    RememberingVerifier,
    format_verifier_key,
    new_verifier,
)
from ledger.signed import public_bytes
from node.cluster_config import load_cluster
from node.config import ConfigError, NodeConfig, make_data_dir
from node.cosigning import Cosigner, load_guard
from node.decode_worker import DecodeWorker
from node.metrics import Metrics
from node.recovery import recover
from node.replica import Replica, restore_raft
from node.replica_storage import ReplicaStorage
from node.runtime import NodeRuntime, housekeeping_every, stop_sequencing
from node.sequencer import Sequencer
from node.snapshots import Snapshotter
from node.storage_failures import restart_once_disk_recovers
from node.verifier import SignatureVerifier

log = logging.getLogger("consent_ledger.node")

CLUSTER_MAX_BATCH = 1000
# A commit waits for the followers to re-verify the batch: meanwhile the leader admits the
# next ones. Measured with bench.bench_cluster (BENCHMARKS.md).
CLUSTER_IN_FLIGHT = 3


@contextlib.asynccontextmanager
async def open_cluster_runtime(config: NodeConfig) -> AsyncIterator[NodeRuntime]:
    assert config.cluster_file is not None and config.member is not None
    cluster = load_cluster(config.cluster_file)
    member = cluster.member(config.member)
    # Keys are never created here: a member with a fresh log key would be another log.
    log_key = load_private_key(config.log_key_path)
    log_vkey = format_verifier_key(cluster.origin, ALG_ED25519, public_bytes(log_key))
    if log_vkey != cluster.log_key:
        raise ConfigError(f"{config.log_key_path} is not the log key the cluster file names")
    node_key = load_private_key(config.node_key_path)
    if public_bytes(node_key) != member.public_key:
        raise ConfigError(f"{config.node_key_path} is not the key the cluster file pins "
                          f"for member {member.id}")
    make_data_dir(config.data_dir)
    storage = await ReplicaStorage.open(config.db_path)
    verifier = SignatureVerifier(config.verify_threads)
    replica: Replica | None = None
    snapshots: Snapshotter | None = None
    decoder: DecodeWorker | None = None
    try:
        await storage.open_raft()
        stored = await storage.get_meta("origin")
        if stored is None:
            await storage.set_meta("origin", cluster.origin.encode())
        elif stored.decode() != cluster.origin:
            raise ConfigError(f"this database holds the log {stored.decode()!r}, "
                              f"not the cluster's {cluster.origin!r}")
        signer = Ed25519Signer.from_private_key(cluster.origin, log_key)
        # Members open the same checkpoints again and again (cosigning, publishing, each
        # re-cosigning): each signature is checked once.
        log_verifier = RememberingVerifier(new_verifier(log_vkey))
        state, tree, checkpoint = await recover(
            storage, lambda note: open_checkpoint(note, log_verifier)[0],
            uncommitted_tail=True)
        settle_loaded_state()
        published = 0 if checkpoint is None else open_checkpoint(checkpoint, log_verifier)[0].size
        raft, ends = restore_raft(member.id, cluster, await storage.hard_state(),
                                  await storage.raft_rows(), await storage.raft_snapshot())
        metrics = Metrics(tree_size=published)
        holder: list[Replica] = []

        async def commit(rows: list[tuple[int, bytes, bytes, bytes]], old: int,
                         new: int) -> bytes:
            return await holder[0].commit_batch(rows, old, new)

        sequencer = Sequencer(
            state=state, tree=tree, commit=commit,
            checkpoint=checkpoint or sign_checkpoint(Checkpoint(cluster.origin, 0,
                                                                tree.root(0)), signer),
            metrics=metrics, max_queue=config.max_queue,
            # Each member re-verifies a batch in one go on its event loop: smaller batches
            # keep its heartbeats and votes flowing under load.
            max_commit_entries=min(config.max_commit_entries, CLUSTER_MAX_BATCH),
            max_in_flight=CLUSTER_IN_FLIGHT,
            may_sequence=lambda: bool(holder) and holder[0].is_leader
            and not holder[0].raft.transferring)
        sequencer.committed_size = published
        operator = state.keys[state.operator_key_id].public_key \
            if state.operator_key_id is not None else b""
        # The leader decodes request bodies in it, the followers the leader's batches.
        decoder = await DecodeWorker.start(
            metrics.count_decoded, metrics.count_decode_process_restart) \
            if config.decode_process else None
        rt = NodeRuntime(config, cluster.origin, log_vkey, operator, storage, state, tree,
                         sequencer, verifier, metrics, decoder=decoder)

        def on_checkpoint(cp: Checkpoint, note: bytes) -> None:
            if cp.size >= sequencer.committed_size:
                sequencer.published(cp.size, note)
                if holder:
                    holder[0].keep_checkpoint(cp.size, note)

        cosigner = Cosigner(
            cluster=cluster,
            signer=CosignatureSigner.from_private_key(
                cluster.member(member.id).cosigner.name, node_key),
            guard=await load_guard(storage), storage=storage, tree=lambda: rt.tree,
            durable_size=lambda: holder[0].durable_size if holder else 0,
            log_verifier=log_verifier, on_checkpoint=on_checkpoint)
        # Each member's first snapshot comes at its own size: one at a time, not all.
        position = [m.id for m in cluster.members].index(member.id)
        snapshots = Snapshotter(
            storage, every=config.snapshot_every,
            offset=config.snapshot_every * position // len(cluster.members),
            hold=lambda: bool(holder) and holder[0].is_leader, nice=config.snapshot_nice)
        replica = Replica(rt=rt, cluster=cluster, member=member.id, node_key=node_key,
                          storage=storage, raft=raft, ends=ends, log_signer=signer,
                          log_verifier=log_verifier, cosigner=cosigner,
                          published_size=published, snapshots=snapshots)
        holder.append(replica)
        rt.replica = replica
        await replica.start()
        task = asyncio.create_task(sequencer.run(), name="sequencer")
        wal_task = asyncio.create_task(
            housekeeping_every(storage, lambda: rt.state.size, 1.0), name="housekeeping")

        def request_exit(code: int) -> None:
            if not rt.exit_request.done():
                rt.exit_request.set_result(code)

        restarter = asyncio.create_task(restart_once_disk_recovers(
            replica.stopped, storage.probe_write, request_exit), name="restart-on-failure")
        try:
            yield rt
        finally:
            restarter.cancel()
            await asyncio.gather(restarter, return_exceptions=True)
            # A batch waits on a majority that may be shutting down too: wait less.
            await stop_sequencing(sequencer, task, wal_task, timeout=10)
    finally:
        if replica is not None:
            await replica.close()
        if decoder is not None:
            await decoder.close()
        if snapshots is not None:
            await snapshots.close()  # a build in progress is stopped: a cache, not the log
        verifier.close()
        await storage.close()
