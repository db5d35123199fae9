"""One node on loopback: durable events/s and latency, beside the plain SQLite ceiling.

    python -m bench.bench_node [--seconds S] [--events N] [--held H]

Starts a real node process (its own data directory, synchronous=FULL), registers a
controller, pre-signs every request body before timing (so the load generator spends
its CPU on HTTP, not on Ed25519), then measures closed-loop throughput with 1, 16 and
256 concurrent clients for single-event requests and for batches of 100 (one batch
signature each), and latency at half the peak batched load (open loop). Every reply
carries a signed checkpoint covering its events, so request latency *is* publication
latency. Then half peak is held for H seconds, long enough for a state snapshot to fall
due, and the requests sent while one was being built are told apart. Last, the same
entry rows are inserted into a fresh SQLite database with the same durability, in
transactions of 1,000, for the ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import aiohttp
import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from bench.bench_events import sample_grants
from ledger import merkle
from ledger.entry import LogEntry
from ledger.events import ControllerRegister, Grant
from ledger.signed import SignedEvent, public_bytes, sign_batch, sign_event

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from nodeproc import NodeProcess


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def fresh_grants(n: int) -> list[Grant]:
    import dataclasses

    t = now_ms()
    return [dataclasses.replace(g, consented_at=t, valid_until=t + 10**10)
            for g in sample_grants(n)]


def body_of(items: list[SignedEvent]) -> bytes:
    if len(items) == 1:
        return items[0].encode()
    return msgpack.packb([s.to_wire() for s in items], use_bin_type=True)


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))] * 1000


async def closed_loop(url: str, bodies: list[bytes], per_body: int, clients: int,
                      seconds: float) -> tuple[float, list[float]]:
    queue = list(reversed(bodies))
    latencies: list[float] = []
    done = 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def client() -> None:
            nonlocal done
            while queue and time.perf_counter() < deadline:
                body = queue.pop()
                started = time.perf_counter()
                async with session.post(f"{url}/v1/events", data=body, headers={
                        "Content-Type": "application/msgpack"}) as resp:
                    await resp.read()
                    if resp.status == 503:  # pushback: honour Retry-After, as clients must
                        queue.append(body)
                        await asyncio.sleep(float(resp.headers.get("Retry-After", "1")))
                        continue
                    if resp.status != 200:
                        raise RuntimeError(f"node answered {resp.status}: {await resp.text()}")
                latencies.append(time.perf_counter() - started)
                done += per_body

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return done / elapsed, latencies


async def paced_posts(endpoints: list[str], bodies: list[bytes], per_second: float,
                      seconds: float, content_type: str,
                      sent_at: list[float] | None = None) -> list[float]:
    """POST `bodies` at a fixed rate whatever the replies do (no coordinated omission),
    round-robin over `endpoints`; each one's latency (and, into `sent_at`, when each was
    sent: wall-clock seconds, in the same order)."""
    latencies: list[float] = []
    interval = 1 / per_second
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async def one(endpoint: str, body: bytes) -> None:
            started, wall = time.perf_counter(), time.time()
            async with session.post(endpoint, data=body,
                                    headers={"Content-Type": content_type}) as resp:
                await resp.read()
            latencies.append(time.perf_counter() - started)
            if sent_at is not None:
                sent_at.append(wall)

        tasks = []
        start = time.perf_counter()
        for i, body in enumerate(bodies[: int(per_second * seconds)]):
            delay = start + i * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing the load, not synchronising a test
            tasks.append(asyncio.create_task(one(endpoints[i % len(endpoints)], body)))
        await asyncio.gather(*tasks)
    return latencies


def snapshot_builds(node: NodeProcess) -> list[tuple[float, float]]:
    """When the node built state snapshots: (start, end), wall-clock seconds; a build
    still running ends now."""
    spans, started = [], None
    for line in node.stderr().splitlines():
        if '"state snapshot' not in line:
            continue
        record = json.loads(line)
        at = datetime.fromisoformat(record["ts"].replace("Z", "+00:00")).timestamp()
        if record["msg"] == "state snapshot build started":
            started = at
        elif started is not None and record["msg"] in ("state snapshot stored",
                                                        "state snapshot not stored"):
            spans.append((started, at))
            started = None
    if started is not None:
        spans.append((started, time.time()))
    return spans


async def half_peak(node: NodeProcess, url: str, key: Ed25519PrivateKey, per_second: float,
                    seconds: float, label: str, note: str) -> None:
    """An open loop at `per_second`, and apart from the rest the requests sent while the
    node had a state snapshot built: by a process at the lowest priority, which still
    shares the machine with the node."""
    grants = fresh_grants(int(per_second * seconds) + 100)
    bodies = [body_of(sign_batch(grants[i:i + 100], key)) for i in range(0, len(grants), 100)]
    sent_at: list[float] = []
    latencies = await paced_posts([f"{url}/v1/events"], bodies, per_second / 100, seconds,
                                  "application/msgpack", sent_at)
    builds = snapshot_builds(node)
    beside = [any(start <= at <= end for start, end in builds) for at in sent_at]
    during = [lat for lat, b in zip(latencies, beside, strict=True) if b]
    print(f"{label:<34}{per_second:>10,.0f}{pct(latencies, 50):>9.1f}"
          f"{pct(latencies, 99):>9.1f}   <- {note}", flush=True)
    if during:
        outside = [lat for lat, b in zip(latencies, beside, strict=True) if not b]
        print(f"{f'  {len(during)} of {len(latencies)} beside a snapshot build':<34}{'':>10}"
              f"{pct(during, 50):>9.1f}{pct(during, 99):>9.1f}", flush=True)
        if outside:
            print(f"{'  the others':<34}{'':>10}{pct(outside, 50):>9.1f}"
                  f"{pct(outside, 99):>9.1f}", flush=True)


async def seed_grants(url: str, data_dir: Path, n: int) -> tuple[list[Grant], str]:
    """Register a controller on the node at `url` and grant `n` subjects (batches of 500);
    the grants and the log's verifier key."""
    key = await register_controller(url, data_dir)
    grants = fresh_grants(n)
    async with aiohttp.ClientSession() as s:
        for i in range(0, n, 500):
            async with s.post(f"{url}/v1/events",
                              data=body_of(sign_batch(grants[i:i + 500], key)),
                              headers={"Content-Type": "application/msgpack"}) as resp:
                assert resp.status == 200, await resp.text()
        async with s.get(f"{url}/v1/keys") as resp:
            return grants, (await resp.json())["log"]


def sqlite_ceiling(rows: list[tuple[int, bytes, bytes, bytes]], directory: Path) -> float:
    db = sqlite3.connect(directory / "ceiling.sqlite", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE entries (idx INTEGER PRIMARY KEY, event_id BLOB UNIQUE, "
               "leaf BLOB UNIQUE, data BLOB)")
    started = time.perf_counter()
    for i in range(0, len(rows), 1000):
        db.execute("BEGIN")
        db.executemany("INSERT INTO entries VALUES (?, ?, ?, ?)", rows[i:i + 1000])
        db.execute("COMMIT")
    elapsed = time.perf_counter() - started
    db.close()
    return len(rows) / elapsed


async def register_controller(url: str, data_dir: Path) -> Ed25519PrivateKey:
    """A new key for shop.example, registered with the node's operator key."""
    operator = load_pem_private_key((data_dir / "operator.key").read_bytes(), None)
    assert isinstance(operator, Ed25519PrivateKey)
    key = Ed25519PrivateKey.generate()
    register = ControllerRegister(controller="shop.example", name="Bench Shop",
                                  contact="dpo@shop.example", key=public_bytes(key),
                                  registered_at=now_ms())
    async with aiohttp.ClientSession() as s, s.post(
            f"{url}/v1/events", data=sign_event(register, operator).encode(),
            headers={"Content-Type": "application/msgpack"}) as resp:
        assert resp.status == 200, await resp.text()
    return key


async def run(seconds: float, events: int, directory: Path, held: float) -> None:
    node = NodeProcess(directory / "node", "--origin", "bench.example/node")
    url = node.start()
    try:
        key = await register_controller(url, directory / "node")

        print(f"{'scenario':<34}{'events/s':>10}{'p50 ms':>9}{'p99 ms':>9}", flush=True)
        peak_batched = 0.0
        for per_request in (1, 100):
            for clients in (1, 16, 256):
                count = events if per_request == 100 else min(events, 30_000)
                grants = fresh_grants(count)
                if per_request == 1:
                    bodies = [body_of([sign_event(g, key)]) for g in grants]
                else:
                    bodies = [body_of(sign_batch(grants[i:i + 100], key))
                              for i in range(0, count, 100)]
                r, lat = await closed_loop(url, bodies, per_request, clients, seconds)
                if per_request == 100:
                    peak_batched = max(peak_batched, r)
                label = f"{'single events' if per_request == 1 else 'batches of 100'}, " \
                        f"{clients} clients"
                print(f"{label:<34}{r:>10,.0f}{pct(lat, 50):>9.1f}{pct(lat, 99):>9.1f}",
                      flush=True)

        half = peak_batched / 2
        await half_peak(node, url, key, half, seconds, "half peak (open loop), batches",
                        "publication latency: reply = signed checkpoint")
        if held:
            await half_peak(node, url, key, half, held, f"half peak held {held:.0f} s",
                            "long enough for a state snapshot to fall due")
    finally:
        node.stop()

    sample = [sign_event(g, key) for g in sample_grants(50_000)]
    rows = []
    prev = bytes(32)
    for i, signed in enumerate(sample):
        entry = LogEntry(index=i, time=now_ms(), prev=prev, signed=signed)
        prev = merkle.leaf_hash(entry.encoded)
        rows.append((i, signed.id, prev, entry.encoded))
    ceiling = sqlite_ceiling(rows, directory)
    print(f"{'plain SQLite ceiling (1000/tx, FULL)':<34}{ceiling:>10,.0f}  rows/s", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="per scenario")
    parser.add_argument("--events", type=int, default=100_000, help="pre-signed per scenario")
    parser.add_argument("--held", type=float, default=40.0,
                        help="seconds of half peak held at the end, long enough for a state "
                             "snapshot (every 100,000 entries) to be built (0: none)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        asyncio.run(run(args.seconds, args.events, Path(tmp), args.held))


if __name__ == "__main__":
    main()
