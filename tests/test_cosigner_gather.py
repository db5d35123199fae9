"""Cosigner.gather: a checkpoint is published with a majority of cosignatures or not at all.

Real storage (a SQLite file) and real peers on loopback that are not listening: the
connection is refused, as it is for a member that was just killed."""

import socket
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.checkpoint import Checkpoint, sign_checkpoint
from ledger.cosignature import CosignatureSigner, cosigner_verifier_key
from ledger.note import ALG_ED25519, Ed25519Signer, format_verifier_key, new_verifier
from ledger.tree import MerkleTree
from node.cluster_config import ClusterConfig, Member
from node.cosigning import Cosigner, CosignError, load_guard
from node.peers import PeerLink
from node.replica_storage import ReplicaStorage

ORIGIN = "gather.example/log"


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_without_a_majority_nothing_is_published(tmp_path: Path) -> None:
    log_key = Ed25519PrivateKey.generate()
    keys = {m: Ed25519PrivateKey.generate() for m in ("n1", "n2", "n3")}
    members = tuple(Member(m, f"http://127.0.0.1:{closed_port()}",
                           cosigner_verifier_key(f"{ORIGIN}/{m}", k.public_key()))
                    for m, k in keys.items())
    log_vkey = format_verifier_key(ORIGIN, ALG_ED25519,
                                   log_key.public_key().public_bytes_raw())
    cluster = ClusterConfig(ORIGIN, log_vkey, members)
    tree = MerkleTree()
    for i in range(5):
        tree.append(bytes([i]) * 32)
    storage = await ReplicaStorage.open(tmp_path / "n1.db")
    try:
        cosigner = Cosigner(
            cluster=cluster,
            signer=CosignatureSigner.from_private_key(f"{ORIGIN}/n1", keys["n1"]),
            guard=await load_guard(storage), storage=storage, tree=lambda: tree,
            durable_size=lambda: tree.size, log_verifier=new_verifier(log_vkey),
            on_checkpoint=lambda cp, note: None)
        note = sign_checkpoint(Checkpoint(ORIGIN, 5, tree.root()),
                               Ed25519Signer.from_private_key(ORIGIN, log_key))
        async with aiohttp.ClientSession() as session:
            async def no_payloads(indexes: list[int]) -> dict[int, bytes]:
                return {}

            links = {m.id: PeerLink(me="n1", peer=m.id, url=m.url, key=keys["n1"],
                                    session=session, load_payloads=no_payloads)
                     for m in members if m.id != "n1"}
            with pytest.raises(CosignError, match="1 of the 2 cosignatures"):
                await cosigner.gather(note, links, timeout=1.0)
            assert cosigner.latest is None  # nothing to announce or serve
            # With a majority of one (a cluster shrunk to this member) it is published,
            # carrying this member's own cosignature.
            published = await cosigner.gather(note, links, timeout=1.0, quorum=1)
        assert published.startswith(note)
        assert published.count("\n\u2014 ".encode()) == 2  # the log's and this member's
        assert cosigner.latest == published
        # The guard's state was synced before the cosignature left, once: cosigning the
        # same checkpoint again (the leader asks every second) writes nothing.
        assert (await load_guard(storage)).last_size == 5
        changes = storage._db.total_changes
        await cosigner.cosign(note)
        assert storage._db.total_changes == changes
    finally:
        await storage.close()
