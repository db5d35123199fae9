"""The regulator's audit: entries verified per second, against the signature ceiling.

    python -m bench.bench_audit [--events N] [--batch-signed]

A real node process gets N grants, each with its own Ed25519 signature (the worst
case: one signature check per entry; --batch-signed signs 500 at a time instead). The
audit (client/audit.py) then runs twice in this process: cold (every tile fetched over
loopback, then verified) and resumed (every tile from the local store, so the figure is
verification alone). The ceiling printed beside it is one core's Ed25519 verifications
per second times the cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.bench_node import body_of, fresh_grants, register_controller
from client.audit import Auditor, AuditResult, AuditStore
from ledger.checkpoint import Checkpoint, open_checkpoint
from ledger.entry import LogEntry
from ledger.note import new_verifier
from ledger.signed import sign_batch, sign_event
from ledger.state import LedgerState
from ledger.tiles import TILE_WIDTH, entry_tile_for, format_tile_path, parse_entry_bundle
from ledger.tree import MerkleTree

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from nodeproc import NodeProcess  # the tests' process harness


def ed25519_per_core(n: int = 2000) -> float:
    key = Ed25519PrivateKey.generate()
    public, message = key.public_key(), b"m" * 32
    sig = key.sign(message)
    start = time.perf_counter()
    for _ in range(n):
        public.verify(sig, message)
    return n / (time.perf_counter() - start)


async def fill(url: str, data_dir: Path, events: int, batch_signed: bool) -> str:
    key = await register_controller(url, data_dir)
    grants = fresh_grants(events)
    async with aiohttp.ClientSession() as s:
        for i in range(0, events, 500):
            chunk = grants[i:i + 500]
            signed = sign_batch(chunk, key) if batch_signed else [sign_event(g, key)
                                                                  for g in chunk]
            async with s.post(f"{url}/v1/events", data=body_of(signed),
                              headers={"Content-Type": "application/msgpack"}) as resp:
                assert resp.status == 200, await resp.text()
        async with s.get(f"{url}/v1/keys") as resp:
            vkey: str = (await resp.json())["log"]
    return vkey


async def audit(url: str, vkey: str, state: Path, *, processes: bool = True) -> AuditResult:
    verifier = new_verifier(vkey)

    def opener(note: bytes) -> Checkpoint:
        return open_checkpoint(note, verifier)[0]

    auditor = Auditor(url, open_log_checkpoint=opener, log_verifier=verifier,
                      store=AuditStore(state, verifier.name), processes=processes)
    result = await auditor.run()
    assert result.failure is None, result.failure
    return result


def sequential(store: AuditStore, size: int, *, signatures: bool) -> float:
    """Entries/s of a plain one-thread replay of the stored bundles: the baseline, and
    (without signatures) the ceiling of the replay's sequential part."""
    bundles = [store.get(format_tile_path(entry_tile_for(i, size)))
               for i in range(0, size, TILE_WIDTH)]
    state, tree = LedgerState(), MerkleTree()
    start = time.perf_counter()
    for data in bundles:
        assert data is not None
        for raw in parse_entry_bundle(data):
            entry = LogEntry.decode(raw)
            state.replay(entry, verify_signatures=signatures)
            tree.append(entry.leaf_hash)
    return size / (time.perf_counter() - start)


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.bench_audit")
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--batch-signed", action="store_true")
    args = p.parse_args(argv)
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        node = NodeProcess(directory / "node", "--origin", "bench.example/audit")
        url = node.start()
        try:
            vkey = asyncio.run(fill(url, directory / "node", args.events, args.batch_signed))
            cold = asyncio.run(audit(url, vkey, directory / "state"))
            warm = asyncio.run(audit(url, vkey, directory / "state"))
            threads = asyncio.run(audit(url, vkey, directory / "state", processes=False))
        finally:
            node.stop()
        store = AuditStore(directory / "state", cold.origin)
        with_sigs = sequential(store, cold.size, signatures=True)
        without = sequential(store, cold.size, signatures=False)
    ceiling = ed25519_per_core()
    how = "batch-signed (500 a signature)" if args.batch_signed else "one signature each"
    print(f"log of {cold.size:,} entries, {args.events:,} grants {how}; "
          f"{warm.signatures_checked:,} signatures checked a run", flush=True)
    for name, r in (("cold: tiles fetched over loopback", cold),
                    ("resumed: tiles from the local store", warm),
                    ("resumed, signatures in threads instead", threads)):
        print(f"audit, {name}: {r.size / r.seconds:,.0f} entries/s overall "
              f"({r.seconds:.2f} s, {r.requests:,} requests), "
              f"{r.entries_verified / r.verify_seconds:,.0f} entries/s in the replay",
              flush=True)
    print(f"one-thread replay, same tiles: {with_sigs:,.0f} entries/s with signatures, "
          f"{without:,.0f} entries/s without (the sequential part's ceiling)", flush=True)
    print(f"Ed25519 verify ceiling: {ceiling:,.0f}/s a core x {cores} cores = "
          f"{ceiling * cores:,.0f}/s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
