"""The cluster's configuration: who the members are, where they listen, which keys to pin.

One TOML file, the same on every member:

    origin = "consent-ledger.example/consent"
    log_key = "<the log's verifier key (Ed25519, type 0x01)>"
    genesis = "genesis.msgpack"     # the operator-signed genesis event, relative to this file

    [[member]]
    id = "n1"
    url = "http://10.0.0.1:7101"
    key = "<n1's cosigner verifier key (type 0x04)>"

Each member's key authenticates its replication messages and signs its cosignatures;
pinning every key here is what lets a member refuse an unknown or impersonating peer.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from ledger.cosignature import CosignatureVerifier, new_cosignature_verifier
from ledger.errors import NoteError
from ledger.note import load_public_key, new_verifier, parse_verifier_key
from node.config import ConfigError, read_toml

_MEMBER_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_URL = re.compile(r"https?://[^\s/]+")


@dataclasses.dataclass(frozen=True)
class Member:
    id: str
    url: str
    key: str  # cosigner verifier key string
    voter: bool = True  # False: a spare, pinned here, that the operator may add later

    @property
    def cosigner(self) -> CosignatureVerifier:
        return new_cosignature_verifier(self.key)

    @property
    def public_key(self) -> bytes:
        return parse_verifier_key(self.key).public_key


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    origin: str
    log_key: str
    members: tuple[Member, ...]
    genesis: bytes | None = None
    tick_ms: int = 10
    # 1–2 s, as etcd: a loaded follower re-verifying a large batch must not look dead.
    election_ticks: tuple[int, int] = (100, 200)
    heartbeat_ticks: int = 10
    recosign_ms: int = 1000

    def member(self, member_id: str) -> Member:
        for m in self.members:
            if m.id == member_id:
                return m
        raise ConfigError(f"{member_id!r} is not a member of the cluster "
                          f"({', '.join(m.id for m in self.members)})")

    @property
    def voters(self) -> frozenset[str]:
        """The first Raft membership; later ones are in the log (cluster add/remove)."""
        return frozenset(m.id for m in self.members if m.voter)

    @property
    def quorum(self) -> int:
        return len(self.voters) // 2 + 1

    def policy_text(self) -> str:
        """The C2SP tlog-policy a client needs: the log key and a majority of the voters'
        worth of cosignatures from the pinned members (spares included, so that a
        one-for-one membership change needs no new policy)."""
        lines = [f"log {self.log_key}"]
        for m in self.members:
            lines.append(f"witness {m.id} {m.key} {m.url}")
        lines.append(f"group members {self.quorum} {' '.join(m.id for m in self.members)}")
        lines.append("quorum members")
        return "\n".join(lines) + "\n"


def load_cluster(path: Path) -> ClusterConfig:
    return parse_cluster(read_toml(path), base=path.parent, where=str(path))


def parse_cluster(raw: dict[str, Any], *, base: Path, where: str) -> ClusterConfig:
    known = {"origin", "log_key", "genesis", "member", "tick_ms", "election_ticks",
             "heartbeat_ticks", "recosign_ms"}
    for key in raw:
        if key not in known:
            raise ConfigError(f"{where}: unknown setting {key!r}")

    def text(obj: dict[str, Any], key: str, ctx: str) -> str:
        value = obj.get(key)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: {ctx}{key} must be a non-empty string")
        return value

    origin = text(raw, "origin", "")
    log_key = text(raw, "log_key", "")
    try:
        if new_verifier(log_key).name != origin:
            raise ConfigError(f"{where}: log_key is for {new_verifier(log_key).name!r}, "
                              f"not the origin {origin!r}")
    except NoteError as exc:
        raise ConfigError(f"{where}: log_key: {exc}") from None
    entries = raw.get("member")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{where}: no [[member]] entries")
    members = []
    for n, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: member {n} is not a table")
        extra = set(entry) - {"id", "url", "key", "voter"}
        if extra:
            raise ConfigError(f"{where}: member {n}: unknown setting {sorted(extra)[0]!r}")
        member_id = text(entry, "id", f"member {n}: ")
        if not _MEMBER_ID.fullmatch(member_id):
            raise ConfigError(f"{where}: member id {member_id!r} must be lowercase letters, "
                              "digits and '-', at most 32")
        url = text(entry, "url", f"member {member_id}: ").rstrip("/")
        if not _URL.match(url):
            raise ConfigError(f"{where}: member {member_id}: url {url!r} is not http(s)://host")
        key = text(entry, "key", f"member {member_id}: ")
        try:
            new_cosignature_verifier(key)
            load_public_key(parse_verifier_key(key).public_key)
        except NoteError as exc:
            raise ConfigError(f"{where}: member {member_id}: key: {exc}") from None
        voter = entry.get("voter", True)
        if not isinstance(voter, bool):
            raise ConfigError(f"{where}: member {member_id}: voter must be true or false")
        members.append(Member(member_id, url, key, voter))
    for attr in ("id", "url", "key"):
        values = [getattr(m, attr) for m in members]
        if len(set(values)) != len(values):
            raise ConfigError(f"{where}: two members share the same {attr}")
    if not any(m.voter for m in members):
        raise ConfigError(f"{where}: no member is a voter")
    genesis = None
    if "genesis" in raw:
        gpath = base / text(raw, "genesis", "")
        try:
            genesis = gpath.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read the genesis event {gpath}: {exc.strerror}") from None
    timing: dict[str, Any] = {}
    for key in ("tick_ms", "heartbeat_ticks", "recosign_ms"):
        if key in raw:
            if not isinstance(raw[key], int) or isinstance(raw[key], bool) or raw[key] < 1:
                raise ConfigError(f"{where}: {key} must be a positive integer")
            timing[key] = raw[key]
    if "election_ticks" in raw:
        value = raw["election_ticks"]
        if (not isinstance(value, list) or len(value) != 2
                or not all(isinstance(v, int) and v > 0 for v in value) or value[0] >= value[1]):
            raise ConfigError(f"{where}: election_ticks must be [low, high] with low < high")
        timing["election_ticks"] = (value[0], value[1])
    return ClusterConfig(origin, log_key, tuple(members), genesis, **timing)


def format_cluster(config: ClusterConfig, genesis_file: str | None) -> str:
    """The TOML text for a cluster file (cluster init writes it)."""
    lines = [f'origin = "{config.origin}"', f'log_key = "{config.log_key}"']
    if genesis_file is not None:
        lines.append(f'genesis = "{genesis_file}"')
    lines.append(f"tick_ms = {config.tick_ms}")
    lines.append(f"election_ticks = [{config.election_ticks[0]}, {config.election_ticks[1]}]")
    lines.append(f"heartbeat_ticks = {config.heartbeat_ticks}")
    lines.append(f"recosign_ms = {config.recosign_ms}")
    for m in config.members:
        lines += ["", "[[member]]", f'id = "{m.id}"', f'url = "{m.url}"', f'key = "{m.key}"']
        if not m.voter:
            lines.append("voter = false")
    return "\n".join(lines) + "\n"
