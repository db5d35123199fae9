"""Status map updates, proofs generated and proofs verified per second, up to 1M keys.

    python -m bench.bench_smt [--keys N]

Updates are timed as the map grows, one key at a time and in batches of 1,000 (one
rehash per touched node per batch, as a node closing a batch of entries would); proofs
at the final size, for keys present and absent. Keys and value hashes are random, as
map keys (SHA-256 outputs) are.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import time

from ledger.smt import MapProof, StatusMap, verify_map_proof

BATCH = 1_000


def _rate(n: int, started: float) -> float:
    return n / (time.perf_counter() - started)


def _grow(keys: list[bytes], values: list[bytes], batched: bool, marks: list[int]) -> StatusMap:
    m = StatusMap()
    label = "set_many, batches of 1,000" if batched else "set, one key at a time"
    done = 0
    for mark in marks:
        started = time.perf_counter()
        if batched:
            for i in range(done, mark, BATCH):
                m.set_many(zip(keys[i:min(i + BATCH, mark)], values[i:min(i + BATCH, mark)],
                               strict=True))
        else:
            put = m.set
            for i in range(done, mark):
                put(keys[i], values[i])
        r = _rate(mark - done, started)
        print(f"map updates ({label}), {done:>9,} -> {mark:>9,} keys: {r:>10,.0f} /s",
              flush=True)
        done = mark
    return m


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--proofs", type=int, default=50_000)
    args = parser.parse_args(argv)
    n = args.keys
    marks = [m for m in (10_000, 100_000, 1_000_000) if m < n] + [n]
    rng = random.Random(5)
    keys = [rng.randbytes(32) for _ in range(n)]
    values = [rng.randbytes(32) for _ in range(n)]

    m = _grow(keys, values, batched=False, marks=marks)
    del m
    m = _grow(keys, values, batched=True, marks=marks)
    updates = [rng.randbytes(32) for _ in range(BATCH * 10)]
    started = time.perf_counter()
    for i in range(0, len(updates), BATCH):
        m.set_many(zip(keys[i:i + BATCH], updates[i:i + BATCH], strict=True))
    print(f"map replacements (set_many, batches of 1,000) at {n:,} keys: "
          f"{_rate(len(updates), started):>10,.0f} /s")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS with the map of {n:,} keys (and the key lists): {rss:,.0f} MiB")

    root = m.root()
    present = rng.sample(range(n), min(args.proofs, n))
    sample = [(keys[i], updates[i] if i < len(updates) else values[i]) for i in present]
    absent = [os.urandom(32) for _ in range(args.proofs)]
    prove = m.prove
    for label, ks in (("present", [k for k, _ in sample]), ("absent", absent)):
        started = time.perf_counter()
        proofs = [prove(k) for k in ks]
        print(f"proofs generated ({label}) at {n:,} keys:        "
              f"{_rate(len(ks), started):>10,.0f} /s")
        wires = [p.encode() for p in proofs]
        mean = sum(map(len, wires)) / len(wires)
        values_of = [v for _, v in sample] if label == "present" else [None] * len(ks)
        started = time.perf_counter()
        for k, v, p in zip(ks, values_of, proofs, strict=True):
            verify_map_proof(root, k, v, p)
        print(f"proofs verified ({label}) at {n:,} keys:         "
              f"{_rate(len(ks), started):>10,.0f} /s  ({mean:.0f} bytes encoded)")
        started = time.perf_counter()
        for k, v, w in zip(ks, values_of, wires, strict=True):
            verify_map_proof(root, k, v, MapProof.decode(w))
        print(f"proofs decoded+verified ({label}) at {n:,} keys: "
              f"{_rate(len(ks), started):>10,.0f} /s")


if __name__ == "__main__":
    main()
