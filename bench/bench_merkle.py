"""Merkle throughput: MerkleTree and ledger.merkle beside pymerkle 7.0.0, in one run.

    python -m bench.bench_merkle [--leaves N] [--budget SECONDS]

Each figure is one line with its unit. Both libraries hash the same entries; the
proof figures are measured on the full tree at random indexes (same seed for both).
Each timed loop stops after --budget seconds, so the run stays short at any size.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from ledger import merkle
from ledger.tree import MerkleTree

# Proofs are generated and dropped in the timed loops, as a server serialises and sends
# them; a sample is kept, untimed, for the verification loops.
VERIFY_SAMPLE = 50_000


def _line(name: str, count: int, seconds: float, unit: str) -> None:
    print(f"{name:<58} {count / seconds:>12,.0f} {unit}/s   ({count:,} in {seconds:.2f} s)",
          flush=True)


def _timed(items: Sequence[Any], fn: Callable[[Any], object], budget: float) -> tuple[int, float]:
    """Run fn over items until they run out or the budget is spent; (count, seconds)."""
    start = time.perf_counter()
    deadline = start + budget
    done = 0
    for chunk in range(0, len(items), 256):
        for item in items[chunk:chunk + 256]:
            fn(item)
        done = min(chunk + 256, len(items))
        if time.perf_counter() > deadline:
            break
    return done, time.perf_counter() - start


def bench_ledger(entries: list[bytes], indexes: list[int], pairs: list[tuple[int, int]],
                 budget: float) -> None:
    n = len(entries)
    leaf_hash = merkle.leaf_hash
    tree = MerkleTree()
    append = tree.append
    start = time.perf_counter()
    for e in entries:
        append(leaf_hash(e))
    _line(f"ledger  MerkleTree.append(leaf_hash(entry)) to {n:,}", n,
          time.perf_counter() - start, "appends")

    leaves = [leaf_hash(e) for e in entries]
    tree2 = MerkleTree()
    append = tree2.append
    start = time.perf_counter()
    for h in leaves:
        append(h)
    _line(f"ledger  MerkleTree.append(leaf hash) to {n:,}", n,
          time.perf_counter() - start, "appends")

    start = time.perf_counter()
    MerkleTree.from_leaf_hashes(leaves)
    _line(f"ledger  MerkleTree.from_leaf_hashes, {n:,} leaves", n,
          time.perf_counter() - start, "leaves")

    root = tree.root()
    done, secs = _timed(indexes, tree.inclusion_proof, budget)
    _line(f"ledger  inclusion proofs generated, size {n:,}", done, secs, "proofs")
    proofs = {i: tree.inclusion_proof(i) for i in indexes[:VERIFY_SAMPLE]}
    done, secs = _timed(list(proofs.items()),
                        lambda ip: merkle.verify_inclusion(leaves[ip[0]], ip[0], n, ip[1], root),
                        budget)
    _line(f"ledger  inclusion proofs verified, size {n:,}", done, secs, "proofs")

    done, secs = _timed(pairs, lambda p: tree.consistency_proof(*p), budget)
    _line(f"ledger  consistency proofs generated, sizes <= {n:,}", done, secs, "proofs")
    cproofs = {p: tree.consistency_proof(*p) for p in pairs[:VERIFY_SAMPLE]}
    roots = {s: tree.root(s) for p in cproofs for s in p}
    done, secs = _timed(list(cproofs.items()),
                        lambda kv: merkle.verify_consistency(kv[0][0], kv[0][1], kv[1],
                                                             roots[kv[0][0]], roots[kv[0][1]]),
                        budget)
    _line(f"ledger  consistency proofs verified, sizes <= {n:,}", done, secs, "proofs")


def bench_pymerkle(entries: list[bytes], indexes: list[int], pairs: list[tuple[int, int]],
                   budget: float) -> None:
    try:
        import pymerkle
    except ImportError:
        print("pymerkle not installed: pip install -e '.[bench]'", flush=True)
        return
    n = len(entries)
    tree = pymerkle.InmemoryTree()
    append = tree.append_entry
    start = time.perf_counter()
    for e in entries:
        append(e)
    _line(f"pymerkle {pymerkle.__version__} InmemoryTree.append_entry to {n:,}", n,
          time.perf_counter() - start, "appends")

    root = tree.get_root()
    # pymerkle counts leaves from one.
    done, secs = _timed(indexes, lambda i: tree.prove_inclusion(i + 1), budget)
    _line(f"pymerkle inclusion proofs generated, size {n:,}", done, secs, "proofs")
    proofs = {i: tree.prove_inclusion(i + 1) for i in indexes[:min(done, VERIFY_SAMPLE)]}
    bases = {i: tree.get_leaf(i + 1) for i in proofs}
    done, secs = _timed(list(proofs.items()),
                        lambda ip: pymerkle.verify_inclusion(bases[ip[0]], root, ip[1]),
                        budget)
    _line(f"pymerkle inclusion proofs verified, size {n:,}", done, secs, "proofs")

    done, secs = _timed(pairs, lambda p: tree.prove_consistency(*p), budget)
    _line(f"pymerkle consistency proofs generated, sizes <= {n:,}", done, secs, "proofs")
    cproofs = {p: tree.prove_consistency(*p) for p in pairs[:min(done, VERIFY_SAMPLE)]}
    roots = {s: tree.get_root(s) for p in cproofs for s in p}
    done, secs = _timed(list(cproofs.items()),
                        lambda kv: pymerkle.verify_consistency(roots[kv[0][0]], roots[kv[0][1]],
                                                               kv[1]),
                        budget)
    _line(f"pymerkle consistency proofs verified, sizes <= {n:,}", done, secs, "proofs")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_merkle")
    parser.add_argument("--leaves", type=int, default=1_000_000)
    parser.add_argument("--budget", type=float, default=3.0,
                        help="seconds per timed proof loop (default 3)")
    parser.add_argument("--seed", type=int, default=6962)
    args = parser.parse_args(argv)
    n = args.leaves
    if n < 2:
        parser.error("--leaves must be at least 2")
    rng = random.Random(args.seed)
    entries = [b"bench entry %d" % i for i in range(n)]
    indexes = [rng.randrange(n) for _ in range(200_000)]
    pairs = [(s1, n) for s1 in (rng.randrange(1, n) for _ in range(50_000))]
    bench_ledger(entries, indexes, pairs, args.budget)
    bench_pymerkle(entries, indexes, pairs, args.budget)


if __name__ == "__main__":
    main()
