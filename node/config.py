"""The node's configuration: one frozen value, validated once.

Sources, later ones winning: built-in defaults (loopback, safe limits), a TOML file
(`--config`), environment variables `CONSENT_LEDGER_<FIELD>` and command-line flags.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    """A configuration that cannot be used; the message is one readable line."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class NodeConfig:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8080
    origin: str | None = None  # fixed at genesis; default: a random name under consent-ledger.local
    log_key_file: Path | None = None  # signs checkpoints; default DATA/log.key, created if absent
    operator_key_file: Path | None = None  # signs genesis and admin events; DATA/operator.key
    # A cluster member: the cluster's file (members, their keys, the log key) and this member's
    # name in it; its own key (cosigning, peer authentication) defaults to DATA/node.key.
    cluster_file: Path | None = None
    member: str | None = None
    node_key_file: Path | None = None
    max_body_bytes: int = 4 * 1024 * 1024
    max_batch_items: int = 1000
    max_queue: int = 20_000
    # Bytes of request bodies being read and decoded at once; beyond it: 503 + Retry-After
    # (node/intake.py). About 8,000 batch-signed events, some 700 ms of decoding.
    intake_bytes: int = 2 * 1024 * 1024
    max_commit_entries: int = 4096
    max_skew_ms: int = 10 * 60 * 1000
    verify_threads: int = max(2, os.cpu_count() or 2)
    # Large request bodies (and in a cluster, a leader's large batches) are decoded in a
    # child process (node/decode_worker.py), on another core than the event loop; false:
    # on the loop.
    decode_process: bool = True
    # A state snapshot every this many committed entries, or once the log grew by a
    # quarter if that is more, so that a restart replays only the entries after the
    # newest one (0: never).
    snapshot_every: int = 100_000
    # The niceness the snapshot builder runs at (node/snapshot_builder.py): 19 takes only
    # CPU the node leaves idle, so under full load a build waits; 0 competes with writes.
    snapshot_nice: int = 19
    # A single node starts a due snapshot once this long has passed without a commit,
    # for one more interval at most: builds slow the node's replies whatever their
    # niceness, so they wait for a lull in the writes (0: at once; cluster members have
    # their own order, see node/cluster_runtime.py).
    snapshot_quiet_ms: int = 1000
    # A cluster member keeps this many Raft log rows behind its commit point, and
    # forgets older ones in steps of as many (0: never). A member that needs forgotten
    # rows catches up from tiles instead (node/catch_up.py). A row is a batch of up to a
    # few thousand entries; the ledger's entries themselves are never forgotten.
    raft_log_keep: int = 100_000
    log_level: str = "info"

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is not in 0..65535")
        for name in ("max_body_bytes", "max_batch_items", "max_queue", "intake_bytes",
                     "max_commit_entries", "verify_threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if self.max_skew_ms < 0:
            raise ConfigError("max_skew_ms must not be negative")
        if self.raft_log_keep < 0:
            raise ConfigError("raft_log_keep must not be negative (0: never compact)")
        if self.snapshot_every < 0:
            raise ConfigError("snapshot_every must not be negative (0: no snapshots)")
        if self.snapshot_quiet_ms < 0:
            raise ConfigError("snapshot_quiet_ms must not be negative (0: build at once)")
        if not 0 <= self.snapshot_nice <= 19:
            raise ConfigError(f"snapshot_nice {self.snapshot_nice} is not in 0..19")
        if (self.cluster_file is None) != (self.member is None):
            raise ConfigError("a cluster member needs both cluster_file and member")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"log_level {self.log_level!r} is not debug|info|warning|error")

    @property
    def db_path(self) -> Path:
        return self.data_dir / "ledger.sqlite"

    @property
    def log_key_path(self) -> Path:
        return self.log_key_file or self.data_dir / "log.key"

    @property
    def operator_key_path(self) -> Path:
        return self.operator_key_file or self.data_dir / "operator.key"

    @property
    def node_key_path(self) -> Path:
        return self.node_key_file or self.data_dir / "node.key"


_FIELDS = {f.name: f for f in dataclasses.fields(NodeConfig)}


def _coerce(name: str, value: Any) -> Any:
    kind = _FIELDS[name].type
    try:
        if kind in ("Path", "Path | None"):
            return Path(value)
        if kind == "bool":
            return _boolean(value)
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError
            return int(value)
    except (TypeError, ValueError):
        expected = "true or false" if kind == "bool" else kind
        raise ConfigError(f"{name} must be {expected}, got {value!r}") from None
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string, got {value!r}")
    return value


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
        return True
    if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
        return False
    raise ValueError


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file's contents, or ConfigError in one line saying why not."""
    try:
        return tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None


def load_config(*, file: Path | None = None, env: Mapping[str, str] | None = None,
                **flags: Any) -> NodeConfig:
    """Merge file, environment and flags (flags whose value is None are ignored)."""
    values: dict[str, Any] = {}
    if file is not None:
        raw = read_toml(file)
        node = raw.get("node", raw)
        for key, value in node.items():
            if key not in _FIELDS:
                raise ConfigError(f"{file}: unknown setting {key!r}")
            values[key] = value
        for key in ("data_dir", "log_key_file", "operator_key_file", "cluster_file",
                    "node_key_file"):
            if key in values and not Path(values[key]).is_absolute():
                values[key] = file.parent / values[key]
    for name in _FIELDS:
        env_value = (env if env is not None else os.environ).get(f"CONSENT_LEDGER_{name.upper()}")
        if env_value is not None:
            values[name] = env_value
    values.update({k: v for k, v in flags.items() if v is not None})
    if "data_dir" not in values:
        raise ConfigError("no data directory: pass --data DIR (or data_dir in the config file)")
    return NodeConfig(**{k: _coerce(k, v) for k, v in values.items()})


def make_data_dir(path: Path) -> None:
    """Create the data directory if needed; a clear error if something else is there."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"the data directory {path} is a file, not a directory")
    path.mkdir(parents=True, exist_ok=True)
