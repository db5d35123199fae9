"""Proven status: answers served per second by a node, and verified per second by a client.

    python -m bench.bench_status [--subjects N] [--seconds S]

A real node process gets N grants (batch-signed, two purposes each); then GET
/v1/status is driven by 64 concurrent clients for S seconds (answers served/s), and a
sample of answers is verified with client.status.verify_status on one core, with the
checkpoint's signature check included and, separately, with it done once (as an SDK
that already holds the verified checkpoint does).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.bench_node import now_ms, seed_grants
from client.status import verify_status
from ledger.checkpoint import Checkpoint, open_checkpoint
from ledger.note import new_verifier

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from nodeproc import NodeProcess  # the tests' process harness

PURPOSE = "dpv:Marketing"


async def run(subjects: int, seconds: float, directory: Path) -> None:
    node = NodeProcess(directory / "node", "--origin", "bench.example/status")
    url = node.start()
    try:
        grants, vkey = await seed_grants(url, directory / "node", subjects)
        async with aiohttp.ClientSession() as s:
            served, answers = await drive(s, url, [g.subject for g in grants], seconds)
        print(f"status answers served by the node (64 clients, {subjects:,} subjects x 2 "
              f"purposes): {served:,.0f} /s", flush=True)
    finally:
        node.stop()

    verifier = new_verifier(vkey)

    def full(note: bytes) -> Checkpoint:
        return open_checkpoint(note, verifier)[0]

    opened: dict[bytes, Checkpoint] = {}

    def cached(note: bytes) -> Checkpoint:
        if note not in opened:
            opened[note] = full(note)
        return opened[note]

    for label, opener in (("checkpoint signature checked each time", full),
                          ("checkpoint already verified", cached)):
        started = time.perf_counter()
        for subject, answer in answers:
            verify_status(answer, controller="shop.example", subject=subject, purpose=PURPOSE,
                          open_checkpoint=opener, now_ms=now_ms())
        rate = len(answers) / (time.perf_counter() - started)
        print(f"status answers verified on one core, {label}: {rate:,.0f} /s", flush=True)


async def drive(session: aiohttp.ClientSession, url: str, subjects: list[bytes],
                seconds: float) -> tuple[float, list[tuple[bytes, Any]]]:
    kept: list[tuple[bytes, Any]] = []
    done = 0
    deadline = time.perf_counter() + seconds
    rng = random.Random(7)

    async def client() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            subject = rng.choice(subjects)
            async with session.get(f"{url}/v1/status", params={
                    "controller": "shop.example", "subject": subject.hex(),
                    "purpose": PURPOSE}) as resp:
                answer = await resp.json()
            done += 1
            if len(kept) < 5_000:
                kept.append((subject, answer))

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(64)))
    return done / (time.perf_counter() - started), kept


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subjects", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        asyncio.run(run(args.subjects, args.seconds, Path(tmp)))


if __name__ == "__main__":
    main()
