"""The trust store: first use, proven advances, rollbacks and forks refused, durable files."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client.errors import ClientError, LogVerificationError
from client.trust_store import (
    ForkDetected,
    LogInconsistent,
    RollbackDetected,
    TrustStore,
    TrustStoreChanged,
    TrustStoreCorrupt,
)
from ledger.checkpoint import Checkpoint, sign_checkpoint
from ledger.merkle import EMPTY_ROOT, leaf_hash
from ledger.note import Ed25519Signer
from ledger.tree import MerkleTree

ORIGIN = "example.com/consent-log"
LOG = Ed25519Signer.from_private_key(ORIGIN, Ed25519PrivateKey.from_private_bytes(b"\1" * 32))


def _tree(size: int, *, fork_at: int | None = None) -> MerkleTree:
    """A tree of `size` entries; with fork_at, entry fork_at differs (another history)."""
    return MerkleTree.from_leaf_hashes(
        leaf_hash(b"fork %d" % i if i == fork_at else b"entry %d" % i) for i in range(size))


TREE = _tree(40)
FORK = _tree(40, fork_at=3)


def _signed(tree: MerkleTree, size: int, origin: str = ORIGIN) -> tuple[bytes, Checkpoint]:
    checkpoint = Checkpoint(origin, size, tree.root(size))
    signer = LOG if origin == ORIGIN else Ed25519Signer.from_private_key(
        origin, Ed25519PrivateKey.from_private_bytes(b"\2" * 32))
    return sign_checkpoint(checkpoint, signer), checkpoint


@pytest.fixture
def store(tmp_path: Path) -> TrustStore:
    return TrustStore(tmp_path / "trust")


def _stored(store: TrustStore) -> tuple[bytes, Checkpoint]:
    stored = store.latest(ORIGIN)
    assert stored is not None
    return stored


def _advance(store: TrustStore, tree: MerkleTree, size: int) -> bytes:
    note, checkpoint = _signed(tree, size)
    wanted = store.needs_proof(ORIGIN, size)
    proof = tree.consistency_proof(*wanted) if wanted else []
    store.advance(note, checkpoint, proof, proof_from=wanted[0] if wanted else None)
    return note


def test_first_use_trusts_and_stores(store: TrustStore) -> None:
    assert store.latest(ORIGIN) is None
    assert store.needs_proof(ORIGIN, 5) is None
    note = _advance(store, TREE, 5)
    assert store.latest(ORIGIN) == (note, Checkpoint(ORIGIN, 5, TREE.root(5)))


def test_advances_through_every_size_with_proofs(store: TrustStore) -> None:
    _advance(store, TREE, 1)
    for size in range(2, 41):
        assert store.needs_proof(ORIGIN, size) == (size - 1, size)
        _advance(store, TREE, size)
        assert _stored(store)[1].size == size


def test_advances_by_large_steps(store: TrustStore) -> None:
    for size in (3, 8, 9, 16, 17, 31, 40):
        _advance(store, TREE, size)
    assert _stored(store)[1].root == TREE.root(40)


def test_same_size_same_root_takes_the_newer_note(store: TrustStore) -> None:
    _advance(store, TREE, 7)
    assert store.needs_proof(ORIGIN, 7) is None
    # Another signature over the same checkpoint (as a fresher cosignature would be).
    other = Ed25519Signer.from_private_key("witness.example/w",
                                           Ed25519PrivateKey.from_private_bytes(b"\3" * 32))
    checkpoint = Checkpoint(ORIGIN, 7, TREE.root(7))
    note = sign_checkpoint(checkpoint, [LOG, other])
    store.advance(note, checkpoint, [])
    assert store.latest(ORIGIN) == (note, checkpoint)


def test_rollback_is_refused_with_evidence(store: TrustStore) -> None:
    stored = _advance(store, TREE, 20)
    assert store.needs_proof(ORIGIN, 10) is None  # no proof can help a smaller tree
    note, checkpoint = _signed(TREE, 10)
    with pytest.raises(RollbackDetected, match="smaller than the verified size 20") as info:
        store.advance(note, checkpoint, [])
    err = info.value
    assert (err.stored_note, err.new_note) == (stored, note)
    assert (err.checkpoint, err.other_checkpoint) == (stored, note)  # the larger tree first
    assert isinstance(err, LogInconsistent)
    assert isinstance(err, LogVerificationError)
    assert _stored(store)[0] == stored


def test_same_size_other_root_is_a_fork(store: TrustStore) -> None:
    stored = _advance(store, TREE, 20)
    note, checkpoint = _signed(FORK, 20)
    with pytest.raises(ForkDetected, match="differs from root2") as info:
        store.advance(note, checkpoint, [])
    assert (info.value.stored_note, info.value.new_note) == (stored, note)
    assert _stored(store)[0] == stored


def test_a_forked_history_cannot_prove_consistency(store: TrustStore) -> None:
    stored = _advance(store, TREE, 10)
    note, checkpoint = _signed(FORK, 30)
    proof = FORK.consistency_proof(10, 30)  # honest for the fork, not for what we saw
    with pytest.raises(ForkDetected) as info:
        store.advance(note, checkpoint, proof)
    assert info.value.proof == tuple(proof)
    assert (info.value.checkpoint, info.value.other_checkpoint) == (note, stored)
    assert _stored(store)[0] == stored


def _mutations(proof: list[bytes]) -> list[list[bytes]]:
    flipped = [proof[0][:5] + bytes([proof[0][5] ^ 1]) + proof[0][6:], *proof[1:]]
    return [flipped, proof[:-1], [*proof, proof[-1]], proof[::-1], [], [bytes(32)] * len(proof),
            [proof[0][:31], *proof[1:]]]


@pytest.mark.parametrize("case", range(7))
def test_a_bad_proof_is_a_fork_and_changes_nothing(store: TrustStore, case: int) -> None:
    stored = _advance(store, TREE, 13)
    note, checkpoint = _signed(TREE, 29)
    bad = _mutations(TREE.consistency_proof(13, 29))[case]
    with pytest.raises(ForkDetected):
        store.advance(note, checkpoint, bad)
    assert store.latest(ORIGIN) == (stored, Checkpoint(ORIGIN, 13, TREE.root(13)))
    # The right proof still works afterwards.
    store.advance(note, checkpoint, TREE.consistency_proof(13, 29))


def test_a_proof_from_a_size_no_longer_stored(store: TrustStore) -> None:
    _advance(store, TREE, 5)
    wanted = store.needs_proof(ORIGIN, 30)
    assert wanted == (5, 30)
    _advance(store, TREE, 12)  # another process sharing the store got there first
    note, checkpoint = _signed(TREE, 30)
    with pytest.raises(TrustStoreChanged, match="now at size 12"):
        store.advance(note, checkpoint, TREE.consistency_proof(*wanted), proof_from=5)
    assert _stored(store)[1].size == 12


def test_from_the_empty_tree_no_proof_is_needed(store: TrustStore) -> None:
    empty = Checkpoint(ORIGIN, 0, EMPTY_ROOT)
    store.advance(sign_checkpoint(empty, LOG), empty, [])
    assert store.needs_proof(ORIGIN, 9) is None
    _advance(store, TREE, 9)
    assert _stored(store)[1].size == 9


def test_caller_mistakes_are_value_errors(store: TrustStore) -> None:
    note, checkpoint = _signed(TREE, 5)
    with pytest.raises(ValueError, match="needs no consistency proof"):
        store.advance(note, checkpoint, TREE.consistency_proof(3, 5))
    with pytest.raises(ValueError, match="not the checkpoint new_note holds"):
        store.advance(note, Checkpoint(ORIGIN, 6, TREE.root(6)), [])
    with pytest.raises(ValueError, match="not a checkpoint note"):
        store.advance(b"garbage", checkpoint, [])
    store.advance(note, checkpoint, [])
    with pytest.raises(ValueError, match="equal sizes need no"):
        store.advance(*_signed(FORK, 5), [TREE.root(5)])
    assert store.latest(ORIGIN) == (note, checkpoint)


def test_persists_across_instances(tmp_path: Path) -> None:
    note = _advance(TrustStore(tmp_path), TREE, 17)
    again = TrustStore(tmp_path)
    assert again.latest(ORIGIN) == (note, Checkpoint(ORIGIN, 17, TREE.root(17)))
    assert again.needs_proof(ORIGIN, 20) == (17, 20)
    with pytest.raises(RollbackDetected):
        again.advance(*_signed(TREE, 16), [])


def test_origins_are_kept_apart(store: TrustStore) -> None:
    _advance(store, TREE, 17)
    other_note, other = _signed(FORK, 3, origin="other.example/log")
    store.advance(other_note, other, [])
    assert store.latest("other.example/log") == (other_note, other)
    assert _stored(store)[1].size == 17


def test_files_are_private_and_verbatim(tmp_path: Path) -> None:
    store = TrustStore(tmp_path / "trust")
    note = _advance(store, TREE, 8)
    path = store.path_for(ORIGIN)
    assert path.read_bytes() == note
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "trust").stat().st_mode) == 0o700
    _advance(store, TREE, 9)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    leftovers = [p.name for p in (tmp_path / "trust").iterdir()
                 if p.name.startswith(".tmp-")]
    assert leftovers == []


@pytest.mark.parametrize("content", [b"", b"not a note", b"\xff\xfe",
                                     b"example.com/consent-log\n5\n\n- x AAAA\n"])
def test_a_corrupt_file_is_a_clear_error(store: TrustStore, content: bytes) -> None:
    _advance(store, TREE, 8)
    store.path_for(ORIGIN).write_bytes(content)
    with pytest.raises(TrustStoreCorrupt, match="is corrupt") as info:
        store.latest(ORIGIN)
    assert info.value.path == store.path_for(ORIGIN)
    assert isinstance(info.value, ClientError)
    # Never mended by trusting the next checkpoint on first use.
    with pytest.raises(TrustStoreCorrupt):
        store.advance(*_signed(TREE, 9), [])
    assert store.path_for(ORIGIN).read_bytes() == content


def test_a_file_filed_under_another_origin_is_corrupt(store: TrustStore) -> None:
    _advance(store, TREE, 8)
    os.replace(store.path_for(ORIGIN), store.path_for("other.example/log"))
    with pytest.raises(TrustStoreCorrupt, match=r"not of 'other\.example/log'"):
        store.latest("other.example/log")
    assert store.latest(ORIGIN) is None


def test_racing_writers_cannot_both_extend_the_old_state(tmp_path: Path) -> None:
    _advance(TrustStore(tmp_path), TREE, 10)
    barrier = threading.Barrier(2)
    outcomes: dict[str, BaseException | None] = {}

    def race(name: str, tree: MerkleTree) -> None:
        store = TrustStore(tmp_path)  # each writer its own instance, as processes would
        note, checkpoint = _signed(tree, 20)
        proof = tree.consistency_proof(10, 20)
        barrier.wait()
        try:
            store.advance(note, checkpoint, proof, proof_from=10)
            outcomes[name] = None
        except (TrustStoreChanged, ForkDetected) as exc:
            outcomes[name] = exc

    # FORK diverges at entry 3, so its proof from 10 is bad anyway: use a later fork.
    late_fork = _tree(40, fork_at=15)
    threads = [threading.Thread(target=race, args=(n, t))
               for n, t in (("honest", TREE), ("fork", late_fork))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [n for n, exc in outcomes.items() if exc is None]
    assert len(winners) == 1
    loser = next(exc for exc in outcomes.values() if exc is not None)
    assert isinstance(loser, TrustStoreChanged)
    winner_tree = TREE if winners == ["honest"] else late_fork
    assert _stored(TrustStore(tmp_path))[1].root == winner_tree.root(20)
