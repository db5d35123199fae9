"""Cosigning within the cluster: each member vouches for checkpoints of its own log.

A member cosigns (C2SP tlog-cosignature/v1, with its own key) only a checkpoint that
carries the log's signature and whose root its own stored entries reproduce, never one
smaller than or inconsistent with the last it cosigned (ledger/raft/cosigning.py); the
guard's state is synced before the cosignature leaves, so a restart cannot forget it.
The leader gathers cosignatures in parallel and publishes as soon as a majority of
members (itself included) have answered; stragglers join at the next re-cosigning.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable, Mapping

import msgpack

from ledger.checkpoint import Checkpoint, open_checkpoint
from ledger.cosignature import CosignatureSigner, add_cosignatures
from ledger.errors import LedgerError
from ledger.note import Signature, Verifier, format_signature_line, parse_signature_line
from ledger.raft.cosigning import CosignGuard, CosignRefused
from ledger.tree import MerkleTree
from node.cluster_config import ClusterConfig
from node.peers import COSIGN_PATH, PeerLink
from node.replica_storage import ReplicaStorage

log = logging.getLogger("consent_ledger.cosigning")

GUARD_KEY = "cosign_guard"


class CosignError(Exception):
    """This member will not cosign that checkpoint; the message says why."""


async def load_guard(storage: ReplicaStorage) -> CosignGuard:
    raw = await storage.get_meta(GUARD_KEY)
    if raw is None:
        return CosignGuard()
    size, root = msgpack.unpackb(raw)
    return CosignGuard(int(size), bytes(root))


class Cosigner:
    def __init__(self, *, cluster: ClusterConfig, signer: CosignatureSigner, guard: CosignGuard,
                 storage: ReplicaStorage, tree: Callable[[], MerkleTree],
                 durable_size: Callable[[], int], log_verifier: Verifier,
                 on_checkpoint: Callable[[Checkpoint, bytes], None]) -> None:
        self._cluster = cluster
        self._signer = signer
        self._guard = guard
        self._storage = storage
        self._tree = tree
        self._durable_size = durable_size  # entries on disk: what this member can vouch for
        self._pending: bytes | None = None  # a published checkpoint beyond them, for later
        self._log_verifier = log_verifier
        self._on_checkpoint = on_checkpoint
        self._lock = asyncio.Lock()
        self._announcing: set[asyncio.Future[bytes]] = set()  # requests nobody awaits
        self.latest: bytes | None = None  # the newest published (cosigned) checkpoint
        self._members = {m.id: m.cosigner for m in cluster.members}

    def _announced(self, task: asyncio.Future[bytes]) -> None:
        self._announcing.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: an unreachable member is asked again next round

    @property
    def cosigned_size(self) -> int:
        return self._guard.last_size

    def agrees_with(self, tree: MerkleTree) -> bool:
        """Whether `tree` holds what this member last cosigned (or does not reach it)."""
        return self._guard.agrees_with(tree.size, tree.root)

    # ---------------------------------------------------------------- as a member

    def _open(self, note: bytes) -> Checkpoint:
        try:
            return open_checkpoint(note, self._log_verifier)[0]
        except LedgerError as exc:
            raise CosignError(f"not a checkpoint signed by the log key: {exc}") from None

    async def cosign(self, note: bytes) -> Signature:
        """This member's cosignature of `note`, after checking it against its own tree."""
        checkpoint = self._open(note)
        text = note[:note.index(b"\n\n") + 1]
        async with self._lock:  # check, persist, sign: one at a time
            tree = self._tree()
            before = self._guard.last_size, self._guard.last_root
            try:
                self._guard.check(checkpoint.size, checkpoint.root,
                                  local_size=min(tree.size, self._durable_size()),
                                  local_root_at=tree.root)
            except CosignRefused as exc:
                raise CosignError(str(exc)) from None
            assert self._guard.last_root is not None
            if (self._guard.last_size, self._guard.last_root) != before:  # not a re-cosign
                await self._storage.set_meta(GUARD_KEY, msgpack.packb(
                    [self._guard.last_size, self._guard.last_root]))
        payload = self._signer.sign(text, int(time.time()))
        return Signature(self._signer.name, self._signer.key_id, payload)

    async def handle(self, body: bytes) -> bytes:
        """A cosign request from the leader: {checkpoint, published}; our signature line."""
        try:
            request = msgpack.unpackb(body, raw=False, max_bin_len=1 << 20)
            note, published = request.get("checkpoint"), request.get("published")
            if not all(v is None or isinstance(v, bytes) for v in (note, published)):
                raise TypeError("checkpoint and published must be bytes")
        except (ValueError, TypeError, AttributeError, msgpack.ExtraData) as exc:
            raise CosignError(f"malformed cosign request: {exc}") from None
        if published is not None:
            self.accept_published(published)
        if note is None:
            return b""
        return format_signature_line(await self.cosign(note)).encode()

    def accept_published(self, note: bytes) -> None:
        """Serve a published checkpoint from the leader if it is the log's and our own."""
        try:
            checkpoint = self._open(note)
        except CosignError:
            return
        tree = self._tree()
        if checkpoint.size > min(tree.size, self._durable_size()):
            self._pending = note  # served once its entries are on this member's disk
            return
        if tree.root(checkpoint.size) == checkpoint.root:
            self._on_checkpoint(checkpoint, note)

    def entries_persisted(self) -> None:
        """More entries are on disk: a published checkpoint waiting for them may be served."""
        if self._pending is not None:
            note, self._pending = self._pending, None
            self.accept_published(note)

    # ---------------------------------------------------------------- as the leader

    async def gather(self, note: bytes, links: Mapping[str, PeerLink], *,
                     wait_all: bool = False, timeout: float = 2.0,
                     quorum: int | None = None) -> bytes:
        """`note` with this member's and its peers' cosignatures: a majority, or all.

        Raises CosignError if fewer than a majority answered: such a checkpoint is never
        published, since clients holding the cluster's policy would refuse it."""
        need = quorum if quorum is not None else self._cluster.quorum  # of the voters now
        body = msgpack.packb({"checkpoint": note, "published": self.latest},
                             use_bin_type=True)
        pending = {asyncio.ensure_future(link.post(COSIGN_PATH, body, timeout=timeout)):
                   peer for peer, link in links.items()}
        deadline = time.monotonic() + timeout
        try:
            # Our own cosignature (a guard write, synced) while the peers check theirs:
            # publication waits for the slower of the two, not for their sum.
            lines = [await self.cosign(note)]
            while pending and (wait_all or len(lines) < need):
                done, _ = await asyncio.wait(pending, timeout=deadline - time.monotonic(),
                                             return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    break
                for task in done:
                    peer = pending.pop(task)
                    sig = self._check_reply(peer, note, task)
                    if sig is not None:
                        lines.append(sig)
        finally:
            # Stragglers are not cancelled: a cancelled request closes its connection, so
            # the next one to that member opened another, batch after batch. Their answers
            # are dropped; the next re-cosigning round asks them again.
            for task in pending:
                self._announcing.add(task)  # the loop holds tasks weakly
                task.add_done_callback(self._announced)
        if len(lines) < need:
            raise CosignError(f"{len(lines)} of the {need} cosignatures a checkpoint needs")
        cosigned = add_cosignatures(note, lines)
        self.latest = cosigned
        # Followers serve it at once, not only after the next round asks them to cosign.
        announce = msgpack.packb({"published": cosigned}, use_bin_type=True)
        for link in links.values():
            task = asyncio.ensure_future(link.post(COSIGN_PATH, announce, timeout=timeout))
            self._announcing.add(task)  # the loop holds tasks weakly
            task.add_done_callback(self._announced)
        return cosigned

    def _check_reply(self, peer: str, note: bytes, task: asyncio.Future[bytes]) -> Signature | None:
        if task.cancelled() or task.exception() is not None:
            log.debug("no cosignature", extra={"peer": peer, "error": str(task.exception())})
            return None
        try:
            sig = parse_signature_line(task.result().decode())
        except (LedgerError, UnicodeDecodeError) as exc:
            log.warning("malformed cosignature", extra={"peer": peer, "error": str(exc)})
            return None
        verifier = self._members[peer]
        text = note[:note.index(b"\n\n") + 1]
        if (sig.name, sig.key_id) != (verifier.name, verifier.key_id) \
                or not verifier.verify(text, sig.signature):
            log.warning("a cosignature that does not verify", extra={
                "peer": peer, "signature": base64.b64encode(sig.signature).decode()})
            return None
        return sig
