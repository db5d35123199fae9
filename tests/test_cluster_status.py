"""`consent-ledger cluster status`: what an operator sees, and the exit status an alert uses."""

from __future__ import annotations

import json
from pathlib import Path

from cliutil import cli
from clusterproc import LocalCluster


def _status(cluster: LocalCluster, *flags: str) -> tuple[int, str]:
    result = cli("cluster", "status", "--dir", str(cluster.dir), *flags)
    assert "Traceback" not in result.stderr
    return result.returncode, result.stdout


def test_status_shows_each_members_view_and_whether_writes_can_be_taken(
        tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "cluster", spares=1)  # n4: pinned, not yet a voter
    cluster.start()
    try:
        leader = cluster.wait_leader()
        followers = [m for m in cluster.members if m not in (leader, "n4")]
        for m in followers:
            cluster.wait_published(m, 1)
        code, out = _status(cluster)
        assert code == 0, out
        assert f"{leader} leads term" in out and "3 of 3 voters ready" in out
        rows = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
        assert set(rows) == set(cluster.members)
        assert rows["n4"][3:6] == ["(not", "a", "voter)"]
        assert rows[leader][2] == "leader"
        assert all(rows[m][2] == "follower" and rows[m][4] == leader for m in followers)
        assert all(rows[m][-1] == "yes" for m in cluster.members)

        cluster.kill(followers[0])
        code, out = _status(cluster)
        assert code == 0, out  # a majority goes on
        assert "2 of 3 voters ready" in out
        row = next(line for line in out.splitlines() if line.split()[0] == followers[0])
        assert "no: no answer" in row

        cluster.kill(leader)
        code, out = _status(cluster, "--json")
        assert code == 1
        report = json.loads(out)
        assert report["healthy"] is False
        assert [m["id"] for m in report["members"] if m["info"] is not None] \
            == [followers[1], "n4"]
    finally:
        cluster.stop_all()


def test_status_of_a_cluster_nobody_runs_is_unhealthy_not_an_error(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "cluster")
    code, out = _status(cluster)
    assert code == 1
    assert "no leader: 0 of 3 members answered" in out


def test_status_of_a_directory_without_a_cluster_is_one_line(tmp_path: Path) -> None:
    result = cli("cluster", "status", "--dir", str(tmp_path))
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1 and "cluster.toml" in result.stderr
