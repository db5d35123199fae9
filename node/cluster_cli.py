"""`consent-ledger cluster init | up | status`: make a cluster's files, run a local
cluster, see how it is.

`init` writes, under DIR: cluster.toml (members, URLs, pinned keys, the log key), one
<member>.toml per member (what `consent-ledger node --config` reads), keys/ (the log's
signing key, held by every member; the operator's key, which signed the genesis event
and then belongs offline; one key per member), genesis.msgpack and policy.txt (the C2SP
tlog-policy that clients trust: the log key and a majority of member cosignatures).

`up` runs every member of DIR's cluster as its own process on loopback, waits until a
leader has published the genesis entry, prints the members' URLs and keeps them running
until interrupted: a member that dies is reported and started again, as the systemd
units in deploy/ would (node/member_supervisor.py).

`status` asks every member for its view and says whether the cluster takes writes
(node/cluster_status.py).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import re
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp

from client.keys import generate_key_file
from ledger.cosignature import cosigner_verifier_key
from ledger.events import Genesis
from ledger.note import ALG_ED25519, format_verifier_key
from ledger.signed import public_bytes, sign_event
from node import cluster_status
from node.cluster_config import ClusterConfig, Member, format_cluster, load_cluster
from node.config import ConfigError, load_config
from node.member_supervisor import MemberSupervisor

MEMBERSHIP_RETRY_S = 20.0
HOSTS_PORT = 8441  # every member's port when each has its own host (init --hosts)
LOOPBACK_PORT = 7101  # the first member's port when all share one host
_FIRST_FREE_PORT = 20_000  # free_ports' lowest: above the well-known services' ports
# A DNS name or IPv4 address, or an IPv6 address in brackets.
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]")


def free_ports(n: int) -> list[int]:
    """n ports that are free on loopback now, below the OS's ephemeral range.

    A port the OS picks for bind(0) comes from the range it also takes connections'
    source ports from, so between `init` and a member's start any outgoing connection on
    the machine could take it (seen in tests: "address already in use"). Ports below that
    range are only ever taken by an explicit bind."""
    low = _ephemeral_low()
    chosen: list[int] = []
    with contextlib.ExitStack() as stack:
        candidates = range(_FIRST_FREE_PORT, low)
        for port in random.sample(candidates, min(len(candidates), 512)):
            sock = stack.enter_context(socket.socket())
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            chosen.append(port)
            if len(chosen) == n:
                return chosen
        for _ in range(n - len(chosen)):  # that range is full: the OS's choice, then
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            chosen.append(sock.getsockname()[1])
    return chosen


def _ephemeral_low() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default; elsewhere the range starts higher still
    return max(low, _FIRST_FREE_PORT + 1)


def check_hosts(hosts: Sequence[str], *, members: int, nodes: int, spares: int) -> None:
    """One distinct, well-formed host per member, or a one-line ConfigError."""
    for host in hosts:
        if not _HOST.fullmatch(host):
            raise ConfigError(f"--hosts: {host!r} is not a host name or address")
    seen: set[str] = set()
    for host in hosts:
        if host.lower() in seen:
            raise ConfigError(f"--hosts names {host} twice: each member needs its own host")
        seen.add(host.lower())
    if len(hosts) != members:
        raise ConfigError(f"--hosts names {len(hosts)} hosts but --nodes {nodes} and "
                          f"--spares {spares} make {members} members: name one host each")


def init_cluster(directory: Path, *, nodes: int, host: str, base_port: int,
                 origin: str | None, max_skew_ms: int = 10 * 60 * 1000,
                 ports: Sequence[int] | None = None, spares: int = 0,
                 hosts: Sequence[str] | None = None) -> ClusterConfig:
    """Write a cluster's files: every member on host at consecutive ports from base_port
    (0: any free loopback ports), or, given hosts, member K on hosts[K-1], all at
    base_port."""
    if nodes not in (1, 3, 5, 7):
        raise ConfigError("--nodes must be 1, 3, 5 or 7 (an odd number of members)")
    if (directory / "cluster.toml").exists():
        raise ConfigError(f"{directory}/cluster.toml exists: refusing to overwrite a cluster")
    if not 0 <= spares <= 4:
        raise ConfigError("--spares must be 0..4")
    total = nodes + spares
    if hosts is not None:
        check_hosts(hosts, members=total, nodes=nodes, spares=spares)
        if not 1 <= base_port <= 65535:
            raise ConfigError(f"--base-port {base_port}: with --hosts every member listens "
                              "on this port, 1..65535")
        ports = [base_port] * total
    elif not 0 <= base_port <= 65535 - total:
        raise ConfigError(f"--base-port {base_port} leaves no room for {total} ports")
    member_hosts = list(hosts) if hosts is not None else [host] * total
    if ports is None:
        ports = free_ports(total) if base_port == 0 else [base_port + n for n in range(total)]
    origin = origin or f"consent-ledger.local/{os.urandom(4).hex()}"
    keys = directory / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    log_key = generate_key_file(keys / "log.key")
    operator = generate_key_file(keys / "operator.key")
    members = []
    for n in range(1, total + 1):
        member_id = f"n{n}"
        key = generate_key_file(keys / f"{member_id}.key")
        members.append(Member(member_id, f"http://{member_hosts[n - 1]}:{ports[n - 1]}",
                              cosigner_verifier_key(f"{origin}/{member_id}", key.public_key()),
                              voter=n <= nodes))
    genesis = Genesis(origin=origin, operator_key=public_bytes(operator),
                      created_at=time.time_ns() // 1_000_000, max_skew_ms=max_skew_ms)
    (directory / "genesis.msgpack").write_bytes(sign_event(genesis, operator).encode())
    config = ClusterConfig(origin, format_verifier_key(origin, ALG_ED25519,
                                                       public_bytes(log_key)),
                           tuple(members))
    # Members that share one host share its cores: there a decoding process per member
    # costs more CPU (pickling) than it frees (bench/bench_cluster.py, BENCHMARKS.md).
    shared_host = "" if hosts is not None else (
        "# all members on one host: decode on each event loop, not in a process each\n"
        "decode_process = false\n")
    for m, member_host in zip(members, member_hosts, strict=True):
        port = m.url.rsplit(":", 1)[1]
        (directory / f"{m.id}.toml").write_text(
            f'# consent-ledger node --config {m.id}.toml\n'
            f'data_dir = "{m.id}"\nhost = "{member_host.strip("[]")}"\nport = {port}\n'
            f'member = "{m.id}"\n'
            f'cluster_file = "cluster.toml"\nlog_key_file = "keys/log.key"\n'
            f'node_key_file = "keys/{m.id}.key"\nmax_skew_ms = {max_skew_ms}\n{shared_host}')
    (directory / "cluster.toml").write_text(format_cluster(config, "genesis.msgpack"))
    (directory / "policy.txt").write_text(config.policy_text())
    return config


async def wait_for_cluster(urls: Sequence[str], *, timeout: float,
                           alive: object = None) -> str:
    """The leader's URL once it has published the genesis entry (checked each 50 ms)."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if callable(alive):
                alive()
            for url in urls:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                    async with session.get(url + "/v1/cluster",
                                           timeout=aiohttp.ClientTimeout(total=1)) as resp:
                        info = json.loads(await resp.read())
                        if info["role"] == "leader" and info["published_size"] > 0:
                            return url
            await asyncio.sleep(0.05)  # polling a condition with a deadline
    raise ConfigError(f"no leader published the genesis entry within {timeout:.0f} s")


async def run_cluster(directory: Path, *, then: object = None, once: bool = False) -> int:
    """Start every member, wait for a leader, run `then`; keep the members running
    (node/member_supervisor.py) until SIGINT or SIGTERM, or until none is left."""
    cluster = load_cluster(directory / "cluster.toml")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def log_of(member_id: str) -> Path:
        return directory / f"{member_id}.log"

    async def start(member_id: str) -> asyncio.subprocess.Process:
        with open(log_of(member_id), "ab") as log_file:  # the child keeps it
            return await asyncio.create_subprocess_exec(
                sys.executable, "-m", "node.cli", "node",
                "--config", str(directory / f"{member_id}.toml"),
                stdout=asyncio.subprocess.DEVNULL, stderr=log_file)

    members = MemberSupervisor(start, log_of)
    watching: asyncio.Future[None] | None = None
    try:
        for m in cluster.members:
            await members.start(m.id)

        def alive() -> None:  # a member that cannot start is a configuration problem
            for member_id, proc in members.procs.items():
                if proc.returncode is not None:
                    raise ConfigError(f"member {member_id} exited with {proc.returncode}; "
                                      f"see {log_of(member_id)}")

        leader = await wait_for_cluster([m.url for m in cluster.members], timeout=30,
                                        alive=alive)
        print(f"consent-ledger cluster {cluster.origin}: {len(members.procs)} members",
              flush=True)
        for m in cluster.members:
            print(f"  {m.id}  {m.url}{'  (leader)' if m.url == leader else ''}", flush=True)
        print(f"  trust policy: {directory / 'policy.txt'}", flush=True)
        watching = asyncio.ensure_future(members.run())
        status = 0
        if callable(then):
            status = await then(leader, cluster)
            if once or status != 0:
                return status
            print("\nThe cluster keeps serving; Ctrl-C stops it.", flush=True)
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait([watching, stopper], return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if stop.is_set():
            return status
        print("consent-ledger: every member has stopped", file=sys.stderr, flush=True)
        return 1
    finally:
        if watching is not None:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
        await members.stop()


def cluster_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="consent-ledger cluster")
    sub = parser.add_subparsers(dest="action", required=True)
    init = sub.add_parser("init", help="write a cluster's configuration and keys")
    init.add_argument("--nodes", type=int, default=3)
    init.add_argument("--dir", type=Path, required=True)
    where = init.add_mutually_exclusive_group()
    where.add_argument("--host", default="127.0.0.1",
                       help="every member on this host (default: loopback)")
    where.add_argument("--hosts", metavar="H1,H2,...",
                       help="member K on the K-th host (one per member, spares included)")
    init.add_argument("--base-port", type=int,
                      help=f"with --host, members listen on consecutive ports from here "
                      f"(default {LOOPBACK_PORT}; 0: any free ports); with --hosts, every "
                      f"member on this port (default {HOSTS_PORT})")
    init.add_argument("--origin")
    init.add_argument("--spares", type=int, default=0,
                      help="members pinned in the cluster file but not voters until added")
    up = sub.add_parser("up", help="run every member of a local cluster")
    up.add_argument("--dir", type=Path, required=True)
    status = sub.add_parser("status", help="every member's view: roles, sizes, lag, "
                            "readiness; exits 1 unless the cluster takes writes")
    status.add_argument("--dir", type=Path, required=True)
    status.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    for action in ("add", "remove"):
        change = sub.add_parser(action, help=f"{action} one voter (signed by the operator key)")
        change.add_argument("--dir", type=Path, required=True)
        change.add_argument("--member", required=True)
        change.add_argument("--via", help="a member's URL (default: the first voter's)")
        change.add_argument("--operator-key", type=Path,
                            help="default: DIR/keys/operator.key")
    args = parser.parse_args(argv)
    if args.action in ("add", "remove"):
        return asyncio.run(_change_membership(args))
    if args.action == "status":
        return _status(load_cluster(args.dir / "cluster.toml"), as_json=args.json)
    if args.action == "init":
        hosts = None if args.hosts is None else [h.strip() for h in args.hosts.split(",")]
        default_port = LOOPBACK_PORT if hosts is None else HOSTS_PORT
        config = init_cluster(args.dir, nodes=args.nodes, host=args.host,
                              base_port=args.base_port if args.base_port is not None
                              else default_port, origin=args.origin,
                              spares=args.spares, hosts=hosts)
        print(f"wrote a {len(config.members)}-member cluster for {config.origin} in {args.dir}")
        for m in config.members:
            print(f"  consent-ledger node --config {args.dir / (m.id + '.toml')}   # {m.url}")
        return 0
    load_config(file=args.dir / "n1.toml")  # fail early, in one line, on a broken directory
    return asyncio.run(run_cluster(args.dir))


def _status(cluster: ClusterConfig, *, as_json: bool) -> int:
    views = asyncio.run(cluster_status.gather_views(cluster))
    healthy, summary = cluster_status.judge(views, cluster)
    if as_json:
        print(cluster_status.as_json(views, healthy, summary))
    else:
        print(f"{cluster.origin}: {summary}")
        for line in cluster_status.render(views, cluster_status.voters_now(views, cluster)):
            print("  " + line)
    return 0 if healthy else 1


async def _demo(directory: Path, leader: str, events: int) -> int:
    # The demo is a client like any other, in its own process: it shares neither the
    # members' event loops nor their cores.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "node.cli", "demo", "--log", leader,
        "--operator-key", str(directory / "keys" / "operator.key"), "--events", str(events))
    return await proc.wait()


def up_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="consent-ledger up",
        description="run a local cluster on loopback (made on first use) and the demo")
    parser.add_argument("--dir", type=Path, default=Path("consent-cluster"))
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--base-port", type=int, default=7101)
    parser.add_argument("--demo-events", type=int, default=2000, metavar="N")
    parser.add_argument("--once", action="store_true", help="exit after the demo")
    args = parser.parse_args(argv)
    if not (args.dir / "cluster.toml").exists():
        init_cluster(args.dir, nodes=args.nodes, host="127.0.0.1", base_port=args.base_port,
                     origin=None)

    async def demo(leader: str, cluster: ClusterConfig) -> int:
        return await _demo(args.dir, leader, args.demo_events)

    return asyncio.run(run_cluster(args.dir, then=demo, once=args.once))


async def _change_membership(args: argparse.Namespace) -> int:
    from client.keys import load_private_key
    from node.cluster_api import MEMBERSHIP_PATH, OPERATOR_SIGNATURE, membership_message

    cluster = load_cluster(args.dir / "cluster.toml")
    cluster.member(args.member)
    key = load_private_key(args.operator_key or args.dir / "keys" / "operator.key")
    body = json.dumps({args.action: args.member, "at": time.time_ns() // 1_000_000}).encode()
    sig = base64.b64encode(key.sign(membership_message(cluster.origin, body))).decode()
    url = args.via or next(m.url for m in cluster.members if m.voter)
    # A 503 (no leader yet, leadership moving) is retried for a while: the same signed
    # request, and a change already in force is answered as done.
    deadline = time.monotonic() + MEMBERSHIP_RETRY_S
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.post(
                        url.rstrip("/") + MEMBERSHIP_PATH, data=body,
                        headers={OPERATOR_SIGNATURE: sig, "Content-Type": "application/json"},
                        timeout=aiohttp.ClientTimeout(total=30)) as resp:
                    status = resp.status
                    try:
                        answer = json.loads(await resp.read() or b"{}")
                    except ValueError:
                        answer = {}
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise ConfigError(f"{args.action} {args.member}: {url} did not answer "
                                  f"({exc or type(exc).__name__})") from None
            if status != 503 or time.monotonic() >= deadline:
                break
            await asyncio.sleep(1.0)  # the server's Retry-After
    if status != 200 or not isinstance(answer, dict) or "voters" not in answer:
        detail = answer.get("detail", status) if isinstance(answer, dict) else status
        raise ConfigError(f"{args.action} {args.member}: {detail}")
    print(f"voters: {' '.join(answer['voters'])} (committed by {answer['committed_by']})")
    return 0
