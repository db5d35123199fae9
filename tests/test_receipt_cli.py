"""`consent-ledger receipt verify | refresh | show` against real nodes, as a person runs it.

A receipt is verified offline once its node has stopped; each kind of tampering is
refused in one line that names what failed; refresh proves the receipt still holds in
a grown log and reports the status now; the person revokes with the receipt alone and
gets a receipt for that; a token works once, and only for its own grant.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cliutil import cli, ok, one_line_error
from nodeproc import NodeProcess

from client.cli import main as client_main
from client.log_client import LogClient, Rejected
from client.receipts import ReceiptExtra, load_held_grant
from ledger.events import Revoke
from ledger.note import generate_key
from ledger.signed import token_revocation
from ledger.tlog_proof import format_proof, parse_proof

ORIGIN = "receipt-cli.test/log"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    proc = NodeProcess(tmp_path_factory.mktemp("receipts") / "data", "--origin", ORIGIN)
    proc.start()
    yield proc
    assert proc.stop() == 0, proc.stderr()


def log_key(node: NodeProcess) -> str:
    with urllib.request.urlopen(f"{node.url}/v1/keys", timeout=10) as resp:
        vkey = json.load(resp)["log"]
    assert isinstance(vkey, str)
    return vkey


def checkpoint_size(node: NodeProcess) -> int:
    with urllib.request.urlopen(f"{node.url}/checkpoint", timeout=10) as resp:
        return int(resp.read().decode().split("\n")[1])


def register(node: NodeProcess, controller: str, tmp_path: Path) -> Path:
    key = tmp_path / f"{controller}.key"
    ok(cli("keygen", "--out", str(key)))
    ok(cli("controller", "register", "--log", node.url, "--operator-key",
           str(node.data_dir / "operator.key"), "--controller", controller,
           "--name", "Example Shop", "--contact", "dpo@shop.example", "--key", str(key)))
    return key


def grant(node: NodeProcess, controller: str, key: Path, ref: str, receipt: Path
          ) -> dict[str, str]:
    notice = receipt.with_suffix(".notice")
    notice.write_text("We send you our newsletter.\n")
    return ok(cli("grant", "--log", node.url, "--key", str(key), "--controller", controller,
                  "--subject-ref", ref, "--purpose", "dpv:Marketing",
                  "--purpose", f"{controller}:newsletter",
                  "--data-category", "pd:EmailAddress", "--notice-file", str(notice),
                  "--notice-version", "2026-01", "--notice-url",
                  "https://shop.example/privacy", "--jurisdiction", "DE", "--language",
                  "de", "--receipt-out", str(receipt)))


def ok_json(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    return data


def tampered(receipt: Path, out: Path, **changes: Any) -> Path:
    """A copy of `receipt` with proof fields (index, hashes, checkpoint) or extra fields
    (entry, salt, ...) changed."""
    proof = parse_proof(receipt.read_bytes())
    assert proof.extra is not None
    extra = ReceiptExtra.decode(proof.extra)
    extra_changes = {k: v for k, v in changes.items() if k in extra.__dict__}
    proof_changes = {k: v for k, v in changes.items() if k not in extra_changes}
    if extra_changes:
        proof_changes["extra"] = ReceiptExtra(**{**extra.__dict__, **extra_changes}).encode()
    out.write_bytes(format_proof(dataclasses.replace(proof, **proof_changes)))
    return out


def flip(raw: bytes, at: int) -> bytes:
    return raw[:at] + bytes([raw[at] ^ 0x01]) + raw[at + 1:]


# ---------------------------------------------------------------- offline


def test_a_receipt_verifies_offline_and_every_tampering_is_named(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    own = NodeProcess(tmp_path / "data", "--origin", "offline.test/log")
    own.start()
    key = register(own, "offline.example", tmp_path)
    receipt = tmp_path / "alice.tlog-proof"
    granted = grant(own, "offline.example", key, "customer-1", receipt)
    vkey = log_key(own)
    assert own.stop() == 0, own.stderr()  # from here on, no node: offline

    out = ok(cli("receipt", "verify", str(receipt), "--log-key", vkey))
    assert out["receipt"] == f"grant at entry {granted['index']} of offline.test/log: " \
                             "verified offline"
    assert out["event id"] == granted["event id"]
    assert out["purposes"] == "dpv:Marketing, offline.example:newsletter"
    policy = tmp_path / "trust.policy"
    policy.write_text(f"log {vkey}\nquorum none\n")
    shown = ok_json(cli("receipt", "verify", str(receipt), "--policy", str(policy), "--json"))
    assert shown["verified_with"] == f"the policy {policy}"
    assert shown["subject"]["reference"] == "customer-1"

    proof = parse_proof(receipt.read_bytes())
    extra = ReceiptExtra.decode(proof.extra or b"")
    sig = proof.checkpoint.rindex(b" ") + 30  # inside the signature, past the key ID
    cases = [
        (tampered(receipt, tmp_path / "entry", entry=flip(extra.entry, 40)),
         "the entry is not in the log at index"),
        (tampered(receipt, tmp_path / "hash", hashes=(flip(proof.hashes[0], 7),
                                                      *proof.hashes[1:])),
         "the inclusion proof does not lead from it"),
        (tampered(receipt, tmp_path / "index", index=proof.index + 1), "not in the log at"),
        (tampered(receipt, tmp_path / "sig", checkpoint=proof.checkpoint[:sig] + (
            b"A" if proof.checkpoint[sig:sig + 1] != b"A" else b"B")
            + proof.checkpoint[sig + 1:]),
         "the checkpoint does not verify: invalid signature"),
        (tampered(receipt, tmp_path / "salt", salt=flip(extra.salt or b"", 0)),
         "the salt and subject reference do not make the grant's subject commitment"),
        (tampered(receipt, tmp_path / "token", token=bytes(32)),
         "the revocation token does not match the grant"),
    ]
    # In-process from here: the same dispatcher, without a process start per case.
    for path, words in cases:
        assert client_main(["receipt", "verify", str(path), "--log-key", vkey]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"consent-ledger receipt verify: error: {path}: the receipt "
                              "does not verify: "), err
        assert words in err and err.count("\n") == 1, (path.name, err)

    _, stranger = generate_key("offline.test/log")
    assert client_main(["receipt", "verify", str(receipt), "--log-key", stranger]) == 1
    assert "the checkpoint does not verify" in capsys.readouterr().err
    (tmp_path / "junk").write_text("c2sp.org/tlog-proof@v1\nindex 01\n\n")
    assert client_main(["receipt", "verify", str(tmp_path / "junk"), "--log-key",
                        vkey]) == 1
    assert "line 2" in capsys.readouterr().err


# ---------------------------------------------------------------- refresh


def test_refresh_proves_a_receipt_in_a_grown_log_and_reports_the_status_now(
        node: NodeProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = register(node, "refresh.example", tmp_path)
    receipt = tmp_path / "r.tlog-proof"
    grant(node, "refresh.example", key, "customer-1", receipt)
    kept = parse_proof(receipt.read_bytes())
    grant(node, "refresh.example", key, "customer-2", tmp_path / "other.tlog-proof")

    vkey = log_key(node)
    fresh = ok_json(cli("receipt", "refresh", str(receipt), "--log", node.url,
                        "--log-key", vkey, "--json"))
    size = int(kept.checkpoint.split(b"\n")[1])
    assert fresh["newest_checkpoint_size"] > size and fresh["proof"]["checkpoint_size"] == size
    assert fresh["status"] == {"dpv:Marketing": "ConsentGiven",
                               "refresh.example:newsletter": "ConsentGiven"}
    assert fresh["log_key"] == "the given log key"

    # --out: the receipt re-proven against the newest checkpoint, verifiable offline.
    renewed = tmp_path / "renewed.tlog-proof"
    wrote = ok_json(cli("receipt", "refresh", str(receipt), "--log", node.url,
                        "--log-key", vkey, "--out", str(renewed), "--json"))
    assert wrote["written"] == str(renewed)
    assert renewed.stat().st_mode & 0o777 == 0o600  # it holds the person's secrets
    again = parse_proof(renewed.read_bytes())
    assert again.index == kept.index and again.extra == kept.extra
    assert int(again.checkpoint.split(b"\n")[1]) == wrote["newest_checkpoint_size"] > size
    offline = ok_json(cli("receipt", "verify", str(renewed), "--log-key", vkey, "--json"))
    assert offline["proof"]["checkpoint_size"] == wrote["newest_checkpoint_size"]

    # Without --log, the URL recorded in the receipt; without a key, trust on first use.
    out = ok(cli("receipt", "refresh", str(receipt)))
    assert "still in the log's newest checkpoint" in out["receipt"]
    assert "dpv:Marketing: ConsentGiven" in out["status now"]
    assert "trust on first use" in out["log key"]

    policy = tmp_path / "trust.policy"
    policy.write_text(f"log {vkey}\nquorum none\n")
    assert client_main(["receipt", "refresh", str(receipt), "--policy", str(policy),
                        "--json"]) == 0
    by_policy = json.loads(capsys.readouterr().out)
    assert by_policy["log_key"] == f"the policy {policy}"
    assert by_policy["newest_checkpoint_size"] >= fresh["newest_checkpoint_size"]

    _, stranger = generate_key(ORIGIN)
    assert client_main(["receipt", "refresh", str(receipt), "--log-key", stranger]) == 1
    err = capsys.readouterr().err
    assert "the checkpoint does not verify" in err and err.count("\n") == 1


# ---------------------------------------------------------------- revocation by token


def test_the_person_revokes_with_the_receipt_alone_once(node: NodeProcess,
                                                        tmp_path: Path) -> None:
    key = register(node, "revoke.example", tmp_path)
    receipt = tmp_path / "alice.tlog-proof"
    granted = grant(node, "revoke.example", key, "customer-1", receipt)
    vkey = log_key(node)

    # No key, no controller: only the node's URL and the receipt.
    out = ok(cli("revoke", "--log", node.url, "--receipt", str(receipt)))
    revocation = tmp_path / "alice.revocation.tlog-proof"
    assert out["receipt"].startswith(str(revocation))
    verified = ok_json(cli("receipt", "verify", str(revocation), "--log-key", vkey,
                           "--json"))
    assert verified["receipt"] == "revocation" and verified["by"] == "subject"
    assert verified["grant"] == granted["event id"]
    assert verified["proof"]["index"] == int(out["index"])
    now = ok_json(cli("receipt", "refresh", str(receipt), "--log-key", vkey, "--json"))
    assert set(now["status"].values()) == {"ConsentWithdrawn"}

    size = checkpoint_size(node)
    again = tmp_path / "again.tlog-proof"
    err = one_line_error(cli("revoke", "--log", node.url, "--receipt", str(receipt),
                             "--receipt-out", str(again)), 1)
    assert "already-revoked" in err and f"revoked at entry {out['index']}" in err
    assert not again.exists() and checkpoint_size(node) == size  # no second entry


def test_a_token_only_revokes_its_own_grant(node: NodeProcess, tmp_path: Path) -> None:
    key = register(node, "token.example", tmp_path)
    alice, bob = tmp_path / "alice.tlog-proof", tmp_path / "bob.tlog-proof"
    grant(node, "token.example", key, "alice", alice)
    granted_bob = grant(node, "token.example", key, "bob", bob)
    held_alice, held_bob = load_held_grant(alice), load_held_grant(bob)
    assert held_bob.grant_id.hex() == granted_bob["event id"]

    async def submit_alices_token_against_bobs_grant() -> Any:
        withdrawal = Revoke(controller="token.example", by="subject",
                            revoked_at=held_alice.grant.consented_at + 1,
                            grant=held_bob.grant_id)
        async with LogClient(node.url, log_key=log_key(node)) as client:
            (result,) = await client.submit([token_revocation(withdrawal, held_alice.token)])
        return result

    size = checkpoint_size(node)
    result = asyncio.run(submit_alices_token_against_bobs_grant())
    assert isinstance(result, Rejected) and result.problem.code == "bad-token"
    assert checkpoint_size(node) == size
    still = ok_json(cli("receipt", "refresh", str(bob), "--json"))
    assert set(still["status"].values()) == {"ConsentGiven"}


# ---------------------------------------------------------------- show and exports


def test_show_prints_the_receipt_and_its_exports(node: NodeProcess, tmp_path: Path) -> None:
    key = register(node, "show.example", tmp_path)
    receipt = tmp_path / "r.tlog-proof"
    granted = grant(node, "show.example", key, "customer-1", receipt)

    mine = ok_json(cli("receipt", "show", str(receipt)))
    assert mine["receipt"] == "grant" and mine["proof"]["verified"] is False
    assert mine["notice"]["url"] == "https://shop.example/privacy"
    kantara = ok_json(cli("receipt", "show", str(receipt), "--format", "kantara",
                          "--log-key", log_key(node)))
    assert kantara["version"] == "KI-CR-v1.1.0"
    assert kantara["consentReceiptID"] == granted["event id"]
    assert kantara["piiPrincipalId"] == granted["subject"]
    assert [p["purpose"] for p in kantara["services"][0]["purposes"]] == [
        "dpv:Marketing", "show.example:newsletter"]
    record = ok_json(cli("receipt", "show", str(receipt), "--format", "iso27560"))
    assert record["@type"] == "dpv:ConsentRecord"
    assert record["dpv:hasDataSubject"]["dct:identifier"] == granted["subject"]
    assert record["dpv:hasProcess"]["dpv:hasPersonalData"] == ["pd:EmailAddress"]
    assert record["dpv:hasConsentStatus"] == {"@type": "dpv:ConsentGiven"}


# ---------------------------------------------------------------- failures


BAD = [
    (["receipt"], 2, "expected verify, refresh or show"),
    (["receipt", "check", "f"], 2, "expected verify, refresh or show"),
    (["receipt", "verify", "f"], 2, "give --log-key or --policy"),
    (["receipt", "verify", "f", "--log-key", "nonsense"], 2, "--log-key"),
    (["receipt", "verify", "f", "--log-key", "k", "--policy", "p"], 2, "not allowed with"),
    (["receipt", "verify", "/nonexistent/r.tlog-proof", "--log-key",
      generate_key(ORIGIN)[1]], 1, "cannot read the receipt"),
    (["receipt", "show", "f", "--format", "pdf"], 2, "--format"),
    (["receipt", "verify", "f", "--policy", "/nonexistent/p"], 2, "--policy"),
]


@pytest.mark.parametrize("args, code, words", BAD)
def test_every_failure_is_one_line(args: list[str], code: int, words: str,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert client_main(args) == code
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and err.startswith("consent-ledger ")
