"""`grant`, `revoke`, `status`, `verify` as a script runs them, against a real node.

The main flows run `python -m node.cli ...` in its own process, as a user would;
argument errors go through the same dispatcher in-process, since a process start per
case would dominate the run time. Tests are independent of each other (each has its
own controller) because xdist may split this module across workers, each with its own
node.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cliutil import cli, ok, one_line_error
from nodeproc import NodeProcess

from client.cli import main as client_main
from client.keys import generate_key_file
from client.receipts import (
    ReceiptExtra,
    load_held_grant,
    open_receipt,
    read_file,
    read_receipt,
)
from ledger.note import generate_key
from ledger.tlog_proof import HEADER, format_proof, parse_proof

ROOT = Path(__file__).resolve().parents[1]
ORIGIN = "consent-cli.test/log"




def ok_json(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1, result.stdout
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    return data



@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    proc = NodeProcess(tmp_path_factory.mktemp("consent") / "data", "--origin", ORIGIN)
    proc.start()
    yield proc
    assert proc.stop() == 0, proc.stderr()


def controller_key(node: NodeProcess, controller: str, tmp_path: Path) -> Path:
    key = tmp_path / f"{controller}.key"
    ok(cli("keygen", "--out", str(key)))
    ok(cli("controller", "register", "--log", node.url, "--operator-key",
           str(node.data_dir / "operator.key"), "--controller", controller,
           "--name", "Example Shop", "--contact", "dpo@shop.example", "--key", str(key)))
    return key


def grant_args(node: NodeProcess, controller: str, key: Path, notice: Path, ref: str,
               receipt: Path) -> list[str]:
    return ["grant", "--log", node.url, "--key", str(key), "--controller", controller,
            "--subject-ref", ref, "--purpose", "dpv:Marketing",
            "--purpose", f"{controller}:newsletter", "--data-category", "pd:EmailAddress",
            "--notice-file", str(notice), "--notice-version", "2026-01",
            "--notice-url", "https://shop.example/privacy", "--jurisdiction", "DE",
            "--language", "de", "--receipt-out", str(receipt)]


def status(node: NodeProcess, controller: str, *which: str) -> dict[str, str]:
    return ok(cli("status", "--log", node.url, "--controller", controller, *which,
                  "--purpose", "dpv:Marketing"))


# ---------------------------------------------------------------- the life of a consent


def test_grant_status_revoke_verify(node: NodeProcess, tmp_path: Path) -> None:
    controller = "life.example"
    key = controller_key(node, controller, tmp_path)
    notice = tmp_path / "notice.txt"
    notice.write_text("We send you our newsletter.\n")
    receipt = tmp_path / "alice.tlog-proof"

    out = ok(cli(*grant_args(node, controller, key, notice, "customer-1", receipt)))
    assert "trust on first use" in out["log key"]
    assert stat.S_IMODE(os.stat(receipt).st_mode) == 0o600
    assert receipt.read_text().startswith(HEADER + "\n")
    kept = open_receipt(read_receipt(read_file(receipt)), verified=None)
    assert kept.file.index == int(out["index"]) and kept.event_id.hex() == out["event id"]
    assert kept.file.extra.subject_ref == "customer-1"
    assert kept.file.checkpoint.origin == ORIGIN
    held = load_held_grant(receipt)  # the salt and token fit the grant they came with
    assert held.grant.subject.hex() == out["subject"]

    given = status(node, controller, "--receipt", str(receipt))
    assert given["status"].startswith("ConsentGiven")
    assert given["since entry"] == out["index"] and given["grant"] == out["event id"]

    # The person withdraws with the token alone: no key, no controller.
    withdrawn = ok(cli("revoke", "--log", node.url, "--receipt", str(receipt),
                       "--reason", "no more mail"))
    assert "by the subject" in withdrawn["revocation"]
    beside = tmp_path / "alice.revocation.tlog-proof"
    assert withdrawn["receipt"].startswith(str(beside)) and beside.exists()
    after = status(node, controller, "--subject", out["subject"])
    assert after["status"].startswith("ConsentWithdrawn")
    assert after["since entry"] == withdrawn["index"]

    again = tmp_path / "again.tlog-proof"
    err = one_line_error(cli("revoke", "--log", node.url, "--receipt", str(receipt),
                             "--receipt-out", str(again)), 1)
    assert "already-revoked" in err and not again.exists()

    # The controller revokes another person's grant with its key; --json for scripts.
    other = ok_json(cli(*grant_args(node, controller, key, notice, "customer-2",
                                    tmp_path / "bob.tlog-proof"), "--json"))
    revoked = ok_json(cli("revoke", "--log", node.url, "--key", str(key), "--controller",
                          controller, "--grant", str(other["event_id"]), "--json"))
    assert revoked["by"] == "controller" and revoked["grant"] == other["event_id"]
    answer = ok_json(cli("status", "--log", node.url, "--controller", controller,
                         "--subject", str(other["subject"]), "--purpose", "dpv:Marketing",
                         "--json"))
    assert answer["status"] == "ConsentRevoked"
    assert answer["since_index"] == revoked["index"]

    log = ok_json(cli("verify", "--log", node.url, "--json"))
    assert log["entries"] == log["checkpoint_size"]
    assert isinstance(log["entries"], int) and log["entries"] > int(str(revoked["index"]))
    assert log["grants"] == 2 and log["grants_revoked"] == 2
    assert "verified" in ok(cli("verify", "--log", node.url))


def test_status_never_granted_is_an_answer_and_a_wrong_log_key_is_not(
        node: NodeProcess, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["status", "--log", node.url, "--controller", "nobody.example",
            "--subject", "ab" * 32, "--purpose", "dpv:Marketing"]
    assert client_main([*args, "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["status"] == "ConsentUnknown" and answer["since_index"] is None

    _, wrong = generate_key(ORIGIN)
    assert client_main([*args, "--log-key", wrong]) == 1
    err = capsys.readouterr().err
    assert "does not verify" in err and err.count("\n") == 1


def test_a_receipt_that_does_not_fit_its_grant_is_refused_before_sending(
        node: NodeProcess, tmp_path: Path) -> None:
    key = controller_key(node, "tamper.example", tmp_path)
    notice = tmp_path / "notice.txt"
    notice.write_text("notice")
    receipt = tmp_path / "r.tlog-proof"
    ok(cli(*grant_args(node, "tamper.example", key, notice, "c", receipt)))
    proof = parse_proof(receipt.read_bytes())
    assert proof.extra is not None
    extra = ReceiptExtra.decode(proof.extra)
    forged = ReceiptExtra(**{**extra.__dict__, "token": bytes(32)})
    receipt.write_bytes(format_proof(dataclasses.replace(proof, extra=forged.encode())))
    err = one_line_error(cli("revoke", "--log", node.url, "--receipt", str(receipt)), 1)
    assert "token does not match" in err


# ---------------------------------------------------------------- failures


_LOG = ["--log", "http://127.0.0.1:9"]
_GRANT = ["grant", *_LOG, "--key", "k", "--controller", "shop.example", "--subject-ref", "r",
          "--data-category", "pd:Name", "--notice-file", str(ROOT / "README.md"),
          "--notice-version", "1", "--jurisdiction", "DE", "--language", "de"]


def test_a_refused_grant_leaves_no_receipt(node: NodeProcess, tmp_path: Path) -> None:
    key = tmp_path / "stranger.key"
    ok(cli("keygen", "--out", str(key)))
    notice = tmp_path / "notice.txt"
    notice.write_text("notice")
    receipt = tmp_path / "r.tlog-proof"
    err = one_line_error(cli(*grant_args(node, "stranger.example", key, notice, "c",
                                         receipt)), 1)
    assert "unknown-key" in err and not receipt.exists()


def test_a_node_that_is_down_is_one_line_and_exit_1(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = one_line_error(cli("verify", "--log", "http://127.0.0.1:9"), 1)
    assert "127.0.0.1:9" in err and err.startswith("consent-ledger verify: error:")

    key, receipt = tmp_path / "c.key", tmp_path / "r.json"
    generate_key_file(key)
    args = [a if a != "k" else str(key) for a in _GRANT]
    assert client_main([*args, "--purpose", "dpv:Marketing", "--receipt-out",
                        str(receipt)]) == 1
    err = capsys.readouterr().err
    assert "127.0.0.1:9" in err and err.count("\n") == 1
    assert not receipt.exists()  # nothing was sent, so there is nothing to keep


BAD_ARGUMENTS = [
    (["grant", *_LOG], "required"),
    ([*_GRANT, "--purpose", "marketing"], "--purpose"),
    ([*_GRANT, "--purpose", "dpv:Marketing", "--valid-days", "0"], "--valid-days"),
    ([*_GRANT, "--purpose", "dpv:Marketing", "--notice-url", "http://x"], "--notice-url"),
    ([*_GRANT, "--purpose", "dpv:Marketing", "--jurisdiction", "Germany"], "--jurisdiction"),
    (["revoke", *_LOG, "--key", "k", "--controller", "shop.example"], "--grant"),
    (["revoke", *_LOG, "--key", "k", "--controller", "shop.example", "--grant", "zz"],
     "--grant"),
    (["revoke", *_LOG, "--key", "k", "--receipt", "r"], "not allowed with"),
    (["status", *_LOG, "--controller", "c.example", "--subject", "00",
      "--purpose", "dpv:Marketing"], "--subject"),
    (["status", *_LOG, "--controller", "c.example", "--subject", "00" * 32,
      "--purpose", "dpv:Marketing", "--log-key", "nonsense"], "--log-key"),
    (["verify"], "--log"),
]


@pytest.mark.parametrize("args, words", BAD_ARGUMENTS)
def test_every_bad_argument_is_one_line_exit_2(
        args: list[str], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert client_main(args) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and err.startswith("consent-ledger ")


def test_bad_arguments_through_a_real_process() -> None:
    err = one_line_error(cli("revoke", "--log", "http://127.0.0.1:9"), 2)
    assert "--key" in err and "--receipt" in err
