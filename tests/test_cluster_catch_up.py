"""Members compact their Raft logs; a member that was away longer than the leader keeps
rows for catches up from tiles: the leader's snapshot names a cosigned checkpoint, the
entries come from the members' tile endpoints, each checked before it is kept."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import urllib.request
from pathlib import Path

import aiohttp
from aiohttp import web
from cliutil import cli
from clusterproc import LocalCluster
from test_cluster_snapshots import write_batches

from node.cluster_cli import free_ports

KEEP = 4  # Raft rows kept behind the commit point: a few batches make a long absence


def log_lines(cluster: LocalCluster, member: str, message: str) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in cluster.members[member].stderr().splitlines()
             if line.startswith("{")]
    return [line for line in lines if line["msg"] == message]


def leaves(path: Path) -> list[bytes]:
    with sqlite3.connect(path) as db:
        return [bytes(r[0]) for r in db.execute("SELECT leaf FROM entries ORDER BY idx")]


def test_a_member_away_catches_up_many_megabytes_from_the_raft_log(tmp_path: Path) -> None:
    # Without compaction the leader replicates all it missed as AppendEntries, up to 64
    # batches at once: tens of megabytes, which travel in frames of a few.
    cluster = LocalCluster(tmp_path / "cluster")
    cluster.start()
    try:
        leader = cluster.wait_leader()
        away = next(m for m in sorted(cluster.members) if m != leader)
        cluster.kill(away)
        size = asyncio.run(write_batches(cluster, leader, 12, first=0, per_batch=1000))
        assert size > 12_000
        cluster.members[away].start()
        cluster.wait_published(away, size, timeout=60)
        assert not log_lines(cluster, away, "caught up from tiles")
    finally:
        cluster.stop_all()
    db = "ledger.sqlite"
    assert leaves(cluster.members[away].data_dir / db)[:size] == \
        leaves(cluster.members[leader].data_dir / db)[:size]


def test_a_member_away_past_the_compaction_point_catches_up_from_tiles(
        tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "cluster",
                           env={"CONSENT_LEDGER_RAFT_LOG_KEEP": str(KEEP)})
    cluster.start()
    try:
        leader = cluster.wait_leader()
        away = next(m for m in sorted(cluster.members) if m != leader)
        held = asyncio.run(write_batches(cluster, leader, 3, first=0))
        cluster.wait_published(away, held)
        cluster.kill(away)
        size = asyncio.run(write_batches(cluster, leader, 6 * KEEP, first=3))
        info = cluster.info(leader)
        assert info is not None
        # The leader no longer holds the rows the member that was away needs next.
        assert info["raft_first"] > 6, info

        cluster.members[away].start()
        cluster.wait_published(away, size)
        # From tiles: the entries up to the snapshot's size; the rest came as Raft entries.
        # (Twice, if the leader compacted again while it installed the first snapshot.)
        installs = log_lines(cluster, away, "caught up from tiles")
        assert installs, cluster.members[away].stderr()
        # What it kept is what it had published before it went (at most `held`: a
        # follower stores the checkpoint it serves with its next tiles, so a crash may
        # lose the latest); the rest came from tiles.
        assert held < installs[0]["size"] <= size
        assert 0 < installs[0]["size"] - installs[0]["fetched"] <= held
        metrics = urllib.request.urlopen(cluster.url(away) + "/metrics").read().decode()
        assert f"consent_ledger_snapshots_installed_total {len(installs)}" in metrics
        fetched = sum(int(str(i["fetched"])) for i in installs)
        assert f"consent_ledger_entries_from_tiles_total {fetched}" in metrics
        # Replication goes on from the snapshot: later writes reach it as usual.
        size = asyncio.run(write_batches(cluster, leader, 2, first=40))
        cluster.wait_published(away, size)
        assert log_lines(cluster, away, "caught up from tiles") == installs

        assert cluster.verified_size(away) >= size
    finally:
        cluster.stop_all()
    # Its entries are the leader's, byte for byte (leaf hashes), and nothing else.
    db = "ledger.sqlite"
    assert leaves(cluster.members[away].data_dir / db)[:size] == \
        leaves(cluster.members[leader].data_dir / db)[:size]


def test_a_voter_added_to_a_compacted_log_starts_from_tiles(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "cluster", nodes=3, spares=1,
                           env={"CONSENT_LEDGER_RAFT_LOG_KEEP": str(KEEP)})
    cluster.start("n1", "n2", "n3")
    try:
        leader = cluster.wait_leader()
        size = asyncio.run(write_batches(cluster, leader, 4 * KEEP, first=0))
        cluster.start("n4")
        result = cli("cluster", "add", "--dir", str(cluster.dir), "--member", "n4",
                     "--via", cluster.url(leader))
        assert result.returncode == 0, result.stderr
        cluster.wait_published("n4", size)
        installs = log_lines(cluster, "n4", "caught up from tiles")
        assert installs, cluster.members["n4"].stderr()
        assert installs[0]["fetched"] == installs[0]["size"] > 0  # all of it, from genesis
        size = asyncio.run(write_batches(cluster, leader, 2, first=40))
        cluster.wait_published("n4", size)
    finally:
        cluster.stop_all()
    db = "ledger.sqlite"
    assert leaves(cluster.members["n4"].data_dir / db)[:size] == \
        leaves(cluster.members[leader].data_dir / db)[:size]


async def test_a_source_serving_altered_entries_is_refused_and_another_serves(
        tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "cluster",
                           env={"CONSENT_LEDGER_RAFT_LOG_KEEP": str(KEEP)})
    cluster.start()
    altered: list[str] = []

    async def forward(request: web.Request) -> web.Response:
        """The leader, as the member that was away reaches it, with one byte of every
        entry bundle changed (a dishonest or broken tile server in front of it)."""
        async with aiohttp.ClientSession() as s, s.request(
                request.method, cluster.url(leader) + request.rel_url.path_qs,
                headers={k: v for k, v in request.headers.items() if k.lower() != "host"},
                data=await request.read()) as resp:
            body = await resp.read()
            if request.path.startswith("/tile/entries/"):
                altered.append(request.path)
                body = body[:len(body) // 2] + bytes([body[len(body) // 2] ^ 1]) \
                    + body[len(body) // 2 + 1:]
            return web.Response(status=resp.status, body=body,
                                content_type=resp.content_type)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        leader = await asyncio.to_thread(cluster.wait_leader)
        away = next(m for m in sorted(cluster.members) if m != leader)
        (port,) = free_ports(1)
        await web.TCPSite(runner, "127.0.0.1", port).start()
        # The member that will be away reaches the leader only through the proxy.
        own_view = cluster.dir / "cluster-through-proxy.toml"
        own_view.write_text((cluster.dir / "cluster.toml").read_text().replace(
            cluster.url(leader), f"http://127.0.0.1:{port}"))
        cluster.members[away].env["CONSENT_LEDGER_CLUSTER_FILE"] = str(own_view)
        cluster.kill(away)
        size = await write_batches(cluster, leader, 6 * KEEP, first=0)

        cluster.members[away].start()
        await asyncio.to_thread(cluster.wait_published, away, size)
        assert altered  # the proxy was asked first, as the leader
        failures = log_lines(cluster, away, "catching up from tiles: a source failed")
        assert failures and all(str(port) in str(f["source"]) for f in failures)
        assert log_lines(cluster, away, "caught up from tiles")
    finally:
        await runner.cleanup()
        cluster.stop_all()
    db = "ledger.sqlite"
    assert leaves(cluster.members[away].data_dir / db)[:size] == \
        leaves(cluster.members[leader].data_dir / db)[:size]
