"""Key management as an operator and a controller run it: the CLI against a real node.

Every command runs as a user runs it (`python -m node.cli ...` in its own process);
the grants in between go through a LogClient, so each acceptance is proven. Tests are
independent of each other (each has its own controller) because xdist may split this
module across workers, each with its own node.
"""

from __future__ import annotations

import asyncio
import base64
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from cliutil import cli, ok, one_line_error
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from factories import grant
from nodeproc import NodeProcess

from client.cli import main as client_main
from client.keys import generate_key_file, load_private_key
from client.log_client import Accepted, LogClient, Rejected, SubmitResult
from client.verify_log import VerifiedLog, verify_log
from ledger.events import Grant
from ledger.signed import key_id, public_bytes, sign_event

ROOT = Path(__file__).resolve().parents[1]
DAY = 86_400_000





@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    proc = NodeProcess(tmp_path_factory.mktemp("admin") / "data", "--origin", "admin.test/log")
    proc.start()
    yield proc
    assert proc.stop() == 0, proc.stderr()


@pytest.fixture(scope="module")
def log_key(node: NodeProcess) -> str:
    async def fetch() -> str:
        async with aiohttp.ClientSession() as session:
            return await LogClient.fetch_log_key(node.url, session)
    return asyncio.run(fetch())


def admin(node: NodeProcess, action: str, controller: str, *args: str,
          operator_key: Path | None = None) -> subprocess.CompletedProcess[str]:
    return cli("controller", action, "--log", node.url, "--operator-key",
               str(operator_key or node.data_dir / "operator.key"),
               "--controller", controller, *args)


def register_args(name: str = "Example Shop") -> list[str]:
    return ["--name", name, "--contact", "dpo@shop.example"]


def a_grant(controller: str) -> Grant:
    now = time.time_ns() // 1_000_000
    return grant(controller=controller, subject=os.urandom(32), purposes=("dpv:Marketing",),
                 consented_at=now, valid_until=now + DAY)


async def _submit(url: str, vkey: str, events: list[tuple[Grant, Ed25519PrivateKey]]
                  ) -> list[SubmitResult]:
    async with LogClient(url, log_key=vkey) as client:
        return [(await client.submit([sign_event(g, k)]))[0] for g, k in events]


def submit(node: NodeProcess, vkey: str, g: Grant, key: Ed25519PrivateKey) -> SubmitResult:
    return asyncio.run(_submit(node.url, vkey, [(g, key)]))[0]


def refused(result: SubmitResult) -> str:
    assert isinstance(result, Rejected), result
    return result.problem.code


async def _verify(url: str, vkey: str) -> VerifiedLog:
    async with aiohttp.ClientSession() as session:
        return await verify_log(session, url, vkey)


# ---------------------------------------------------------------- keygen


def test_keygen_prints_public_key_and_key_id_and_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "controller.key"
    out = ok(cli("keygen", "--out", str(path)))
    public = public_bytes(load_private_key(path))
    assert out["public key"] == base64.b64encode(public).decode()
    assert out["key id"] == key_id(public).hex()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600

    before = path.read_bytes()
    err = one_line_error(cli("keygen", "--out", str(path)), 1)
    assert "refusing to overwrite" in err and path.read_bytes() == before


# ---------------------------------------------------------------- the life of a key


def test_register_rotate_retire_end_to_end(node: NodeProcess, log_key: str,
                                           tmp_path: Path) -> None:
    controller = "life.example"
    old_out = ok(cli("keygen", "--out", str(tmp_path / "old.key")))
    new_out = ok(cli("keygen", "--out", str(tmp_path / "new.key")))
    old_key = load_private_key(tmp_path / "old.key")
    new_key = load_private_key(tmp_path / "new.key")

    # Without --log-key the log key is trusted on first use, and the output says so.
    reg = ok(admin(node, "register", controller, *register_args(), "--key",
                   str(tmp_path / "old.key"), "--policy-url", "https://life.example/privacy"))
    assert reg["key id"] == old_out["key id"]
    assert "trust on first use" in reg["log key"]
    assert len(bytes.fromhex(reg["event id"])) == 32

    before = submit(node, log_key, a_grant(controller), old_key)
    assert isinstance(before, Accepted)

    # The operator needs only the public half of the new key.
    rot = ok(admin(node, "rotate", controller, "--old-key-id", old_out["key id"],
                   "--public-key", new_out["public key"], "--log-key", log_key))
    assert rot["key id"] == new_out["key id"] and rot["old key id"] == old_out["key id"]
    assert rot["log key"] == "given"
    assert int(rot["index"]) > before.index

    assert refused(submit(node, log_key, a_grant(controller), old_key)) == "key-retired"
    after = submit(node, log_key, a_grant(controller), new_key)
    assert isinstance(after, Accepted)

    # The grant made before the rotation stays in the log, and the whole log replays
    # from genesis with every signature checked, the old key's included.
    log = asyncio.run(_verify(node.url, log_key))
    assert log.state.index_of(before.event_id) == before.index
    old_state = log.state.keys[bytes.fromhex(old_out["key id"])]
    assert old_state.retired_at == int(rot["index"])

    ret = ok(admin(node, "retire", controller, "--key-id", new_out["key id"],
                   "--reason", "key ceremony 2026", "--log-key", log_key))
    assert ret["key id"] == new_out["key id"]
    assert refused(submit(node, log_key, a_grant(controller), new_key)) == "key-retired"

    err = one_line_error(admin(node, "retire", controller, "--key-id", new_out["key id"],
                               "--log-key", log_key), 1)
    assert "key-retired" in err

    log = asyncio.run(_verify(node.url, log_key))
    assert log.state.keys[bytes.fromhex(new_out["key id"])].retired_at == int(ret["index"])
    assert list(log.state.active_keys(controller)) == []


# ---------------------------------------------------------------- refusals


def test_registering_the_same_key_twice_is_duplicate_key(node: NodeProcess, log_key: str) -> None:
    public = base64.b64encode(public_bytes(Ed25519PrivateKey.generate())).decode()
    args = [*register_args(), "--public-key", public, "--log-key", log_key]
    ok(admin(node, "register", "twice.example", *args))
    err = one_line_error(admin(node, "register", "twice.example", *args), 1)
    assert "duplicate-key" in err and "already registered" in err


def test_register_signed_by_a_non_operator_is_not_operator(node: NodeProcess, log_key: str,
                                                          tmp_path: Path) -> None:
    intruder = tmp_path / "intruder.key"
    generate_key_file(intruder)
    result = admin(node, "register", "intruder.example", *register_args(), "--key",
                   str(intruder), "--log-key", log_key, operator_key=intruder)
    err = one_line_error(result, 1)
    assert "not-operator" in err


def test_rotating_a_key_the_controller_lacks_is_unknown_key(node: NodeProcess,
                                                           log_key: str) -> None:
    public = base64.b64encode(public_bytes(Ed25519PrivateKey.generate())).decode()
    err = one_line_error(admin(node, "rotate", "nobody.example", "--old-key-id", "00" * 8,
                               "--public-key", public, "--log-key", log_key), 1)
    assert "unknown-key" in err


# ---------------------------------------------------------------- bad arguments


_KEY = base64.b64encode(bytes(32)).decode()
_REGISTER = ["controller", "register", "--log", "http://127.0.0.1:9", "--operator-key", "k",
             "--name", "n"]
BAD_ARGUMENTS = [
    (["controller"], "ACTION"),
    (["keygen"], "--out"),
    ([*_REGISTER, "--controller", "shop.example", "--contact", "dpo@shop.example"], "--key"),
    ([*_REGISTER, "--controller", "Shop_Example", "--contact", "dpo@shop.example",
      "--public-key", _KEY], "--controller"),
    ([*_REGISTER, "--controller", "shop.example", "--contact", "somebody",
      "--public-key", _KEY], "--contact"),
    ([*_REGISTER, "--controller", "shop.example", "--contact", "dpo@shop.example",
      "--public-key", "AAAA"], "32 bytes"),
    ([*_REGISTER, "--controller", "shop.example", "--contact", "dpo@shop.example",
      "--public-key", _KEY, "--policy-url", "http://shop.example"], "--policy-url"),
    (["controller", "rotate", "--log", "http://127.0.0.1:9", "--operator-key", "k",
      "--controller", "shop.example", "--old-key-id", "xyz", "--public-key", _KEY],
     "--old-key-id"),
    (["controller", "retire", "--log", "http://127.0.0.1:9", "--operator-key", "k",
      "--controller", "shop.example", "--key-id", "00"], "--key-id"),
]


@pytest.mark.parametrize("args, words", [BAD_ARGUMENTS[0], BAD_ARGUMENTS[3]])
def test_bad_arguments_exit_2_with_one_line(args: list[str], words: str) -> None:
    err = one_line_error(cli(*args), 2)
    assert words in err


@pytest.mark.parametrize("args, words", BAD_ARGUMENTS)
def test_every_bad_argument_is_one_line_naming_the_flag(
        args: list[str], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    # The same dispatcher in-process: a process start per case would dominate the run
    # time, and the two cases above already go through a real process.
    assert client_main(args) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and err.startswith("consent-ledger ")


def test_unreadable_operator_key_is_one_line(tmp_path: Path) -> None:
    err = one_line_error(cli("controller", "retire", "--log", "http://127.0.0.1:9",
                             "--operator-key", str(tmp_path / "nope.key"),
                             "--controller", "shop.example", "--key-id", "00" * 8), 1)
    assert "nope.key" in err
