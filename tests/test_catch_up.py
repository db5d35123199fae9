"""The checkpoint a Raft snapshot carries is taken only if the log signed it and a
majority of the voters in force there cosigned it: a leader alone cannot make a member
catch up to a history that the others did not verify."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.keys import load_private_key
from ledger.checkpoint import Checkpoint, sign_checkpoint
from ledger.cosignature import CosignatureSigner, add_cosignatures
from ledger.note import Ed25519Signer, Signature, new_verifier
from node.catch_up import CatchUpError, checkpoint_size, open_snapshot_checkpoint
from node.cluster_cli import init_cluster
from node.cluster_config import ClusterConfig


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> tuple[ClusterConfig, Path]:
    directory = tmp_path_factory.mktemp("cluster")
    config = init_cluster(directory, nodes=3, host="127.0.0.1", base_port=0, origin=None,
                          spares=1)
    return config, directory / "keys"


def cosigned(config: ClusterConfig, keys: Path, *members: str, size: int = 7) -> bytes:
    log_signer = Ed25519Signer.from_private_key(config.origin,
                                                load_private_key(keys / "log.key"))
    note = sign_checkpoint(Checkpoint(config.origin, size, b"\x01" * 32), log_signer)
    text = note[:note.index(b"\n\n") + 1]
    sigs = []
    for member in members:
        signer = CosignatureSigner.from_private_key(
            config.member(member).cosigner.name, load_private_key(keys / f"{member}.key"))
        sigs.append(Signature(signer.name, signer.key_id, signer.sign(text, 1_700_000_000)))
    return add_cosignatures(note, sigs)


def test_a_majority_of_voters_cosigned_it(cluster: tuple[ClusterConfig, Path]) -> None:
    config, keys = cluster
    verifier = new_verifier(config.log_key)
    note = cosigned(config, keys, "n1", "n3")
    checkpoint = open_snapshot_checkpoint(note, log_verifier=verifier, cluster=config,
                                          voters={"n1", "n2", "n3"})
    assert checkpoint.size == 7 and checkpoint_size(note) == 7


@pytest.mark.parametrize(("members", "voters"), [
    (("n1",), {"n1", "n2", "n3"}),  # one of three
    (("n1", "n4"), {"n1", "n2", "n3"}),  # n4 is pinned but not a voter there
    (("n1", "n2"), {"n1", "n2", "n3", "n4"}),  # two of four
    ((), {"n1"}),  # the log's signature alone
])
def test_fewer_cosignatures_than_a_majority_are_refused(
        cluster: tuple[ClusterConfig, Path], members: tuple[str, ...],
        voters: set[str]) -> None:
    config, keys = cluster
    with pytest.raises(CatchUpError, match="not a majority"):
        open_snapshot_checkpoint(cosigned(config, keys, *members),
                                 log_verifier=new_verifier(config.log_key), cluster=config,
                                 voters=voters)


def test_a_checkpoint_the_log_did_not_sign_is_refused(
        cluster: tuple[ClusterConfig, Path]) -> None:
    config, keys = cluster
    note = cosigned(config, keys, "n1", "n2", "n3")
    forged = note.replace(b"\n7\n", b"\n8\n", 1)  # another size under the same signatures
    with pytest.raises(CatchUpError, match="does not open"):
        open_snapshot_checkpoint(forged, log_verifier=new_verifier(config.log_key),
                                 cluster=config, voters={"n1", "n2", "n3"})
