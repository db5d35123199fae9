"""Every benchmark, one after another: `python -m bench` (see BENCHMARKS.md)."""

from __future__ import annotations

import importlib
import platform
import sys
import time

SUITES = ["bench.bench_merkle", "bench.bench_events", "bench.bench_smt", "bench.bench_node",
          "bench.bench_status", "bench.bench_sdk", "bench.bench_cluster",
          "bench.bench_catch_up", "bench.bench_raft", "bench.bench_replay",
          "bench.bench_audit"]


def main() -> None:
    only = sys.argv[1:]
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}  Python {platform.python_version()}  "
          f"{platform.machine()}", flush=True)
    for name in SUITES:
        if only and name.rsplit(".", 1)[-1] not in only:
            continue
        print(f"\n## {name}", flush=True)
        importlib.import_module(name).main([])


if __name__ == "__main__":
    main()
