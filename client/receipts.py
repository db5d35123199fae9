"""Receipts people keep: one C2SP tlog-proof file per logged grant or revocation.

A receipt is a standard c2sp.org/tlog-proof@v1 file (ledger/tlog_proof.py): the entry's
index, its inclusion proof and the checkpoint verbatim (with whatever cosignatures it
carries), so any tlog-proof verifier can check it. What is ours travels in its `extra`
line, as the canonical msgpack record ReceiptExtra (docs/formats.md, "Receipts"): the
log entry itself, whose RFC 6962 leaf hash is what the proof proves, and for a grant
the person's secrets: their reference at the controller and the salt that make the
grant's subject commitment, and the revocation token whose hash the grant carries.

The extra data is unauthenticated, so nothing in it is believed until the inclusion
proof has led from its entry to a checkpoint a trusted key (or policy quorum) signed;
the secrets are then checked against the grant they claim to open. Reading and
verifying are separate steps (read_receipt, verify_receipt) so that a tampered entry
is reported as "not in the log" rather than as whatever decoding error the tamper
happens to cause.

Renderings: `render` (JSON for humans), `to_kantara` (Kantara Consent Receipt v1.1)
and `to_iso27560` (an ISO/IEC TS 27560 consent record in W3C DPV JSON-LD).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import json
import os
from pathlib import Path
from typing import Any

from client.errors import ClientError, LogVerificationError
from client.log_client import Accepted
from client.policy import TrustPolicy
from ledger.checkpoint import Checkpoint, parse_checkpoint
from ledger.codec import Bin, Record, Text, optional, spec
from ledger.commitment import SALT_SIZE, TOKEN_SIZE, subject_commitment, token_matches
from ledger.entry import MAX_ENTRY_SIZE, LogEntry
from ledger.errors import LedgerError, NoteError
from ledger.events import Grant, Revoke, event_hash
from ledger.merkle import leaf_hash
from ledger.note import split_note
from ledger.status import ConsentStatus
from ledger.tlog_proof import (
    OpenCheckpoint,
    ProofRejectedError,
    TlogProof,
    format_proof,
    parse_proof,
    verify_proof,
)

RECEIPT_FORMAT = "consent-ledger receipt v1"
PENDING_FORMAT = "consent-ledger pending receipt v1"
SUFFIX = ".tlog-proof"  # what the tlog-proof spec recommends
MAX_RECEIPT = 2 * 1024 * 1024
KANTARA_VERSION = "KI-CR-v1.1.0"
DPV_27560_RECORD = "https://w3id.org/dpv/schema/dpv-27560#record"
JSONLD_CONTEXT = {
    "dpv": "https://w3id.org/dpv#",
    "pd": "https://w3id.org/dpv/pd#",
    "loc": "https://w3id.org/dpv/loc#",
    "eu-gdpr": "https://w3id.org/dpv/legal/eu/gdpr#",
    "dct": "http://purl.org/dc/terms/",
    "xsd": "http://www.w3.org/2001/XMLSchema#",
    "cl": "https://consent-ledger.dev/ns#",
}


class ReceiptError(ClientError):
    """A receipt that cannot be read, or holds what does not fit together."""


class ReceiptRejected(ReceiptError):
    """A receipt that does not verify; `part` names the check that failed."""

    def __init__(self, part: str, message: str) -> None:
        self.part = part
        super().__init__(message)


@dataclasses.dataclass(frozen=True)
class ReceiptExtra(Record):
    """The `extra` data of a receipt, canonical msgpack (ledger/codec.py)."""

    MAX_SIZE = MAX_ENTRY_SIZE + 4096

    format: str = spec(Text(32, choices=frozenset({RECEIPT_FORMAT})))
    entry: bytes = spec(Bin(max_len=MAX_ENTRY_SIZE))
    log: str | None = optional(Text(2048))  # where the log was reached: a hint only
    subject_ref: str | None = optional(Text(1024))
    salt: bytes | None = optional(Bin(size=SALT_SIZE))
    token: bytes | None = optional(Bin(size=TOKEN_SIZE))


@dataclasses.dataclass(frozen=True)
class ReceiptFile:
    """A receipt as read: well formed, nothing in it verified yet."""

    proof: TlogProof
    extra: ReceiptExtra

    @property
    def index(self) -> int:
        return self.proof.index

    @property
    def checkpoint(self) -> Checkpoint:
        """The checkpoint the receipt claims (unverified: see verify_receipt)."""
        return parse_checkpoint(split_note(self.proof.checkpoint)[0])


@dataclasses.dataclass(frozen=True)
class Receipt:
    """A receipt whose entry decoded and whose secrets fit its grant.

    `verified` is the checkpoint a trusted key or policy accepted, None if unchecked.
    """

    file: ReceiptFile
    entry: LogEntry
    verified: Checkpoint | None

    @property
    def event(self) -> Grant | Revoke:
        body = self.entry.signed.body
        assert isinstance(body, Grant | Revoke)  # open_receipt refuses other kinds
        return body

    @property
    def event_id(self) -> bytes:
        return self.entry.signed.id

    @property
    def is_grant(self) -> bool:
        return isinstance(self.event, Grant)

    @property
    def grant_id(self) -> bytes:
        """The grant this receipt is about: its own event, or the one it revokes."""
        event = self.event
        if isinstance(event, Grant):
            return self.event_id
        assert event.grant is not None  # open_receipt refuses revocations by subject
        return event.grant


# ---------------------------------------------------------------- building


def build_receipt(accepted: Accepted, *, log: str | None = None, subject_ref: str | None = None,
                  salt: bytes | None = None, token: bytes | None = None) -> bytes:
    """The receipt file for an accepted event (LogClient.submit's Accepted).

    A grant's receipt needs the person's `subject_ref`, `salt` and `token`; they are
    checked against the grant before anything is returned.
    """
    if accepted.entry is None:
        raise ReceiptError("this acceptance carries no entry bytes to build a receipt from")
    try:
        extra = ReceiptExtra(format=RECEIPT_FORMAT, entry=accepted.entry, log=log,
                             subject_ref=subject_ref, salt=salt, token=token)
        proof = TlogProof(accepted.index, accepted.proof, accepted.checkpoint.note,
                          extra.encode())
    except LedgerError as exc:
        raise ReceiptError(f"cannot build the receipt: {exc}") from None
    data = format_proof(proof)
    open_receipt(read_receipt(data), verified=None)  # the secrets must open the grant
    return data


# ---------------------------------------------------------------- reading and verifying


def read_receipt(data: bytes) -> ReceiptFile:
    """Parse a receipt file: the tlog-proof and our extra record, strictly."""
    if data.lstrip()[:1] == b"{":
        raise ReceiptError("a JSON receipt (pending, or of the old v0 format), not a "
                           "c2sp.org/tlog-proof@v1 receipt")
    try:
        proof = parse_proof(data)
    except LedgerError as exc:
        raise ReceiptError(f"not a tlog-proof receipt: {exc}") from None
    if proof.extra is None:
        raise ReceiptError("a tlog-proof without extra data: it holds no consent-ledger entry")
    try:
        extra = ReceiptExtra.decode(proof.extra)
    except LedgerError as exc:
        raise ReceiptError(f"the extra data is not a {RECEIPT_FORMAT} record: {exc}") from None
    return ReceiptFile(proof, extra)


def verify_receipt(file: ReceiptFile, open_checkpoint: OpenCheckpoint) -> Receipt:
    """Verify a receipt offline: checkpoint signature (and quorum), then inclusion of the
    entry, then what the entry holds. ReceiptRejected names the part that failed."""
    try:
        checkpoint = verify_proof(file.proof, leaf_hash(file.extra.entry), open_checkpoint)
    except ProofRejectedError as exc:
        if exc.part == "checkpoint":
            raise ReceiptRejected("checkpoint", f"the checkpoint does not verify: "
                                                f"{exc.reason}") from None
        raise ReceiptRejected(
            "inclusion", f"the entry is not in the log at index {file.index}: the inclusion "
                         f"proof does not lead from it to the checkpoint's root "
                         f"({exc.reason})") from None
    return open_receipt(file, verified=checkpoint)


def open_receipt(file: ReceiptFile, *, verified: Checkpoint | None) -> Receipt:
    """Decode the entry and check that the receipt's parts fit together."""
    extra = file.extra
    try:
        entry = LogEntry.decode(extra.entry)
    except LedgerError as exc:
        raise ReceiptError(f"the entry does not decode: {exc}") from None
    if entry.index != file.index:
        raise ReceiptRejected("index", f"the entry says it is entry {entry.index}, but the "
                                       f"proof is for index {file.index}")
    event = entry.signed.body
    secrets = (extra.subject_ref, extra.salt, extra.token)
    if isinstance(event, Grant):
        if None in secrets:
            raise ReceiptError("a grant receipt must hold the subject reference, the salt "
                               "and the revocation token")
        assert extra.subject_ref is not None and extra.salt is not None  # just checked
        assert extra.token is not None
        if subject_commitment(event.controller, extra.subject_ref, extra.salt) \
                != event.subject:
            raise ReceiptRejected("salt", "the salt and subject reference do not make the "
                                          "grant's subject commitment")
        if not token_matches(extra.token, event.token_hash):
            raise ReceiptRejected("token", "the revocation token does not match the grant")
    elif isinstance(event, Revoke) and event.grant is not None:
        if secrets != (None, None, None):
            raise ReceiptError("a revocation receipt holds no secrets")
    else:
        raise ReceiptError(f"the entry holds a {event.KIND} event, not a grant or a "
                           "revocation of one grant")
    return Receipt(file, entry, verified)


def policy_opener(policy: TrustPolicy, *, now: int) -> OpenCheckpoint:
    """Open checkpoints as a tlog-policy says: a listed log's signature and the witness
    quorum. No age limit: a receipt proves what was logged, not that it is recent."""

    def opened(note: bytes) -> Checkpoint:
        try:
            return policy.check_checkpoint(note, now=now, max_age=None).checkpoint
        except LogVerificationError as exc:
            raise NoteError(str(exc)) from None

    return opened


# ---------------------------------------------------------------- files


def read_file(path: str | Path) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_RECEIPT + 1)
    except OSError as exc:
        raise ReceiptError(f"{path}: cannot read the receipt: {exc.strerror or exc}") from None
    if len(data) > MAX_RECEIPT:
        raise ReceiptError(f"{path}: larger than {MAX_RECEIPT} bytes, not a receipt")
    return data


def write_private(path: Path, data: bytes, *, create: bool) -> None:
    """Write at mode 0600 from creation; `create` refuses an existing file, otherwise
    the file is replaced whole, so a crash leaves the old content or the new."""
    target = path if create else path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ReceiptError(f"{path}: a file already exists; refusing to overwrite a receipt"
                           ) from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if not create:
        os.replace(target, path)


# A grant's receipt before the log has proven it: written before the grant is sent, so
# the person holds their token and salt even if the writer dies before the proof.
def pending_receipt(*, grant: bytes, subject_ref: str, salt: bytes, token: bytes,
                    log: str) -> bytes:
    data = {"format": PENDING_FORMAT, "log": log, "event_id": event_hash(grant).hex(),
            "subject_ref": subject_ref, "salt": salt.hex(), "revocation_token": token.hex(),
            "grant": base64.b64encode(grant).decode()}
    return (json.dumps(data, indent=2) + "\n").encode()


@dataclasses.dataclass(frozen=True)
class HeldGrant:
    """What a person's receipt gives them over their grant: enough to revoke it and to
    ask for its status. `receipt` is None for a pending receipt (no proof yet)."""

    grant: Grant
    grant_id: bytes
    subject_ref: str
    salt: bytes
    token: bytes
    receipt: Receipt | None


def _read_pending(data: bytes) -> HeldGrant:
    try:
        obj = json.loads(data)
        if type(obj) is not dict or obj.get("format") != PENDING_FORMAT:
            raise ValueError(f"its format is not {PENDING_FORMAT!r} (receipts of the old v0 "
                             "format are no longer read)")
        raw = base64.b64decode(obj["grant"], validate=True)
        grant = Grant.decode(raw)
        salt, token = bytes.fromhex(obj["salt"]), bytes.fromhex(obj["revocation_token"])
        ref = obj["subject_ref"]
        if type(ref) is not str or len(salt) != SALT_SIZE or len(token) != TOKEN_SIZE:
            raise ValueError("bad subject_ref, salt or token")
    except (ValueError, KeyError, TypeError, binascii.Error, RecursionError,
            LedgerError) as exc:
        raise ReceiptError(f"not a pending receipt ({exc})") from None
    if not isinstance(grant, Grant):  # decode() checked the kind; this tells mypy
        raise ReceiptError("not a pending receipt (no grant)")
    if subject_commitment(grant.controller, ref, salt) != grant.subject:
        raise ReceiptRejected("salt", "the salt and subject reference do not make the "
                                      "grant's subject commitment")
    if not token_matches(token, grant.token_hash):
        raise ReceiptRejected("token", "the revocation token does not match the grant")
    return HeldGrant(grant, event_hash(raw), ref, salt, token, None)


def load_held_grant(path: str | Path) -> HeldGrant:
    """A person's grant receipt (or pending receipt), its secrets checked to fit."""
    data = read_file(path)
    try:
        if data.lstrip()[:1] == b"{":
            return _read_pending(data)
        r = open_receipt(read_receipt(data), verified=None)
    except ReceiptRejected as exc:
        raise ReceiptRejected(exc.part, f"{path}: {exc}") from None
    except ReceiptError as exc:
        raise ReceiptError(f"{path}: {exc}") from None
    event, extra = r.event, r.file.extra
    if not isinstance(event, Grant):
        raise ReceiptError(f"{path}: a revocation receipt, not the receipt of a grant")
    assert extra.subject_ref is not None and extra.salt is not None  # open_receipt checked
    assert extra.token is not None
    return HeldGrant(event, r.event_id, extra.subject_ref, extra.salt, extra.token, r)


# ---------------------------------------------------------------- renderings


def iso_time(ms: int) -> str:
    when = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


def _proof_summary(r: Receipt) -> dict[str, Any]:
    cp = r.file.checkpoint
    return {"log": cp.origin, "index": r.file.index, "event_id": r.event_id.hex(),
            "leaf_hash": leaf_hash(r.file.extra.entry).hex(), "logged_at": iso_time(r.entry.time),
            "checkpoint_size": cp.size,
            "verified": r.verified is not None}


def render(r: Receipt, *, status: dict[str, ConsentStatus] | None = None) -> dict[str, Any]:
    """The receipt for a person to read, as JSON. Secrets are said to be held, not shown."""
    event = r.event
    out: dict[str, Any] = {"receipt": "grant" if isinstance(event, Grant) else "revocation",
                           "controller": event.controller}
    if isinstance(event, Grant):
        out.update({
            "subject": {"reference": r.file.extra.subject_ref,
                        "commitment": event.subject.hex()},
            "purposes": list(event.purposes), "data_categories": list(event.data_categories),
            "legal_basis": event.legal_basis,
            "notice": {"version": event.notice.version, "sha256": event.notice.sha256.hex(),
                       **({"url": event.notice.url} if event.notice.url else {})},
            "collection_method": event.collection_method,
            "jurisdiction": event.jurisdiction, "language": event.language,
            "consented_at": iso_time(event.consented_at),
            "valid_until": iso_time(event.valid_until),
            "retention_days": event.retention_days, "withdrawal": event.withdrawal,
            "revocation_token": "held in this receipt: it withdraws this grant, once"})
        if event.service is not None:
            out["service"] = event.service
        if event.recipients is not None:
            out["recipients"] = list(event.recipients)
    else:
        out.update({"grant": r.grant_id.hex(), "by": event.by,
                    "revoked_at": iso_time(event.revoked_at)})
        if event.reason is not None:
            out["reason"] = event.reason
    if status is not None:
        out["status"] = {p: s.value for p, s in status.items()}
    out["proof"] = _proof_summary(r)
    return out


def _grant_of(r: Receipt, what: str) -> Grant:
    if not isinstance(r.event, Grant):
        raise ReceiptError(f"a revocation receipt has no {what} rendering: it records no "
                           "consent (show the grant's receipt instead)")
    return r.event


def to_kantara(r: Receipt) -> dict[str, Any]:
    """A Kantara Consent Receipt v1.1 (KI-CR-v1.1.0) for a grant.

    The PII principal is named by the subject commitment, not the reference: the
    export may travel, and the commitment is what the log and controller know.
    Controller contact details are not in the grant (they are in its registration
    entry), so only the controller's id is given.
    """
    g = _grant_of(r, "Kantara")
    explicit = g.legal_basis in ("dpv:ExplicitlyExpressedConsent", "eu-gdpr:A9-2-a")
    termination = (f"valid until {iso_time(g.valid_until)}; data retained "
                   f"{g.retention_days} days; withdraw: {g.withdrawal}")
    recipients = list(g.recipients or ())
    purposes = [{
        "purpose": p, "purposeCategory": [p],
        "consentType": "EXPLICIT" if explicit else "EXPRESSED",
        "piiCategory": list(g.data_categories), "primaryPurpose": i == 0,
        "termination": termination, "thirdPartyDisclosure": bool(recipients),
        **({"thirdPartyName": ", ".join(recipients)} if recipients else {}),
    } for i, p in enumerate(g.purposes)]
    return {
        "version": KANTARA_VERSION, "jurisdiction": g.jurisdiction,
        "consentTimestamp": g.consented_at // 1000, "collectionMethod": g.collection_method,
        "consentReceiptID": r.event_id.hex(), "language": g.language,
        "piiPrincipalId": g.subject.hex(),
        "piiControllers": [{"piiController": g.controller}],
        "policyUrl": g.notice.url or "",
        "services": [{"service": g.service or g.controller, "purposes": purposes}],
    }


def _proof_ld(r: Receipt) -> dict[str, Any]:
    s = _proof_summary(r)
    return {"cl:logOrigin": s["log"], "cl:logIndex": s["index"],
            "cl:leafHash": s["leaf_hash"], "cl:checkpointSize": s["checkpoint_size"],
            "cl:loggedAt": {"@value": s["logged_at"], "@type": "xsd:dateTime"}}


def _dt(ms: int) -> dict[str, str]:
    return {"@value": iso_time(ms), "@type": "xsd:dateTime"}


def to_iso27560(r: Receipt) -> dict[str, Any]:
    """An ISO/IEC TS 27560 consent record in DPV JSON-LD (the dpv-27560 record profile).

    The status is the one the receipt proves (given by the grant, withdrawn or revoked
    by the revocation), not the status now: `receipt refresh` answers that.
    """
    event = r.event
    base: dict[str, Any] = {
        "@context": JSONLD_CONTEXT, "@id": f"urn:consent-ledger:{r.grant_id.hex()}",
        "@type": "dpv:ConsentRecord", "dct:identifier": r.grant_id.hex(),
        "dct:conformsTo": DPV_27560_RECORD,
        "dpv:hasDataController": {"@type": "dpv:DataController",
                                  "dct:identifier": event.controller},
    }
    if isinstance(event, Revoke):
        status = "dpv:ConsentWithdrawn" if event.by == "subject" else "dpv:ConsentRevoked"
        base.update({"dct:modified": _dt(event.revoked_at),
                     "dpv:hasConsentStatus": {"@type": status},
                     "dpv:isIndicatedAtTime": _dt(event.revoked_at),
                     "cl:revocation": {"dct:identifier": r.event_id.hex(), **_proof_ld(r)}})
        return base
    process: dict[str, Any] = {
        "@type": "dpv:Process", "dpv:hasPurpose": list(event.purposes),
        "dpv:hasPersonalData": list(event.data_categories),
        "dpv:hasStorageCondition": {"@type": "dpv:StorageDuration",
                                    "dpv:hasDuration": f"P{event.retention_days}D"},
    }
    if event.service is not None:
        process["dpv:hasService"] = event.service
    if event.recipients is not None:
        process["dpv:hasRecipient"] = list(event.recipients)
    notice: dict[str, Any] = {"@type": "dpv:ConsentNotice", "dct:hasVersion":
                              event.notice.version, "dct:language": event.language,
                              "cl:sha256": event.notice.sha256.hex()}
    if event.notice.url is not None:
        notice["@id"] = event.notice.url
    base.update({
        "dct:created": _dt(event.consented_at),
        "dpv:hasDataSubject": {"@type": "dpv:DataSubject",
                               "dct:identifier": event.subject.hex()},
        "dpv:hasJurisdiction": f"loc:{event.jurisdiction}",
        "dpv:hasLegalBasis": event.legal_basis,
        "dpv:hasProcess": process,
        "dpv:hasConsentStatus": {"@type": "dpv:ConsentGiven"},
        "dpv:isIndicatedAtTime": _dt(event.consented_at),
        "dpv:hasNotice": notice,
        "dpv:hasExpiry": _dt(event.valid_until),
        "cl:collectionMethod": event.collection_method,
        "cl:withdrawal": event.withdrawal,
        "cl:grant": {"dct:identifier": r.event_id.hex(), **_proof_ld(r)},
    })
    return base
