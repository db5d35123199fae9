"""Per-event CPU of the steps every member pays, on one core, and the collector's share.

    python -m bench.bench_replay [--events N] [--default-gc]

A leader decodes request envelopes and admits them; every follower (and every auditor)
decodes the entries and replays them. Grants are batch-signed by 100 (as the cluster
benchmark sends them), each with two purposes; every 100 events end with a status root.
Each figure is the best of three runs; "gc" is the time the cyclic collector took
within it (measured through gc.callbacks). By default the collector runs as nodes run
it (ledger/heap.py); --default-gc shows CPython's default thresholds.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.bench_events import T0, sample_grants
from ledger.entry import LogEntry
from ledger.events import ControllerRegister, Genesis, StatusRoot
from ledger.heap import tune_collector
from ledger.signed import SignedEvent, log_authored, public_bytes, sign_batch, sign_event
from ledger.state import LedgerState

_gc = {"spent": 0.0, "started": 0.0}


def _on_gc(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _gc["started"] = time.perf_counter()
    else:
        _gc["spent"] += time.perf_counter() - _gc["started"]


def fresh_state(operator: Ed25519PrivateKey, controller: Ed25519PrivateKey) -> LedgerState:
    state = LedgerState()
    state.admit(sign_event(Genesis(origin="bench.example/log",
                                   operator_key=public_bytes(operator), created_at=T0,
                                   max_skew_ms=600_000), operator), T0, signature_verified=False)
    state.admit(sign_event(ControllerRegister(
        controller="shop.example", name="Shop", contact="dpo@shop.example",
        key=public_bytes(controller), registered_at=T0), operator), T0,
        signature_verified=False)
    return state


def measure(label: str, n: int, runs: list[Callable[[], object]]) -> None:
    best, collected = float("inf"), 0.0
    for run in runs:
        spent = _gc["spent"]
        started = time.perf_counter()
        run()
        elapsed = time.perf_counter() - started
        if elapsed < best:
            best, collected = elapsed, _gc["spent"] - spent
    print(f"{label:<44} {best / n * 1e6:7.1f} µs/event   gc {collected / n * 1e6:5.1f}"
          f"   {n / best:>9,.0f} /s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--default-gc", action="store_true")
    args = parser.parse_args(argv)
    n = args.events - args.events % 100
    if not args.default_gc:
        tune_collector()
    gc.callbacks.append(_on_gc)
    operator, controller = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    grants = sample_grants(n)
    envelopes: list[SignedEvent] = []
    for i in range(0, n, 100):
        envelopes.extend(sign_batch(grants[i:i + 100], controller))
    wire = [s.encode() for s in envelopes]

    measure("envelopes decoded (leader intake)", n,
            [lambda: [SignedEvent.decode(w) for w in wire]] * 3)

    entries: list[list[LogEntry]] = []

    def admit_all() -> None:
        state, out = fresh_state(operator, controller), []
        for i in range(0, n, 100):
            for signed in envelopes[i:i + 100]:
                out.append(state.admit(signed, T0 + 1000, signature_verified=True))
            out.append(state.admit(log_authored(StatusRoot(size=state.size,
                                                           map_root=state.map_root())),
                                   T0 + 1000, signature_verified=True))
        entries.append(out)

    measure("events admitted, status map, roots (leader)", n, [admit_all] * 3)
    raws = [e.encoded for e in entries[-1]]
    entries.clear()
    measure("entries decoded (follower, auditor)", n,
            [lambda: [LogEntry.decode(r) for r in raws]] * 3)
    decoded = [LogEntry.decode(r) for r in raws]

    def replay_all() -> None:
        state = fresh_state(operator, controller)
        for entry in decoded:
            state.replay(entry, verify_signatures=False)

    measure("entries replayed, signatures aside", n, [replay_all] * 3)


if __name__ == "__main__":
    main()
