"""Real cluster members for tests: `consent-ledger cluster init`'s files, one process each."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
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

ROOT = Path(__file__).resolve().parents[1]


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


class UpProcess:
    """`consent-ledger cluster up --dir DIR` as a user runs it, members and all."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.config = init_cluster(directory, nodes=3, host="127.0.0.1", base_port=0,
                                   origin=None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "cluster", "up", "--dir", str(directory)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        lines = [self.proc.stdout.readline() for _ in range(4)]  # the title, one per member
        self.leader = next((line.split()[0] for line in lines if "(leader)" in line), None)
        assert self.leader is not None, (lines, self.proc.stderr and self.proc.stderr.read())
        self.url = {m.id: m.url for m in self.config.members}
        self._said: list[str] = []

    def wait_said(self, text: str, timeout: float = 60.0) -> None:
        """Read what it writes to stderr until it has said `text`."""
        assert self.proc.stderr is not None
        fd = self.proc.stderr.fileno()  # read raw: a buffered reader hides lines from select
        deadline = time.monotonic() + timeout
        while text not in "".join(self._said):
            left = deadline - time.monotonic()
            assert left > 0, f"never said {text!r}: {self._said}"
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                assert chunk, f"exited without saying {text!r}: {self._said}"
                self._said.append(chunk.decode())

    def pid(self, member: str) -> int | None:
        """The member's live process, found by its command line."""
        found = subprocess.run(["pgrep", "-f", "--", f"--config {self.dir / member}.toml$"],
                               capture_output=True, text=True).stdout.split()
        return int(found[0]) if found else None

    async def await_restarted(self, session: aiohttp.ClientSession, member: str,
                              old_pid: int, size: int, timeout: float = 60.0) -> None:
        """Until `member` runs as a new process that serves a checkpoint of `size` or more."""
        deadline = time.monotonic() + timeout
        while True:
            pid = self.pid(member)
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{self.url[member]}/v1/cluster") as resp:
                    if pid not in (None, old_pid) and resp.status == 200 \
                            and (await resp.json())["checkpoint_size"] >= size:
                        return
            assert time.monotonic() < deadline, f"{member} was not restarted and caught up"
            await asyncio.sleep(0.05)  # polling another process, with a deadline

    def stop(self) -> tuple[int, str]:
        """SIGTERM, as Ctrl-C would: its exit status and what it wrote to stderr."""
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, "".join(self._said) + err

    def kill_all(self) -> None:
        """After a failed test: nothing of it left running."""
        if self.proc.poll() is None:
            self.proc.terminate()  # it stops its members
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for member in self.url:
            pid = self.pid(member)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
