"""deploy/ cannot rot: the documented commands run, and every example file loads and agrees
with what they make (keys pinned, URLs, key paths, the systemd unit's credentials)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from clusterproc import LocalCluster
from nodeclient import register_controller

from client.keys import load_private_key
from client.verify_log import verify_log
from ledger.note import ALG_ED25519, format_verifier_key
from ledger.signed import public_bytes
from node.cluster_config import ClusterConfig, load_cluster
from node.config import load_config

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
EXAMPLES = DEPLOY / "cluster"
MEMBERS = ("n1", "n2", "n3", "n4")
_TESTED_BLOCK = re.compile(r"<!-- tests/test_deploy\.py runs this block[^\n]*-->\n```sh\n(.*?)```",
                           re.DOTALL)


def _documented_blocks() -> list[str]:
    blocks = _TESTED_BLOCK.findall((DEPLOY / "README.md").read_text())
    assert len(blocks) == 2, "deploy/README.md: the admin and the trial block"
    return blocks


def _run_block(block: str, cwd: Path) -> None:
    """A README block as an operator runs it: bash, with this venv's consent-ledger first."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def _vkey(directory: Path, member: str | None, origin: str) -> str:
    """The verifier key of a key file init made: the log's, or a member's cosigner key."""
    if member is None:
        key = load_private_key(directory / "keys" / "log.key")
        return format_verifier_key(origin, ALG_ED25519, public_bytes(key))
    from ledger.cosignature import cosigner_verifier_key
    key = load_private_key(directory / "keys" / f"{member}.key")
    return cosigner_verifier_key(f"{origin}/{member}", key.public_key())


@pytest.fixture(scope="module")
def admin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("admin")
    _run_block(_documented_blocks()[0], work)
    return work / "cluster"


@pytest.fixture(scope="module")
def trial_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("compose")
    _run_block(_documented_blocks()[1], work)
    return work / "trial"


def _example_cluster(admin_dir: Path) -> ClusterConfig:
    """deploy/cluster/cluster.toml with its @...@ keys replaced by the ones init made,
    beside init's genesis event."""
    made = load_cluster(admin_dir / "cluster.toml")
    text = (EXAMPLES / "cluster.toml").read_text()
    text = text.replace("@LOG_KEY@", made.log_key)
    for m in made.members:
        text = text.replace(f"@{m.id.upper()}_KEY@", m.key)
    assert re.search(r"@[A-Z0-9_]+@", text) is None  # every placeholder is known
    example = admin_dir / "example-cluster.toml"
    example.write_text(text)
    assert tomllib.loads(text) == tomllib.loads((admin_dir / "cluster.toml").read_text())
    return load_cluster(example)


def test_the_documented_commands_make_the_example_cluster_file(admin_dir: Path) -> None:
    cluster = _example_cluster(admin_dir)
    assert cluster.origin == "consent.example.com/log1"
    assert cluster.voters == {"n1", "n2", "n3"}
    assert cluster.quorum == 2
    assert [m.url for m in cluster.members] == [f"http://10.0.0.{k}:7101" for k in (1, 2, 3, 4)]
    assert cluster.genesis == (admin_dir / "genesis.msgpack").read_bytes()
    # The clients' policy names the same members, at their own hosts.
    assert (admin_dir / "policy.txt").read_text() == cluster.policy_text()
    assert "10.0.0.1:7102" not in (admin_dir / "policy.txt").read_text()
    # The keys the guide sends to the hosts are the ones the cluster file pins.
    assert _vkey(admin_dir, None, cluster.origin) == cluster.log_key
    for m in cluster.members:
        assert _vkey(admin_dir, m.id, cluster.origin) == m.key
    for key in (admin_dir / "keys").iterdir():
        assert key.stat().st_mode & 0o777 == 0o600, key


def _unit_settings(path: Path, instance: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            name, value = line.split("=", 1)
            settings.setdefault(name, []).append(value.replace("%i", instance))
    return settings


@pytest.mark.parametrize("member", MEMBERS)
def test_each_member_config_loads_and_matches_the_unit_and_the_cluster(
        member: str, admin_dir: Path) -> None:
    cluster = _example_cluster(admin_dir)
    config = load_config(file=EXAMPLES / f"{member}.toml", env={})
    assert config.member == member
    assert config.cluster_file == Path("/etc/consent-ledger/cluster.toml")
    # The member listens where the other members look for it.
    assert f"http://{config.host}:{config.port}" == cluster.member(member).url
    assert cluster.member(member).voter is (member != "n4")

    unit = _unit_settings(EXAMPLES / "consent-ledger@.service", member)
    assert unit["ExecStart"] == [f"/opt/consent-ledger/venv/bin/consent-ledger node "
                                 f"--config /etc/consent-ledger/{member}.toml"]
    assert config.data_dir == Path("/var/lib") / unit["StateDirectory"][0]
    credentials = Path(f"/run/credentials/consent-ledger@{member}.service")
    loaded = dict(c.split(":", 1) for c in unit["LoadCredential"])
    assert loaded == {"log.key": "/etc/consent-ledger/keys/log.key",
                      "node.key": f"/etc/consent-ledger/keys/{member}.key"}
    assert config.log_key_path == credentials / "log.key"
    assert config.node_key_path == credentials / "node.key"
    for setting in ("DynamicUser", "NoNewPrivileges", "PrivateTmp"):
        assert unit[setting] == ["yes"], setting
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["KillSignal"] == ["SIGTERM"]
    assert unit["Restart"] == ["on-failure"]
    assert int(unit["LimitNOFILE"][0]) >= 65536


def _containerfile_healthcheck() -> list[str]:
    text = (DEPLOY / "Containerfile").read_text().replace("\\\n", "")
    match = re.search(r"^HEALTHCHECK .*? CMD (\[.*\])$", text, re.MULTILINE)
    assert match is not None
    return list(json.loads(match.group(1)))


def test_the_compose_trial_runs_three_members_on_what_init_made(trial_dir: Path) -> None:
    compose: dict[str, Any] = yaml.safe_load((EXAMPLES / "compose.yaml").read_text())
    cluster = load_cluster(trial_dir / "cluster.toml")
    services = compose["services"]
    assert set(services) == {m.id for m in cluster.members} == {"n1", "n2", "n3"}
    assert (trial_dir / "policy.txt").read_text() == cluster.policy_text()
    data_volumes = set()
    for name, service in services.items():
        # The image's command: the member listens on 8080, where the others reach it.
        config = load_config(env=service["environment"], data_dir="/data", host="0.0.0.0",
                             port=8080)
        assert config.member == name
        assert cluster.member(name).url == f"http://{name}:{config.port}"
        assert service["ports"] == [f"127.0.0.1:{7100 + int(name[1:])}:8080"]
        mounts = {}
        for volume in service["volumes"]:
            source, target, *mode = volume.split(":")
            if source.endswith("-data"):
                assert target == str(config.data_dir)
                data_volumes.add(source)
                continue
            assert mode == ["ro"], volume
            mounts[Path(target)] = trial_dir.parent / source
        assert all(path.is_file() for path in mounts.values())
        keys = sorted(p.name for p in mounts.values() if p.suffix == ".key")
        assert keys == ["log.key", f"{name}.key"]  # never another member's, never the operator's
        mounted = load_cluster(mounts[config.cluster_file])
        assert mounted.genesis == (trial_dir / "genesis.msgpack").read_bytes()
        log_key = load_private_key(mounts[config.log_key_path])
        assert format_verifier_key(cluster.origin, ALG_ED25519,
                                   public_bytes(log_key)) == cluster.log_key
        node_key = load_private_key(mounts[config.node_key_path])
        assert public_bytes(node_key) == cluster.member(name).public_key
        assert service["healthcheck"]["test"] == ["CMD", *_containerfile_healthcheck()]
    assert data_volumes == set(compose["volumes"]) == {"n1-data", "n2-data", "n3-data"}


def _register(cluster: Any, controller: str) -> None:
    async def run() -> None:
        async with aiohttp.ClientSession() as s:
            await register_controller(s, cluster.url(cluster.wait_leader()),
                                      cluster.operator_key, controller=controller)
    asyncio.run(run())


def test_every_member_restored_from_its_online_backup_serves_again(tmp_path: Path) -> None:
    """The README's total-loss restore: it works, and what came after the backups is lost."""
    cluster = LocalCluster(tmp_path / "cluster")
    try:
        cluster.start()
        _register(cluster, "before.example")
        size = cluster.wait_published(cluster.wait_leader(), 2)["checkpoint_size"]
        for m in MEMBERS[:3]:
            cluster.wait_published(m, size)
            db = cluster.dir / m / "ledger.sqlite"
            # The documented command, while the member runs; where the sqlite3 tool is not
            # installed, the same online backup through Python's binding of the same API.
            if shutil.which("sqlite3"):
                subprocess.run(["sqlite3", f"file:{db}?mode=ro",
                                f".backup {tmp_path / m}.sqlite"], check=True, timeout=30)
            else:
                source = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
                target = sqlite3.connect(tmp_path / f"{m}.sqlite")
                with target:
                    source.backup(target)
                source.close()
                target.close()
        _register(cluster, "after-backup.example")
        cluster.wait_published(cluster.wait_leader(), size + 1)
        for m in MEMBERS[:3]:
            assert cluster.members[m].stop() == 0
            for suffix in ("", "-wal", "-shm"):
                (cluster.dir / m / f"ledger.sqlite{suffix}").unlink(missing_ok=True)
            (tmp_path / f"{m}.sqlite").rename(cluster.dir / m / "ledger.sqlite")
        cluster.start()
        leader = cluster.wait_leader()
        assert cluster.info(leader)["checkpoint_size"] == size  # type: ignore[index]
        _register(cluster, "after-restore.example")
        for m in MEMBERS[:3]:
            cluster.wait_published(m, size + 1)

        async def audit() -> None:
            async with aiohttp.ClientSession() as s:
                verified = await verify_log(s, cluster.url("n3"), cluster.config.log_key)
                # The tail written after the backups is gone; new entries took its indexes.
                assert set(verified.state.controllers) == {"before.example",
                                                           "after-restore.example"}
                assert verified.state.size > size
        asyncio.run(audit())
    finally:
        cluster.stop_all()
