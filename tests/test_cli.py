"""The command line as a user meets it: the main job end to end, and one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cliutil import cli

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return cli(*args, timeout=timeout)


def test_up_runs_a_cluster_and_the_demo_through_it(tmp_path: Path) -> None:
    result = run("up", "--dir", str(tmp_path / "cluster"), "--base-port", "0",
                 "--demo-events", "400", "--once")
    assert result.returncode == 0, result.stderr
    assert "3 members" in result.stdout and "(leader)" in result.stdout
    assert "checkpoint verified" in result.stdout
    assert "0 rejected" in result.stdout
    for member in ("n1", "n2", "n3"):
        assert (tmp_path / "cluster" / member / "ledger.sqlite").exists()


def test_node_without_data_dir_is_one_line(tmp_path: Path) -> None:
    result = run("node")
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "--data" in result.stderr


def test_bad_config_file_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text("[node]\nport = 'eighty'\n")
    result = run("node", "--config", str(config), "--data", str(tmp_path))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "port" in result.stderr


def test_a_data_directory_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a directory")
    result = run("node", "--data", str(tmp_path / "data"), "--port", "0")
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "is a file, not a directory" in result.stderr


def test_unknown_command() -> None:
    result = run("frobnicate")
    assert result.returncode == 2
    assert "unknown command" in result.stderr


def test_demo_against_no_node_is_one_line(tmp_path: Path) -> None:
    key = tmp_path / "operator.key"
    from client.keys import generate_key_file

    generate_key_file(key)
    result = run("demo", "--log", "http://127.0.0.1:9", "--operator-key", str(key),
                 "--events", "10")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unreadable_key_file_is_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "log.key").write_text("not a key\n")
    result = run("node", "--data", str(data), "--port", "0")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "log.key" in result.stderr


def test_output_to_a_reader_that_went_away_ends_quietly(tmp_path: Path) -> None:
    """`consent-ledger ... | head -1`: the rest of the output has no reader; no traceback."""
    run("cluster", "init", "--dir", str(tmp_path / "cluster"), "--base-port", "0")
    for args in (["keygen", "--out", str(tmp_path / "k.key")], ["--help"],
                 ["cluster", "status", "--dir", str(tmp_path / "cluster")]):
        proc = subprocess.Popen([sys.executable, "-m", "node.cli", *args], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        proc.stdout.close()  # before the command (still importing) writes a byte
        _, err = proc.communicate(timeout=60)
        assert "Traceback" not in err and "Broken pipe" not in err, err
        assert proc.returncode == 141, (args, proc.returncode, err)
