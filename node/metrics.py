"""Prometheus-format metrics, kept as plain counters: no dependency, no locks (one loop)."""

from __future__ import annotations

import bisect
import dataclasses

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)


@dataclasses.dataclass
class _Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = dataclasses.field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1

    def render(self, name: str, help_text: str) -> list[str]:
        lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        running = 0
        for bound, count in zip(self.buckets, self.counts, strict=False):
            running += count
            lines.append(f'{name}_bucket{{le="{bound:g}"}} {running}')
        lines.append(f'{name}_bucket{{le="+Inf"}} {self.n}')
        lines.append(f"{name}_sum {self.total:.6f}")
        lines.append(f"{name}_count {self.n}")
        return lines


@dataclasses.dataclass
class Metrics:
    appended: int = 0
    rejected: int = 0
    overloaded: int = 0
    queue_depth: int = 0
    intake_bytes: int = 0
    tree_size: int = 0
    requests: dict[str, int] = dataclasses.field(default_factory=dict)
    decoded_in_process: dict[str, int] = dataclasses.field(default_factory=dict)
    decode_process_restarts: int = 0
    storage_failures: int = 0  # commits that failed: writes were suspended
    storage_recoveries: int = 0  # a single node resumed writes after one
    snapshots_installed: int = 0  # a cluster member's catch-ups from tiles
    entries_from_tiles: int = 0
    batch_sizes: _Histogram = dataclasses.field(default_factory=lambda: _Histogram(_BATCH_BUCKETS))
    commit_seconds: _Histogram = dataclasses.field(
        default_factory=lambda: _Histogram(_LATENCY_BUCKETS))
    append_seconds: _Histogram = dataclasses.field(
        default_factory=lambda: _Histogram(_LATENCY_BUCKETS))

    def observe_commit(self, entries: int, seconds: float, tree_size: int) -> None:
        self.appended += entries
        self.tree_size = tree_size
        self.batch_sizes.observe(entries)
        self.commit_seconds.observe(seconds)

    def observe_latency(self, seconds: float) -> None:
        self.append_seconds.observe(seconds)

    def count_request(self, status: int) -> None:
        key = f"{status // 100}xx"
        self.requests[key] = self.requests.get(key, 0) + 1

    def caught_up_from_tiles(self, entries: int) -> None:
        self.snapshots_installed += 1
        self.entries_from_tiles += entries

    def count_decoded(self, kind: str) -> None:
        self.decoded_in_process[kind] = self.decoded_in_process.get(kind, 0) + 1

    def count_decode_process_restart(self) -> None:
        self.decode_process_restarts += 1

    def render(self) -> str:
        lines = [
            "# HELP consent_ledger_appended_total Entries appended to the log.",
            "# TYPE consent_ledger_appended_total counter",
            f"consent_ledger_appended_total {self.appended}",
            "# HELP consent_ledger_rejected_total Events refused by the admission rules.",
            "# TYPE consent_ledger_rejected_total counter",
            f"consent_ledger_rejected_total {self.rejected}",
            "# HELP consent_ledger_overloaded_total Submissions refused with 503: queue or "
            "intake full.",
            "# TYPE consent_ledger_overloaded_total counter",
            f"consent_ledger_overloaded_total {self.overloaded}",
            "# HELP consent_ledger_queue_depth Events waiting to be sequenced.",
            "# TYPE consent_ledger_queue_depth gauge",
            f"consent_ledger_queue_depth {self.queue_depth}",
            "# HELP consent_ledger_intake_bytes Request bodies being read and decoded.",
            "# TYPE consent_ledger_intake_bytes gauge",
            f"consent_ledger_intake_bytes {self.intake_bytes}",
            "# HELP consent_ledger_tree_size Size of the latest committed tree.",
            "# TYPE consent_ledger_tree_size gauge",
            f"consent_ledger_tree_size {self.tree_size}",
            "# HELP consent_ledger_storage_failures_total Commits that failed to reach "
            "disk (writes suspended until it takes them again).",
            "# TYPE consent_ledger_storage_failures_total counter",
            f"consent_ledger_storage_failures_total {self.storage_failures}",
            "# HELP consent_ledger_storage_recoveries_total Times writes resumed after a "
            "storage failure, the ledger reloaded from disk.",
            "# TYPE consent_ledger_storage_recoveries_total counter",
            f"consent_ledger_storage_recoveries_total {self.storage_recoveries}",
            "# HELP consent_ledger_http_responses_total HTTP responses by status class.",
            "# TYPE consent_ledger_http_responses_total counter",
        ]
        lines += [f'consent_ledger_http_responses_total{{class="{k}"}} {v}'
                  for k, v in sorted(self.requests.items())]
        lines += ["# HELP consent_ledger_decoded_in_process_total Request bodies and "
                  "leaders' batches decoded by the decoding process.",
                  "# TYPE consent_ledger_decoded_in_process_total counter"]
        lines += [f'consent_ledger_decoded_in_process_total{{kind="{k}"}} {v}'
                  for k, v in sorted(self.decoded_in_process.items())]
        lines += ["# HELP consent_ledger_decode_process_restarts_total Decoding processes "
                  "started again after one died.",
                  "# TYPE consent_ledger_decode_process_restarts_total counter",
                  f"consent_ledger_decode_process_restarts_total {self.decode_process_restarts}"]
        lines += ["# HELP consent_ledger_snapshots_installed_total Raft snapshots this "
                  "cluster member installed, catching up from tiles.",
                  "# TYPE consent_ledger_snapshots_installed_total counter",
                  f"consent_ledger_snapshots_installed_total {self.snapshots_installed}",
                  "# HELP consent_ledger_entries_from_tiles_total Entries fetched from tiles "
                  "and checked while installing them.",
                  "# TYPE consent_ledger_entries_from_tiles_total counter",
                  f"consent_ledger_entries_from_tiles_total {self.entries_from_tiles}"]
        lines += self.batch_sizes.render("consent_ledger_commit_entries",
                                         "Entries per group commit.")
        lines += self.commit_seconds.render("consent_ledger_commit_seconds",
                                            "Time to sign, write and fsync one batch.")
        lines += self.append_seconds.render("consent_ledger_append_seconds",
                                            "Time from queueing an event to its durable commit.")
        return "\n".join(lines) + "\n"
