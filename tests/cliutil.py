"""Running `consent-ledger` as a user does, and reading what it says, for CLI tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def ok(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """The `label   value` lines of a successful command's output."""
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = [line.split("  ", 1) for line in result.stdout.splitlines() if "  " in line]
    return {label.strip(): value.strip() for label, value in lines}


def one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    return result.stderr
