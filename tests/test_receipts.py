"""Receipts without a node: built from an acceptance, read, verified, tampered, exported.

The log here is a real Merkle tree of real entries with a signed (and, where the test
says so, cosigned) checkpoint; only the HTTP round trip is left to test_receipt_cli.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from factories import CONTROLLER, T0, grant, revoke

from client.log_client import Accepted, VerifiedCheckpoint
from client.policy import parse_policy
from client.receipts import (
    KANTARA_VERSION,
    PENDING_FORMAT,
    ReceiptError,
    ReceiptExtra,
    ReceiptRejected,
    build_receipt,
    load_held_grant,
    open_receipt,
    pending_receipt,
    policy_opener,
    read_receipt,
    render,
    to_iso27560,
    to_kantara,
    verify_receipt,
)
from ledger.checkpoint import Checkpoint, sign_checkpoint
from ledger.commitment import subject_commitment, token_hash
from ledger.cosignature import CosignatureSigner, cosigner_verifier_key
from ledger.entry import GENESIS_PREV, LogEntry
from ledger.errors import LedgerError
from ledger.merkle import leaf_hash
from ledger.note import (
    ALG_ED25519,
    Ed25519Signer,
    format_verifier_key,
    new_verifier,
    raw_public_key,
)
from ledger.signed import SignedEvent, sign_event, token_revocation
from ledger.tlog_proof import format_proof, log_key_opener, parse_proof, verify_proof
from ledger.tree import MerkleTree

ORIGIN = "receipts.test/log"
LOG_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
LOG = Ed25519Signer.from_private_key(ORIGIN, LOG_KEY)
LOG_VKEY = format_verifier_key(ORIGIN, ALG_ED25519, raw_public_key(LOG_KEY.public_key()))
WITNESS_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(2, 34)))
WITNESS = CosignatureSigner.from_private_key("witness.example", WITNESS_KEY)
CONTROLLER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(3, 35)))
REF, SALT, TOKEN = "customer-7", bytes(range(32)), bytes(range(100, 132))
GRANT = grant(subject=subject_commitment(CONTROLLER, REF, SALT), token_hash=token_hash(TOKEN),
              recipients=("mailer.example",), service="Newsletter")
GRANT_ID = GRANT.hash()
WITNESS_VKEY = cosigner_verifier_key("witness.example", WITNESS_KEY.public_key())
OPENER = log_key_opener(new_verifier(LOG_VKEY))


def _log(events: list[SignedEvent], *, cosign: bool = False
         ) -> tuple[list[LogEntry], MerkleTree, bytes]:
    """A log of `events` after 3 filler entries, and its signed checkpoint note."""
    entries: list[LogEntry] = []
    prev = GENESIS_PREV
    filler = [sign_event(grant(consented_at=T0 + i), CONTROLLER_KEY) for i in range(3)]
    for i, signed in enumerate([*filler, *events]):
        entry = LogEntry(index=i, time=T0 + 5_000 + i, prev=prev, signed=signed)
        entries.append(entry)
        prev = entry.leaf_hash
    tree = MerkleTree.from_leaf_hashes(e.leaf_hash for e in entries)
    signers: list[Any] = [LOG, WITNESS.at(1_800_000_000)] if cosign else [LOG]
    note = sign_checkpoint(Checkpoint(ORIGIN, tree.size, tree.root()), signers)
    return entries, tree, note


def _accepted(entries: list[LogEntry], tree: MerkleTree, note: bytes, index: int) -> Accepted:
    e = entries[index]
    cp = Checkpoint(ORIGIN, tree.size, tree.root())
    return Accepted(index, e.signed.id, e.leaf_hash, False,
                    tuple(tree.inclusion_proof(index, tree.size)),
                    VerifiedCheckpoint(cp, note), e.encoded)


def grant_receipt(*, cosign: bool = False, log: str | None = "https://log.example") -> bytes:
    entries, tree, note = _log([sign_event(GRANT, CONTROLLER_KEY)], cosign=cosign)
    return build_receipt(_accepted(entries, tree, note, 3), log=log, subject_ref=REF,
                         salt=SALT, token=TOKEN)


def revocation_receipt() -> bytes:
    withdrawal = token_revocation(revoke(grant=GRANT_ID, reason="no more mail"), TOKEN)
    entries, tree, note = _log([sign_event(GRANT, CONTROLLER_KEY), withdrawal])
    return build_receipt(_accepted(entries, tree, note, 4))


def _with_extra(data: bytes, **changes: Any) -> bytes:
    proof = parse_proof(data)
    assert proof.extra is not None
    extra = ReceiptExtra.decode(proof.extra)
    new = ReceiptExtra(**{**extra.__dict__, **changes})
    return format_proof(dataclasses.replace(proof, extra=new.encode()))


def _flip(raw: bytes, at: int) -> bytes:
    return raw[:at] + bytes([raw[at] ^ 1]) + raw[at + 1:]


# ---------------------------------------------------------------- the happy paths


def test_a_grant_receipt_verifies_and_says_what_was_consented_to() -> None:
    data = grant_receipt()
    r = verify_receipt(read_receipt(data), OPENER)
    assert r.verified is not None and r.verified.size == 4 and r.file.index == 3
    assert r.event == GRANT and r.grant_id == GRANT_ID
    shown = render(r)
    json.dumps(shown)
    assert shown["receipt"] == "grant" and shown["controller"] == CONTROLLER
    assert shown["subject"] == {"reference": REF, "commitment": GRANT.subject.hex()}
    assert shown["purposes"] == list(GRANT.purposes)
    assert shown["data_categories"] == list(GRANT.data_categories)
    assert shown["notice"]["url"] == GRANT.notice.url
    assert shown["consented_at"] == "2026-01-01T00:00:00Z"
    assert shown["valid_until"] == "2027-01-01T00:00:00Z"
    assert shown["recipients"] == ["mailer.example"] and shown["service"] == "Newsletter"
    assert TOKEN.hex() not in json.dumps(shown) and SALT.hex() not in json.dumps(shown)
    assert shown["proof"]["index"] == 3 and shown["proof"]["verified"] is True


def test_a_generic_tlog_proof_verifier_accepts_a_receipt() -> None:
    """What a verifier that knows nothing of consent-ledger does: the leaf is the
    RFC 6962 hash of the entry, which the receipt's extra data carries."""
    proof = parse_proof(grant_receipt())
    assert proof.extra is not None
    entry = ReceiptExtra.decode(proof.extra).entry
    assert verify_proof(proof, leaf_hash(entry), OPENER, origin=ORIGIN).size == 4


def test_a_revocation_receipt_holds_no_secrets() -> None:
    r = verify_receipt(read_receipt(revocation_receipt()), OPENER)
    assert not r.is_grant and r.grant_id == GRANT_ID
    extra = r.file.extra
    assert (extra.subject_ref, extra.salt, extra.token, extra.log) == (None,) * 4
    shown = render(r)
    assert shown["receipt"] == "revocation" and shown["by"] == "subject"
    assert shown["grant"] == GRANT_ID.hex() and shown["reason"] == "no more mail"
    record = to_iso27560(r)
    assert record["dpv:hasConsentStatus"] == {"@type": "dpv:ConsentWithdrawn"}
    assert record["dct:identifier"] == GRANT_ID.hex()
    with pytest.raises(ReceiptError, match="no Kantara rendering"):
        to_kantara(r)


def test_a_policy_quorum_decides_for_cosigned_checkpoints() -> None:
    policy = parse_policy(f"log {LOG_VKEY}\nwitness w {WITNESS_VKEY}\nquorum w\n")
    opener = policy_opener(policy, now=1_800_000_100)
    r = verify_receipt(read_receipt(grant_receipt(cosign=True)), opener)
    assert r.verified is not None
    with pytest.raises(ReceiptRejected, match="does not meet quorum") as caught:
        verify_receipt(read_receipt(grant_receipt(cosign=False)), opener)
    assert caught.value.part == "checkpoint"


# ---------------------------------------------------------------- exports


def test_the_kantara_export_maps_the_grant() -> None:
    k = to_kantara(verify_receipt(read_receipt(grant_receipt()), OPENER))
    json.dumps(k)
    assert k["version"] == KANTARA_VERSION and k["jurisdiction"] == "DE"
    assert k["consentTimestamp"] == T0 // 1000 and k["collectionMethod"] == "web-form"
    assert k["consentReceiptID"] == GRANT_ID.hex() and k["language"] == "de"
    assert k["piiPrincipalId"] == GRANT.subject.hex()  # the commitment, never the ref
    assert k["piiControllers"] == [{"piiController": CONTROLLER}]
    assert k["policyUrl"] == GRANT.notice.url
    (service,) = k["services"]
    assert service["service"] == "Newsletter"
    assert [p["purpose"] for p in service["purposes"]] == list(GRANT.purposes)
    first = service["purposes"][0]
    assert first["piiCategory"] == list(GRANT.data_categories) and first["primaryPurpose"]
    assert first["thirdPartyDisclosure"] is True
    assert first["thirdPartyName"] == "mailer.example"
    assert REF not in json.dumps(k)


def test_the_iso27560_export_is_dpv_json_ld() -> None:
    d = to_iso27560(verify_receipt(read_receipt(grant_receipt()), OPENER))
    json.dumps(d)
    assert d["@type"] == "dpv:ConsentRecord" and d["@context"]["dpv"] == "https://w3id.org/dpv#"
    assert d["dct:conformsTo"].endswith("dpv-27560#record")
    assert d["dpv:hasDataSubject"]["dct:identifier"] == GRANT.subject.hex()
    assert d["dpv:hasDataController"]["dct:identifier"] == CONTROLLER
    assert d["dpv:hasJurisdiction"] == "loc:DE" and d["dpv:hasLegalBasis"] == "dpv:Consent"
    process = d["dpv:hasProcess"]
    assert process["dpv:hasPurpose"] == list(GRANT.purposes)
    assert process["dpv:hasPersonalData"] == list(GRANT.data_categories)
    assert process["dpv:hasStorageCondition"]["dpv:hasDuration"] == "P730D"
    assert process["dpv:hasRecipient"] == ["mailer.example"]
    assert d["dpv:hasConsentStatus"] == {"@type": "dpv:ConsentGiven"}
    assert d["dpv:hasNotice"]["@id"] == GRANT.notice.url
    assert d["dct:created"]["@value"] == "2026-01-01T00:00:00Z"
    assert d["dpv:hasExpiry"]["@value"] == "2027-01-01T00:00:00Z"
    assert d["cl:grant"]["cl:logIndex"] == 3 and d["cl:grant"]["cl:logOrigin"] == ORIGIN


# ---------------------------------------------------------------- refusals


def _refused(data: bytes) -> ReceiptError:
    with pytest.raises(ReceiptError) as caught:
        verify_receipt(read_receipt(data), OPENER)
    return caught.value


def test_each_tampering_is_refused_naming_what_failed() -> None:
    data = grant_receipt()
    proof = parse_proof(data)
    extra = ReceiptExtra.decode(proof.extra or b"")

    entry_flipped = _with_extra(data, entry=_flip(extra.entry, len(extra.entry) // 2))
    assert "the entry is not in the log at index 3" in str(_refused(entry_flipped))

    hashes = list(proof.hashes)
    hashes[0] = _flip(hashes[0], 0)
    err = _refused(format_proof(dataclasses.replace(proof, hashes=tuple(hashes))))
    assert isinstance(err, ReceiptRejected) and err.part == "inclusion"

    err = _refused(format_proof(dataclasses.replace(proof, index=2)))
    assert isinstance(err, ReceiptRejected) and err.part == "inclusion"

    sig_at = proof.checkpoint.rindex(b" ") + 30  # inside the signature, past the key ID
    forged = proof.checkpoint[:sig_at] + (b"B" if proof.checkpoint[sig_at:sig_at + 1] == b"A"
                                          else b"A") + proof.checkpoint[sig_at + 1:]
    err = _refused(format_proof(dataclasses.replace(proof, checkpoint=forged)))
    assert isinstance(err, ReceiptRejected) and err.part == "checkpoint"
    assert "the checkpoint does not verify: invalid signature" in str(err)

    err = _refused(_with_extra(data, salt=_flip(SALT, 0)))
    assert isinstance(err, ReceiptRejected) and err.part == "salt"
    assert "subject commitment" in str(err)

    err = _refused(_with_extra(data, token=_flip(TOKEN, 31)))
    assert isinstance(err, ReceiptRejected) and err.part == "token"

    err = _refused(_with_extra(data, subject_ref="customer-8"))
    assert isinstance(err, ReceiptRejected) and err.part == "salt"


def test_a_grant_receipt_needs_all_its_secrets_and_a_revocation_none() -> None:
    err = _refused(_with_extra(grant_receipt(), token=None))
    assert "must hold" in str(err)
    err = _refused(_with_extra(revocation_receipt(), token=TOKEN))
    assert "holds no secrets" in str(err)


def test_building_refuses_secrets_that_do_not_open_the_grant() -> None:
    entries, tree, note = _log([sign_event(GRANT, CONTROLLER_KEY)])
    with pytest.raises(ReceiptRejected, match="subject commitment"):
        build_receipt(_accepted(entries, tree, note, 3), subject_ref="someone-else",
                      salt=SALT, token=TOKEN)
    with pytest.raises(ReceiptError, match="no entry bytes"):
        build_receipt(dataclasses.replace(_accepted(entries, tree, note, 3), entry=None))


def test_reading_refuses_what_is_not_a_receipt() -> None:
    for data, words in [
        (b'{"format": "consent-ledger receipt v0"}', "JSON receipt"),
        (b"c2sp.org/tlog-proof@v1\nindex 0\n\n" + parse_proof(grant_receipt()).checkpoint,
         "without extra data"),
        (grant_receipt().replace(b"index 3", b"index 03"), "line 3"),
        (_replace_extra_raw(grant_receipt(), b"\x80"), "extra data is not a"),
    ]:
        with pytest.raises(ReceiptError, match=words):
            read_receipt(data)


def _replace_extra_raw(data: bytes, raw: bytes) -> bytes:
    return format_proof(dataclasses.replace(parse_proof(data), extra=raw))


def test_every_bit_flip_is_caught() -> None:
    """No bit of a receipt without the unauthenticated log-URL hint can change unseen:
    the extra data is bound by the inclusion proof (entry) and by the grant (secrets)."""
    data = grant_receipt(log=None)
    survived = []
    # One bit of every byte, a different one from byte to byte (every bit of every byte
    # is 8 times the run time for little more: test_tlog_proof flips them all).
    for i in range(len(data)):
        flipped = bytearray(data)
        flipped[i] ^= 1 << (i * 3 % 8)
        try:
            verify_receipt(read_receipt(bytes(flipped)), OPENER)
        except (ReceiptError, LedgerError):
            continue
        survived.append(i)
    assert survived == []


# ---------------------------------------------------------------- files


def test_a_pending_receipt_holds_the_secrets_until_the_proof(tmp_path: Any) -> None:
    path = tmp_path / "pending.tlog-proof"
    path.write_bytes(pending_receipt(grant=GRANT.encode(), subject_ref=REF, salt=SALT,
                                     token=TOKEN, log="https://log.example"))
    assert json.loads(path.read_text())["format"] == PENDING_FORMAT
    held = load_held_grant(path)
    assert held.grant == GRANT and held.token == TOKEN and held.receipt is None

    proven = tmp_path / "proven.tlog-proof"
    proven.write_bytes(grant_receipt())
    held = load_held_grant(proven)
    assert held.grant_id == GRANT_ID and held.receipt is not None

    revoked = tmp_path / "revoked.tlog-proof"
    revoked.write_bytes(revocation_receipt())
    with pytest.raises(ReceiptError, match="not the receipt of a grant"):
        load_held_grant(revoked)
    v0 = tmp_path / "old.json"
    v0.write_text('{"format": "consent-ledger receipt v0"}')
    with pytest.raises(ReceiptError, match="old v0 format"):
        load_held_grant(v0)


def test_open_receipt_refuses_an_entry_for_another_index() -> None:
    data = grant_receipt()
    proof = parse_proof(data)
    file = read_receipt(format_proof(dataclasses.replace(proof, index=2)))
    with pytest.raises(ReceiptRejected, match="says it is entry 3"):
        open_receipt(file, verified=None)
