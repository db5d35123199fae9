"""Quorum-replicated writes: a 3-member cluster beside one node and a 3-member etcd.

    python -m bench.bench_cluster [--seconds S] [--events N] [--runs R] [--no-etcd]
                                  [--election-ticks LO,HI --heartbeat-ticks N]

All in one run, on this machine (the members, etcd and the load generator share its
cores). For each target, batches of 100 pre-signed events (bench_node's load generator)
with 16 and 256 concurrent clients, closed loop, then half of the best of the two in an
open loop (no coordinated omission). Targets:

- one node (bench_node's setup);
- a 3-member cluster made by node/cluster_cli.init_cluster, writes spread over all
  members as clients would send them (followers forward to the leader), then the same
  cluster with every write sent to the leader. A reply carries the checkpoint cosigned
  by a majority of members, so request latency is publication latency (checked once).
  The cluster runs with init's Raft timing unless --election-ticks/--heartbeat-ticks
  rewrite it in cluster.toml (as an operator would), e.g. 100,200 and 10: etcd's
  default 1 s election timeout and 100 ms heartbeat at init's 10 ms tick;
- a 3-member etcd cluster, if `etcd` is on PATH (Debian/Ubuntu: `apt-get install -y
  etcd-server etcd-client`; elsewhere a release binary on PATH), driven over its v3
  HTTP/JSON gateway (POST /v3/kv/put) with one put per event, the value as large as one
  of our signed events, the same concurrency spread over its members. etcd syncs its
  WAL before answering, as our members sync SQLite. Without etcd that part is skipped
  and the reason printed.

CPU is each member's user+system time over the scenario (/proc/PID/stat), in % of one
core, busiest member first (in a cluster, usually the leader), and all members' CPU
time per acknowledged event; "gen" is this process, the load generator. A cluster
scenario during which the leader changed says so: an election fails the writes in
flight (503, resubmitted after Retry-After). The load average is printed per run: the
machine is shared, so run several times (--runs) and read the ranges. events/s
counts acknowledged events only (a 503 is retried after its Retry-After, as clients
must); a latency of "-" means no request was acknowledged in the scenario.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.bench_node import (
    body_of,
    closed_loop,
    fresh_grants,
    paced_posts,
    pct,
    register_controller,
)
from ledger.signed import sign_batch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from clusterproc import LocalCluster
from nodeproc import NodeProcess

ETCD_INSTALL = "apt-get install -y etcd-server etcd-client (Debian/Ubuntu)"
BATCH = 100
CLIENTS = (16, 256)
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


@dataclass
class Result:
    target: str
    scenario: str
    rate: float
    p50: float
    p99: float
    cpu: list[float]  # % of a core per member
    gen: float  # % of a core for the load generator


@dataclass
class Target:
    name: str
    urls: list[str]  # where clients send writes
    pids: list[int]  # whose CPU is measured
    leader: Callable[[], str | None] = lambda: None
    results: list[Result] = field(default_factory=list)

    @contextmanager
    def measure(self, scenario: str) -> Iterator[Callable[[float, list[float]], None]]:
        leader = self.leader()
        before = [cpu_seconds(p) for p in self.pids]
        gen_before = time.process_time()
        started = time.perf_counter()

        def record(rate: float, latencies: list[float]) -> None:
            elapsed = time.perf_counter() - started
            cpu = [100 * (cpu_seconds(p) - b) / elapsed for p, b in zip(self.pids, before,
                                                                          strict=True)]
            gen = 100 * (time.process_time() - gen_before) / elapsed
            cpu.sort(reverse=True)
            now = self.leader()
            if now != leader:
                scenario_ = f"{scenario} [leader changed: {leader} -> {now}]"
            else:
                scenario_ = scenario
            result = Result(self.name, scenario_, rate, percentile(latencies, 50),
                            percentile(latencies, 99),
                            cpu, gen)
            self.results.append(result)
            print(row(result), flush=True)

        yield record


def percentile(latencies: list[float], p: float) -> float:
    return pct(latencies, p) if latencies else math.nan


def ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f}"


def cpu_per_event(r: Result) -> float:
    """All members' CPU time per acknowledged event, in microseconds."""
    return sum(r.cpu) / 100 / r.rate * 1e6 if r.rate else math.nan


def row(r: Result) -> str:
    cpu = " ".join(f"{c:.0f}" for c in r.cpu)
    per_event = cpu_per_event(r)
    return (f"| {r.target} | {r.scenario} | {r.rate:,.0f} | {ms(r.p50)} | {ms(r.p99)} "
            f"| {cpu} | {'-' if math.isnan(per_event) else f'{per_event:.0f}'} "
            f"| {r.gen:.0f} |")


HEADER = ("| target | scenario | events/s | p50 ms | p99 ms | CPU % per member, busiest first "
          "| members' CPU µs/event | gen CPU % |\n"
          "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")


def split(items: Sequence[bytes], parts: int) -> list[list[bytes]]:
    return [list(items[i::parts]) for i in range(parts)]


async def spread_closed(urls: list[str], bodies: list[bytes], clients: int,
                        seconds: float) -> tuple[float, list[float]]:
    """bench_node's closed loop, its clients shared out over the members."""
    shares = [clients // len(urls) + (i < clients % len(urls)) for i in range(len(urls))]
    runs = await asyncio.gather(*(closed_loop(url, part, BATCH, n, seconds)
                                  for url, part, n in zip(urls, split(bodies, len(urls)),
                                                          shares, strict=True)))
    return sum(r for r, _ in runs), [x for _, lat in runs for x in lat]


async def spread_open(urls: list[str], bodies: list[bytes], per_second: float,
                      seconds: float) -> list[float]:
    """bench_node's open loop, its requests dealt to the members in turn.

    One paced stream, evenly spaced: one stream per member, started together, would
    send their requests in simultaneous bursts (one to each member at the same instant),
    which is not the load the rate describes."""
    return await paced_posts([f"{url}/v1/events" for url in urls], bodies, per_second,
                             seconds, "application/msgpack")


def batches(key: Ed25519PrivateKey, events: int) -> list[bytes]:
    grants = fresh_grants(events)
    return [body_of(sign_batch(grants[i:i + BATCH], key)) for i in range(0, events, BATCH)]


async def ledger_scenarios(target: Target, key: Ed25519PrivateKey, events: int,
                           seconds: float) -> None:
    peak = 0.0
    for clients in CLIENTS:
        bodies = batches(key, events)
        with target.measure(f"batches of {BATCH}, {clients} clients") as record:
            rate, lat = await spread_closed(target.urls, bodies, clients, seconds)
            record(rate, lat)
        peak = max(peak, rate)
    half = peak / 2
    bodies = batches(key, (int(half * seconds) // BATCH + 1) * BATCH)
    with target.measure(f"half peak, open loop ({half:,.0f}/s offered)") as record:
        lat = await spread_open(target.urls, bodies, half / BATCH, seconds)
        record(half, lat)


async def check_cosigned_reply(url: str, key: Ed25519PrivateKey, quorum: int) -> None:
    """A write's reply is the checkpoint with a majority's cosignatures: latency measured
    on replies is publication latency."""
    async with aiohttp.ClientSession() as s, s.post(
            f"{url}/v1/events", data=batches(key, BATCH)[0],
            headers={"Content-Type": "application/msgpack"}) as resp:
        answer = json.loads(await resp.read())
    note = answer["checkpoint"]
    signatures = note.split("\n\n", 1)[1].count("\u2014 ")
    if resp.status != 200 or signatures < 1 + quorum:
        raise RuntimeError(f"the reply is not a cosigned checkpoint: {resp.status} {note!r}")
    print(f"(a reply's checkpoint carries {signatures} signatures: the log's and "
          f"{signatures - 1} members' cosignatures, quorum {quorum})", flush=True)


async def single_node(directory: Path, events: int, seconds: float) -> Target:
    node = NodeProcess(directory / "node", "--origin", "bench.example/node")
    url = node.start()
    try:
        assert node.proc is not None
        target = Target("one node", [url], [node.proc.pid])
        key = await register_controller(url, directory / "node")
        await ledger_scenarios(target, key, events, seconds)
        return target
    finally:
        node.stop()


@dataclass(frozen=True)
class RaftTiming:
    election_ticks: tuple[int, int] | None
    heartbeat_ticks: int | None

    def apply(self, cluster_file: Path) -> str:
        """Rewrite init's timing lines in cluster.toml; describe the timing in force."""
        lines = cluster_file.read_text().splitlines()
        for n, line in enumerate(lines):
            if self.election_ticks and line.startswith("election_ticks ="):
                lines[n] = f"election_ticks = [{self.election_ticks[0]}, " \
                           f"{self.election_ticks[1]}]"
            if self.heartbeat_ticks and line.startswith("heartbeat_ticks ="):
                lines[n] = f"heartbeat_ticks = {self.heartbeat_ticks}"
        cluster_file.write_text("\n".join(lines) + "\n")
        timing = {k.strip(): v.strip() for k, v in (line.split("=", 1) for line in lines
                  if line.split("=")[0].strip() in ("tick_ms", "election_ticks",
                                                    "heartbeat_ticks"))}
        tick = int(timing["tick_ms"])
        lo, hi = (int(x) for x in timing["election_ticks"].strip("[]").split(","))
        return f"election {lo * tick}-{hi * tick} ms, heartbeat " \
               f"{int(timing['heartbeat_ticks']) * tick} ms"


async def cluster(directory: Path, events: int, seconds: float,
                  timing: RaftTiming) -> list[Target]:
    local = LocalCluster(directory / "cluster")
    print(f"(cluster Raft timing: {timing.apply(local.dir / 'cluster.toml')})", flush=True)
    local.start()
    try:
        leader = local.wait_leader()
        members = sorted(local.members)
        pids = [local.members[m].proc.pid for m in members]  # type: ignore[union-attr]
        key = await register_controller(local.url(leader), local.dir / "keys")
        await check_cosigned_reply(local.url(members[0] if members[0] != leader
                                             else members[1]), key, local.config.quorum)
        def leader_now() -> str | None:
            for m in members:
                info = local.info(m)
                if info and info["role"] == "leader":
                    return m
            return None

        print(f"(cluster members {', '.join(members)}; {leader} leads)", flush=True)
        spread = Target("3-member cluster, writes to all members",
                        [local.url(m) for m in members], pids, leader_now)
        await ledger_scenarios(spread, key, events, seconds)
        now = local.wait_leader()
        print(f"({now} leads)", flush=True)
        only = Target("3-member cluster, writes to the leader", [local.url(now)], pids,
                      leader_now)
        await ledger_scenarios(only, key, events, seconds)
        return [spread, only]
    finally:
        local.stop_all()


# ------------------------------------------------------------------------- etcd


class EtcdCluster:
    """Three etcd members on loopback, each with its own data directory (WAL fsynced)."""

    def __init__(self, directory: Path, binary: str) -> None:
        from node.cluster_cli import free_ports

        ports = free_ports(6)
        self.client_urls = [f"http://127.0.0.1:{ports[i]}" for i in range(3)]
        peers = [f"http://127.0.0.1:{ports[3 + i]}" for i in range(3)]
        initial = ",".join(f"e{i + 1}={peers[i]}" for i in range(3))
        self.procs: list[subprocess.Popen[bytes]] = []
        for i in range(3):
            log = open(directory / f"etcd-e{i + 1}.log", "wb")  # noqa: SIM115
            self.procs.append(subprocess.Popen(
                [binary, "--name", f"e{i + 1}", "--data-dir", str(directory / f"e{i + 1}"),
                 "--listen-client-urls", self.client_urls[i],
                 "--advertise-client-urls", self.client_urls[i],
                 "--listen-peer-urls", peers[i], "--initial-advertise-peer-urls", peers[i],
                 "--initial-cluster", initial, "--initial-cluster-state", "new",
                 "--initial-cluster-token", "bench", "--log-level", "warn"],
                stdout=log, stderr=log))

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                for url in self.client_urls:
                    put_once(url, b"ready", b"1")
                return
            except (OSError, urllib.error.URLError):
                time.sleep(0.05)  # polling a condition with a deadline
        raise RuntimeError(f"etcd did not accept a put within {timeout} s")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def put_body(key: bytes, value: bytes) -> bytes:
    return json.dumps({"key": base64.b64encode(key).decode(),
                       "value": base64.b64encode(value).decode()}).encode()


def put_once(url: str, key: bytes, value: bytes) -> None:
    request = urllib.request.Request(f"{url}/v3/kv/put", data=put_body(key, value),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=2) as resp:
        resp.read()


async def etcd_closed(urls: list[str], bodies: list[bytes], clients: int,
                      seconds: float) -> tuple[float, list[float]]:
    """The same closed loop, one put per request; client n talks to member n mod 3."""
    queue = list(reversed(bodies))
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as session:
        async def client(url: str) -> None:
            while queue and time.perf_counter() < deadline:
                body = queue.pop()
                started = time.perf_counter()
                async with session.post(url, data=body, headers={
                        "Content-Type": "application/json"}) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"etcd answered {resp.status}: {await resp.text()}")
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(client(f"{urls[n % len(urls)]}/v3/kv/put")
                               for n in range(clients)))
        elapsed = time.perf_counter() - started
    return len(latencies) / elapsed, latencies


async def etcd_open(urls: list[str], bodies: list[bytes], per_second: float,
                    seconds: float) -> list[float]:
    return await paced_posts([f"{u}/v3/kv/put" for u in urls], bodies, per_second, seconds,
                             "application/json")


async def etcd(directory: Path, events: int, seconds: float, key: Ed25519PrivateKey,
               binary: str) -> Target:
    (directory / "etcd").mkdir()
    members = EtcdCluster(directory / "etcd", binary)
    try:
        members.wait_ready()
        target = Target("etcd 3 members, one put per event", members.client_urls,
                        [p.pid for p in members.procs])
        # Values are our signed events (same size); keys are distinct, like event ids.
        grants = fresh_grants(events)
        signed = [s for i in range(0, events, BATCH) for s in sign_batch(grants[i:i + BATCH], key)]
        bodies = [put_body(b"consent/" + s.id.hex().encode(), s.encode()) for s in signed]
        print(f"(etcd values: {len(signed[0].encode())} bytes, the size of one signed event)",
              flush=True)
        peak = 0.0
        for clients in CLIENTS:
            with target.measure(f"single puts, {clients} clients") as record:
                rate, lat = await etcd_closed(members.client_urls, bodies, clients, seconds)
                record(rate, lat)
            peak = max(peak, rate)
        half = peak / 2
        with target.measure(f"half peak, open loop ({half:,.0f}/s offered)") as record:
            lat = await etcd_open(members.client_urls, bodies, half, seconds)
            record(half, lat)
        return target
    finally:
        members.stop()


# ------------------------------------------------------------------------- the run


async def run(directory: Path, events: int, seconds: float, use_etcd: bool,
              timing: RaftTiming) -> list[Result]:
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, "
          f"{os.cpu_count()} CPUs", flush=True)
    print(HEADER, flush=True)
    targets = [await single_node(directory, events, seconds)]
    targets += await cluster(directory, events, seconds, timing)
    binary = shutil.which("etcd")
    if not use_etcd:
        print("(etcd: skipped, --no-etcd)", flush=True)
    elif binary is None:
        print(f"(etcd: skipped, not installed; to compare, install it: {ETCD_INSTALL})",
              flush=True)
    else:
        targets.append(await etcd(directory, events, seconds, Ed25519PrivateKey.generate(),
                                  binary))
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end",
          flush=True)
    return [r for t in targets for r in t.results]


def ranges(runs: list[list[Result]]) -> None:
    """Each figure's lowest–highest over the runs, row by row."""
    def span(values: list[float], fmt: str) -> str:
        values = [v for v in values if not math.isnan(v)]
        if not values:
            return "-"
        lo, hi = min(values), max(values)
        return format(lo, fmt) if format(lo, fmt) == format(hi, fmt) else \
            f"{format(lo, fmt)}–{format(hi, fmt)}"

    print(f"\n### {len(runs)} runs: ranges\n{HEADER}", flush=True)
    for rows in zip(*runs, strict=True):
        first = rows[0]
        scenario = first.scenario.split(" [")[0].split(" (")[0] \
            if first.scenario.startswith("half") else first.scenario.split(" [")[0]
        elections = sum(1 for r in rows if "leader changed" in r.scenario)
        if elections:
            scenario += f" [leader changed in {elections} of {len(rows)} runs]"
        cpu = " ".join(span([r.cpu[m] for r in rows], ".0f") for m in range(len(first.cpu)))
        print(f"| {first.target} | {scenario} | {span([r.rate for r in rows], ',.0f')} "
              f"| {span([r.p50 for r in rows], '.1f')} | {span([r.p99 for r in rows], '.1f')} "
              f"| {cpu} | {span([cpu_per_event(r) for r in rows], '.0f')} "
              f"| {span([r.gen for r in rows], '.0f')} |", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="per scenario")
    parser.add_argument("--events", type=int, default=60_000, help="pre-signed per scenario")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--no-etcd", dest="etcd", action="store_false")
    parser.add_argument("--election-ticks", metavar="LO,HI",
                        help="the cluster's election timeout range, in ticks (default: init's)")
    parser.add_argument("--heartbeat-ticks", type=int, metavar="N",
                        help="the cluster's heartbeat period, in ticks (default: init's)")
    args = parser.parse_args(argv)
    election = None
    if args.election_ticks:
        lo, hi = (int(x) for x in args.election_ticks.split(","))
        election = (lo, hi)
    timing = RaftTiming(election, args.heartbeat_ticks)
    runs = []
    for n in range(args.runs):
        if args.runs > 1:
            print(f"\n### run {n + 1} of {args.runs}", flush=True)
        with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
            runs.append(asyncio.run(run(Path(tmp), args.events, args.seconds, args.etcd,
                                         timing)))
    if args.runs > 1:
        ranges(runs)


if __name__ == "__main__":
    main()
