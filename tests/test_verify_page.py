"""The verification page (GET /verify) in a real headless Chromium, against a real node.

A person's grant receipt, made by `consent-ledger grant`, is handed to the page in the
URL fragment; the browser checks it with WebCrypto and the DOM must say "Verified"
with the controller, purposes and notice, and "in force" from the node's proven
status. Each tamper (a byte of the entry, a proof hash, the checkpoint signature) and
a key the log did not sign with must read "Not verified" with one sentence naming
what failed. Without a chromium binary the browser tests are skipped, saying how to
install it.
"""

from __future__ import annotations

import base64
import dataclasses
import html.parser
import json
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cliutil import cli, ok
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nodeproc import NodeProcess

from client.receipts import ReceiptExtra
from ledger.cosignature import cosigner_verifier_key
from ledger.note import Signature, format_signature_line, generate_key, split_note
from ledger.tlog_proof import format_proof, parse_proof

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on PATH: install it with "
                             "`apt-get update && apt-get install -y chromium` (Debian/Ubuntu)")

ORIGIN = "verify-page.test/log"
CONTROLLER = "shop.example"


@dataclasses.dataclass(frozen=True)
class Granted:
    node: NodeProcess
    receipt: bytes
    vkey: str


@pytest.fixture(scope="module")
def granted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Granted]:
    tmp = tmp_path_factory.mktemp("verify-page")
    node = NodeProcess(tmp / "data", "--origin", ORIGIN)
    node.start()
    key = tmp / "controller.key"
    ok(cli("keygen", "--out", str(key)))
    ok(cli("controller", "register", "--log", node.url, "--operator-key",
           str(node.data_dir / "operator.key"), "--controller", CONTROLLER,
           "--name", "Example Shop", "--contact", "dpo@shop.example", "--key", str(key)))
    notice, receipt = tmp / "notice.txt", tmp / "alice.tlog-proof"
    notice.write_text("We send you our newsletter.\n")
    ok(cli("grant", "--log", node.url, "--key", str(key), "--controller", CONTROLLER,
           "--subject-ref", "customer-1", "--purpose", "dpv:Marketing",
           "--purpose", f"{CONTROLLER}:newsletter", "--data-category", "pd:EmailAddress",
           "--notice-file", str(notice), "--notice-version", "2026-01",
           "--notice-url", "https://shop.example/privacy", "--jurisdiction", "DE",
           "--language", "de", "--receipt-out", str(receipt)))
    with urllib.request.urlopen(f"{node.url}/v1/keys", timeout=10) as resp:
        vkey = json.load(resp)["log"]
    yield Granted(node, receipt.read_bytes(), vkey)
    assert node.stop() == 0, node.stderr()


class _Page(html.parser.HTMLParser):
    """The dumped DOM's elements by id: attributes and text (text of nested ones too)."""

    def __init__(self) -> None:
        super().__init__()
        self.attrs: dict[str, dict[str, str | None]] = {}
        self.text: dict[str, str] = {}
        self._open: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        ident = found.get("id")
        if ident:
            self.attrs[ident], self.text[ident] = found, ""
        if tag not in ("meta", "link", "input", "br"):
            self._open.append(ident)

    def handle_endtag(self, tag: str) -> None:
        if tag not in ("meta", "link", "input", "br") and self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for ident in self._open:
            if ident:
                self.text[ident] += data


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def open_page(granted: Granted, tmp_path: Path, receipt: bytes, *, trust: str | None = None,
              node_key: bool = False) -> _Page:
    fragment = f"receipt={b64url(receipt)}"
    if trust is not None:
        fragment += f"&trust={b64url(trust.encode())}"
    if node_key:
        fragment += "&node-key"
    assert CHROMIUM is not None
    # --virtual-time-budget lets the page's promises (WebCrypto, fetch) settle before
    # the DOM is dumped; the budget is virtual time, not a wall-clock sleep.
    result = subprocess.run(
        [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
         f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=10000",
         "--dump-dom", f"{granted.node.url}/verify#{fragment}"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    page = _Page()
    page.feed(result.stdout)
    assert "result" in page.attrs, result.stdout[:2000]
    return page


def state(page: _Page) -> str | None:
    return page.attrs["result"].get("data-state")


def tampered_entry(receipt: bytes) -> bytes:
    proof = parse_proof(receipt)
    assert proof.extra is not None
    extra = ReceiptExtra.decode(proof.extra)
    entry = bytearray(extra.entry)
    entry[len(entry) // 2] ^= 0x01
    changed = dataclasses.replace(extra, entry=bytes(entry)).encode()
    return format_proof(dataclasses.replace(proof, extra=changed))


def tampered_proof_hash(receipt: bytes) -> bytes:
    proof = parse_proof(receipt)
    assert proof.hashes, "a receipt past the first entries has a proof to tamper with"
    first = bytes([proof.hashes[0][0] ^ 0x80]) + proof.hashes[0][1:]
    return format_proof(dataclasses.replace(proof, hashes=(first, *proof.hashes[1:])))


def tampered_signature(receipt: bytes) -> bytes:
    proof = parse_proof(receipt)
    text, sigs = split_note(proof.checkpoint)
    log = sigs[0]
    sig = bytearray(log.signature)
    sig[10] ^= 0x01
    lines = [Signature(log.name, log.key_id, bytes(sig)), *sigs[1:]]
    note = (text + "\n" + "".join(format_signature_line(s) for s in lines)).encode()
    return format_proof(dataclasses.replace(proof, checkpoint=note))


def test_the_page_and_its_assets_are_served_with_a_same_origin_policy(
        granted: Granted) -> None:
    with urllib.request.urlopen(f"{granted.node.url}/verify", timeout=10) as resp:
        assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
        assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
        assert b'src="verify/verify.js"' in resp.read()
    with urllib.request.urlopen(f"{granted.node.url}/verify/tlog.js", timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/javascript")
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{granted.node.url}/verify/..%2Fconfig.py", timeout=10)
    assert missing.value.code == 404
    assert missing.value.headers["Content-Type"].startswith("application/problem+json")


@needs_chromium
def test_a_valid_receipt_is_verified_and_read_out_in_plain_words(
        granted: Granted, tmp_path: Path) -> None:
    page = open_page(granted, tmp_path, granted.receipt, trust=granted.vkey)
    assert state(page) == "verified", page.text["reason"]
    assert page.text["verdict"] == "Verified"
    facts = " ".join(page.text["facts"].split())
    assert f"Who holds your consent{CONTROLLER}" in facts
    assert f"For these purposesdpv:Marketing{CONTROLLER}:newsletter" in facts
    assert "Over these kinds of datapd:EmailAddress" in facts
    assert "version 2026-01at https://shop.example/privacy" in facts
    assert "reference customer-1" in facts
    name, key_id = granted.vkey.split("+")[:2]
    assert f"signed by the log key {name} (key ID {key_id})" in page.text["reason"]
    assert f"{name} + {key_id}" in page.text["log-facts"]
    assert page.attrs["trust-note"].get("hidden") is not None  # no trust in the node asked
    status = page.text["status"]
    assert "dpv:Marketing: in force" in status and f"{CONTROLLER}:newsletter: in force" in status
    assert page.text["status-summary"].startswith("In force now for every purpose")


@needs_chromium
def test_trusting_the_node_key_works_and_says_so(granted: Granted, tmp_path: Path) -> None:
    page = open_page(granted, tmp_path, granted.receipt, node_key=True)
    assert state(page) == "verified", page.text["reason"]
    assert page.attrs["trust-note"].get("hidden") is None
    assert "A dishonest node could serve its own key" in " ".join(page.text["trust-note"].split())


@needs_chromium
@pytest.mark.parametrize(("tamper", "part", "words"), [
    (tampered_entry, "inclusion",
     "The inclusion proof does not lead from the log entry to the checkpoint's root hash."),
    (tampered_proof_hash, "inclusion",
     "The inclusion proof does not lead from the log entry to the checkpoint's root hash."),
    (lambda receipt: receipt.replace(b"\n\n", b"\n"), "format",
     "The receipt is not a tlog-proof: it has no empty line before its checkpoint."),
    (tampered_signature, "checkpoint",
     "The checkpoint's signature by the log key verify-page.test/log (key ID {id}) does not "
     "verify."),
])
def test_a_tampered_receipt_is_not_verified_and_the_page_names_what_failed(
        granted: Granted, tmp_path: Path, tamper: object, part: str, words: str) -> None:
    assert callable(tamper)
    page = open_page(granted, tmp_path, tamper(granted.receipt), trust=granted.vkey)
    assert state(page) == "failed"
    assert page.text["verdict"] == "Not verified"
    assert page.attrs["result"].get("data-part") == part
    assert page.text["reason"] == words.format(id=granted.vkey.split("+")[1])
    assert page.text["facts"] == ""


@needs_chromium
def test_a_key_the_log_did_not_sign_with_is_not_trusted(granted: Granted,
                                                         tmp_path: Path) -> None:
    _, other = generate_key(ORIGIN)
    page = open_page(granted, tmp_path, granted.receipt, trust=other)
    assert state(page) == "failed"
    other_id = other.split("+")[1]
    assert page.text["reason"] == ("The checkpoint carries no signature by the log key you "
                                   f"trust ({ORIGIN}, key ID {other_id}).")


@needs_chromium
def test_a_policy_whose_witness_quorum_is_not_met_is_not_satisfied(
        granted: Granted, tmp_path: Path) -> None:
    witness = cosigner_verifier_key("witness.example/w1", Ed25519PrivateKey.generate().public_key())
    policy = (f"log {granted.vkey}\nwitness w1 {witness}\ngroup all-of-them all w1\n"
              "quorum all-of-them\n")
    page = open_page(granted, tmp_path, granted.receipt, trust=policy)
    assert state(page) == "failed"
    assert page.attrs["result"].get("data-part") == "checkpoint"
    assert page.text["reason"] == ("The checkpoint's cosignatures do not meet your policy's "
                                   "quorum all-of-them: it is cosigned by no witness you trust.")
