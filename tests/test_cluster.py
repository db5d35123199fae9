"""A real 3-member cluster on loopback: writes anywhere, a majority's cosignatures, failover."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from clusterproc import LocalCluster, get_json
from factories import grant
from nodeclient import msgpack_body, now_ms, post, register_controller
from nodeproc import children_of, wait_gone

from client.policy import parse_policy
from client.verify_log import verify_log
from ledger.checkpoint import Checkpoint, open_checkpoint
from ledger.cosignature import new_cosignature_verifier
from ledger.note import new_verifier
from ledger.signed import sign_batch
from node.decode_worker import MIN_BODY
from node.peer_auth import sign_request
from node.peers import RAFT_PATH


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    # Members as on hosts of their own: each decodes in a process of its own, the leader
    # the bodies it is sent and the followers the leader's batches.
    c = LocalCluster(tmp_path / "cluster", env={"CONSENT_LEDGER_DECODE_PROCESS": "true"})
    c.start()
    c.wait_leader()
    yield c
    c.stop_all()


def _cosigners(note: bytes, cluster: LocalCluster) -> set[str]:
    """The members whose cosignatures on `note` verify."""
    text = note[:note.index(b"\n\n") + 1]
    lines = note[note.index(b"\n\n") + 2:].decode().splitlines()
    good = set()
    for m in cluster.config.members:
        verifier = new_cosignature_verifier(m.key)
        for line in lines:
            name, _, b64 = line.removeprefix("— ").partition(" ")
            raw = base64.b64decode(b64)
            if name == verifier.name and int.from_bytes(raw[:4], "big") == verifier.key_id \
                    and verifier.verify(text, raw[4:]):
                good.add(m.id)
    return good


async def _write_batch(cluster: LocalCluster, member: str) -> tuple[dict, dict]:
    """Register a controller and write 50 grants (one body of ≥ MIN_BODY) through member."""
    async with aiohttp.ClientSession() as s:
        key = await register_controller(s, cluster.url(member), cluster.operator_key)
        t = now_ms()
        batch = sign_batch([grant(subject=bytes([i]) * 32, consented_at=t,
                                  valid_until=t + 10**9) for i in range(50)], key)
        assert len(msgpack_body(batch)) >= MIN_BODY  # decoded by the decoding processes
        status, body, _ = await post(s, cluster.url(member), batch)
        assert status == 200, body
        async with s.get(f"{cluster.url(member)}/v1/keys") as resp:
            keys = await resp.json()
        return body, keys


def _decoded_in_process(cluster: LocalCluster, member: str) -> dict[str, int]:
    """What the member's decoding process decoded, by kind (its /metrics)."""
    with urllib.request.urlopen(cluster.url(member) + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {kind: int(n) for kind, n in re.findall(
        r'^consent_ledger_decoded_in_process_total\{kind="(\w+)"\} (\d+)$', text, re.M)}


def _every_member_serves(cluster: LocalCluster, checkpoint: Checkpoint) -> None:
    """Every member holds and serves the same log, which verifies from genesis."""
    for member in cluster.members:
        cluster.wait_published(member, checkpoint.size)

    async def verify_all() -> None:
        async with aiohttp.ClientSession() as s:
            for member in cluster.members:
                verified = await verify_log(s, cluster.url(member), cluster.config.log_key)
                assert verified.tree.root(checkpoint.size) == checkpoint.root

    asyncio.run(verify_all())


def test_a_write_to_a_follower_is_acknowledged_with_a_cosigned_checkpoint(
        cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    follower = next(m for m in cluster.members if m != leader)
    body, keys = asyncio.run(_write_batch(cluster, follower))
    note = body["checkpoint"].encode()
    checkpoint = open_checkpoint(note, new_verifier(cluster.config.log_key))[0]
    assert checkpoint.size >= 50 + 3  # genesis, registration, status roots
    assert len(_cosigners(note, cluster)) >= 2  # a majority of three, each verified
    # What a client trusts is the policy `cluster init` wrote: log key and a member quorum.
    policy = parse_policy(cluster.policy)
    policy.check_checkpoint(note, now=int(time.time()), max_age=60)
    assert keys["log"] == cluster.config.log_key
    assert sorted(keys["cosigners"]) == sorted(m.key for m in cluster.config.members)
    _every_member_serves(cluster, checkpoint)
    # The leader decoded the body in its decoding process, each follower the batch in its.
    assert _decoded_in_process(cluster, leader).get("body", 0) >= 1
    for member in cluster.members:
        if member != leader:
            assert _decoded_in_process(cluster, member).get("batch", 0) >= 1, member


def test_members_whose_decoding_process_died_check_batches_on_their_loop(
        cluster: LocalCluster) -> None:
    for process in cluster.members.values():
        assert process.proc is not None
        (child,) = children_of(process.proc.pid, b"node.decode_worker")
        os.kill(child, signal.SIGKILL)
        assert wait_gone(child)
    leader = cluster.wait_leader()
    follower = next(m for m in cluster.members if m != leader)
    body, _ = asyncio.run(_write_batch(cluster, follower))
    checkpoint = open_checkpoint(body["checkpoint"].encode(),
                                 new_verifier(cluster.config.log_key))[0]
    assert checkpoint.size >= 50 + 3
    _every_member_serves(cluster, checkpoint)
    assert all(_decoded_in_process(cluster, m) == {} for m in cluster.members)


def test_an_unauthenticated_peer_is_refused(cluster: LocalCluster) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    url = cluster.url("n1") + RAFT_PATH
    impostor = Ed25519PrivateKey.generate()  # claims to be n2, signs with another key
    body = b"\x90"

    async def send(headers: dict[str, str]) -> tuple[int, dict]:
        async with aiohttp.ClientSession() as s, s.post(url, data=body, headers=headers) as r:
            return r.status, await r.json(content_type=None)

    status, problem = asyncio.run(send(sign_request(impostor, src="n2", dst="n1",
                                                    path=RAFT_PATH, body=body)))
    assert status == 401 and problem["type"].endswith("/unauthorized-peer")
    assert "pinned key" in problem["detail"]
    status, problem = asyncio.run(send({}))
    assert status == 401 and "missing" in problem["detail"]
    status, problem = asyncio.run(send(sign_request(impostor, src="n9", dst="n1",
                                                    path=RAFT_PATH, body=body)))
    assert status == 401 and "not a peer" in problem["detail"]


def test_cluster_view(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    deadline = time.monotonic() + 10
    while True:  # a member learns the leader from its first heartbeat: poll with a deadline
        infos = [get_json(cluster.url(m) + "/v1/cluster") for m in cluster.members]
        if {i["leader"] for i in infos} == {leader} or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert [i["role"] for i in infos].count("leader") == 1
    assert {i["leader"] for i in infos} == {leader}
    assert len({i["term"] for i in infos}) == 1
