"""Real cluster members for tests: `consent-ledger cluster init`'s files, one process each."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
from nodeproc import NodeProcess

from client.verify_log import verify_log
from node.cluster_cli import init_cluster
from node.cluster_config import ClusterConfig


def get_json(url: str, timeout: float = 2.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


class LocalCluster:
    def __init__(self, directory: Path, nodes: int = 3, spares: int = 0,
                 env: dict[str, str] | None = None) -> None:
        self.dir = directory
        self.config: ClusterConfig = init_cluster(
            directory, nodes=nodes, host="127.0.0.1", base_port=0, origin=None, spares=spares)
        self.members = {m.id: NodeProcess(directory / m.id, "--config",
                                          str(directory / f"{m.id}.toml"),
                                          "--port", m.url.rsplit(":", 1)[1], env=env)
                        for m in self.config.members}

    @property
    def policy(self) -> bytes:
        return (self.dir / "policy.txt").read_bytes()

    @property
    def operator_key(self) -> Path:
        return self.dir / "keys" / "operator.key"

    def url(self, member: str) -> str:
        return self.config.member(member).url

    def start(self, *members: str) -> None:
        for member in members or tuple(self.members):
            self.members[member].start()

    def info(self, member: str) -> dict[str, Any] | None:
        try:
            return get_json(self.url(member) + "/v1/cluster", timeout=1.0)
        except (OSError, urllib.error.URLError, ValueError):
            return None

    def alive(self) -> list[str]:
        return [m for m, p in self.members.items() if p.proc and p.proc.poll() is None]

    def wait_leader(self, timeout: float = 30.0, among: list[str] | None = None) -> str:
        """The member that leads and has published (polled with a deadline)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for member in among or self.alive():
                info = self.info(member)
                if info and info["role"] == "leader" and info["published_size"] > 0:
                    return member
            time.sleep(0.02)  # polling a condition with a deadline
        raise AssertionError(f"no leader within {timeout} s: "
                             f"{[self.info(m) for m in self.alive()]}")

    def wait_published(self, member: str, size: int, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.info(member)
            if info and info["checkpoint_size"] >= size:
                return info
            time.sleep(0.02)  # polling a condition with a deadline
        raise AssertionError(f"{member} did not reach size {size}: {self.info(member)}")

    def verified_size(self, member: str) -> int:
        """The size of the member's log, every entry checked from genesis (verify_log)."""
        async def verify() -> int:
            async with aiohttp.ClientSession() as s:
                verified = await verify_log(s, self.url(member), self.config.log_key)
            return verified.checkpoint.size

        return asyncio.run(verify())

    def kill(self, member: str) -> None:
        self.members[member].kill()

    def stop_all(self) -> None:
        for p in self.members.values():
            p.kill()
