"""`cluster init --hosts`: a cluster whose members each have their own host, and the
one-line errors for hosts that cannot make one; on one host, the free ports it picks."""

from __future__ import annotations

import socket
import tomllib
from pathlib import Path

import pytest
from cliutil import ROOT, cli, one_line_error

from node.cluster_cli import free_ports
from node.cluster_config import load_cluster
from node.config import load_config

HOSTS = "ledger-1.example.net,ledger-2.example.net,ledger-3.example.net,10.0.0.4"


def test_each_member_gets_its_own_host_at_port_8441(tmp_path: Path) -> None:
    directory = tmp_path / "cluster"
    result = cli("cluster", "init", "--nodes", "3", "--spares", "1", "--dir", str(directory),
                 "--hosts", HOSTS, "--origin", "consent.example.net/log")
    assert result.returncode == 0, result.stderr
    hosts = HOSTS.split(",")
    cluster = load_cluster(directory / "cluster.toml")
    assert [m.url for m in cluster.members] == [f"http://{h}:8441" for h in hosts]
    assert cluster.voters == {"n1", "n2", "n3"} and not cluster.member("n4").voter
    for k, host in enumerate(hosts, 1):
        member = load_config(file=directory / f"n{k}.toml")
        assert (member.host, member.port, member.member) == (host, 8441, f"n{k}")
        assert member.decode_process  # a core of its own for decoding
        assert f"http://{host}:8441" in result.stdout
    # Clients find every member where the cluster file says it is.
    assert (directory / "policy.txt").read_text() == cluster.policy_text()


def test_members_on_one_host_decode_on_their_loops(tmp_path: Path) -> None:
    directory = tmp_path / "cluster"
    result = cli("cluster", "init", "--nodes", "3", "--dir", str(directory))
    assert result.returncode == 0, result.stderr
    for k in (1, 2, 3):
        member = load_config(file=directory / f"n{k}.toml")
        assert (member.host, member.port) == ("127.0.0.1", 7100 + k)
        assert not member.decode_process  # three processes more on the cores they share


def test_base_port_is_every_members_port(tmp_path: Path) -> None:
    directory = tmp_path / "cluster"
    result = cli("cluster", "init", "--nodes", "1", "--spares", "2", "--dir", str(directory),
                 "--hosts", "a.example, b.example ,[fd00::3]", "--base-port", "9443")
    assert result.returncode == 0, result.stderr
    cluster = load_cluster(directory / "cluster.toml")
    assert [m.url for m in cluster.members] == [
        "http://a.example:9443", "http://b.example:9443", "http://[fd00::3]:9443"]
    assert load_config(file=directory / "n3.toml").host == "fd00::3"  # what it binds


def test_hosts_replace_the_deploy_guides_seds(tmp_path: Path) -> None:
    # deploy/README.md makes deploy/cluster/cluster.toml with --host and three seds;
    # --hosts makes the same file in one command.
    directory = tmp_path / "cluster"
    result = cli("cluster", "init", "--nodes", "3", "--spares", "1", "--dir", str(directory),
                 "--origin", "consent.example.com/log1", "--base-port", "7101",
                 "--hosts", "10.0.0.1,10.0.0.2,10.0.0.3,10.0.0.4")
    assert result.returncode == 0, result.stderr
    made = load_cluster(directory / "cluster.toml")
    example = (ROOT / "deploy" / "cluster" / "cluster.toml").read_text()
    example = example.replace("@LOG_KEY@", made.log_key)
    for m in made.members:
        example = example.replace(f"@{m.id.upper()}_KEY@", m.key)
    assert tomllib.loads(example) == tomllib.loads((directory / "cluster.toml").read_text())


@pytest.mark.parametrize(("args", "message"), [
    (["--hosts", "h1,h2,H1"], "--hosts names H1 twice: each member needs its own host"),
    (["--hosts", "h1,h2"], "--hosts names 2 hosts but --nodes 3 and --spares 0 make 3 "
                           "members: name one host each"),
    (["--hosts", "h1,h2,h3", "--spares", "1"], "--hosts names 3 hosts but --nodes 3 and "
                                               "--spares 1 make 4 members"),
    (["--hosts", "h1,,h3"], "--hosts: '' is not a host name or address"),
    (["--hosts", "h1,h2,http://h3"], "--hosts: 'http://h3' is not a host name or address"),
    (["--hosts", "h1,h2,h3", "--base-port", "0"], "with --hosts every member listens on "
                                                  "this port, 1..65535"),
])
def test_hosts_that_cannot_make_a_cluster_are_refused_in_one_line(
        tmp_path: Path, args: list[str], message: str) -> None:
    directory = tmp_path / "cluster"
    result = cli("cluster", "init", "--nodes", "3", "--dir", str(directory), *args)
    assert message in one_line_error(result, 1)
    assert not directory.exists()  # refused before writing anything


def test_host_and_hosts_exclude_each_other(tmp_path: Path) -> None:
    result = cli("cluster", "init", "--dir", str(tmp_path / "c"), "--host", "h0",
                 "--hosts", "h1,h2,h3")
    assert result.returncode == 2 and "not allowed with argument" in result.stderr
    assert not (tmp_path / "c").exists()


def test_free_ports_are_distinct_bindable_and_never_a_connections_source_port() -> None:
    ports = free_ports(6)
    assert len(set(ports)) == 6
    range_file = Path("/proc/sys/net/ipv4/ip_local_port_range")
    if range_file.exists():  # Linux: outgoing connections take source ports from here
        low = int(range_file.read_text().split()[0])
        assert all(20_000 <= port < low for port in ports), ports
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
