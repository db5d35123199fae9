"""Real node processes for tests: started on a free loopback port, killed for real."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

ROOT = Path(__file__).resolve().parents[1]


class NodeFailedToStart(Exception):
    pass


class NodeProcess:
    """`consent-ledger node` in its own process; its URL is read from its first line."""

    # Every process started, so that a failing test cannot leave a node running.
    started: ClassVar[list[subprocess.Popen[bytes]]] = []

    def __init__(self, data_dir: Path, *args: str, env: dict[str, str] | None = None,
                 root: Path = ROOT) -> None:
        self.data_dir = data_dir
        self.root = root  # the checkout whose code runs (bench/ab_node.py runs two)
        self.args = args
        self.env = env or {}  # CONSENT_LEDGER_<SETTING> over the configuration file
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.stderr_path = data_dir.parent / f"{data_dir.name}.stderr.log"

    def start(self, timeout: float = 30.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        port = ["--port", "0"] if "--port" not in self.args else []
        with open(self.stderr_path, "ab") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "node.cli", "node", "--data", str(self.data_dir),
                 *port, *self.args],
                stdout=subprocess.PIPE, stderr=stderr, cwd=self.root,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            )
        NodeProcess.started.append(self.proc)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, left))
            if not ready:
                self.kill()
                raise NodeFailedToStart(f"no URL within {timeout} s: {self.stderr()}")
            chunk = os.read(self.proc.stdout.fileno(), 1)
            if not chunk:
                self.proc.wait()
                raise NodeFailedToStart(
                    f"exited with {self.proc.returncode}: {self.stderr()}")
            line += chunk
        self.url = line.decode().rsplit(" ", 1)[-1].strip()
        return self.url

    @classmethod
    def kill_all(cls) -> None:
        for proc in cls.started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
        cls.started.clear()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout)
        return self.proc.returncode


def children_of(pid: int, command: bytes | None = None) -> list[int]:
    """The live (not zombie) children of `pid`, from /proc; with `command`, only those
    whose command line holds it."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) != pid or fields[0] == "Z":
                continue
            if command is not None and command not in Path(f"/proc/{entry}/cmdline").read_bytes():
                continue
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        found.append(int(entry))
    return found


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while running(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)  # polling another process's exit, not ordering our own steps
    return True
