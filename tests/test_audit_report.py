"""The audit's facts and its HTML page, from a log built entry by entry (no node)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from factories import CONTROLLER, DAY, T0, grant, revoke

from client.audit import AuditFailure, AuditResult, SourceReport
from client.audit_report import FactCollector, Facts, report_html, report_json
from ledger.commitment import subject_commitment
from ledger.events import ControllerRegister, ControllerRotate, Genesis
from ledger.signed import SignedEvent, key_id, public_bytes, sign_event
from ledger.state import LedgerState

SKEW = 60_000


class Log:
    def __init__(self) -> None:
        self.state = LedgerState()
        self.facts = FactCollector()
        self.operator = Ed25519PrivateKey.generate()
        self.key = Ed25519PrivateKey.generate()

    def add(self, signed: SignedEvent, at: int) -> int:
        entry = self.state.admit(signed, at, signature_verified=False)
        self.facts.observe(entry, self.state)  # as the audit does, after each replay
        return entry.index


@pytest.fixture
def log() -> Log:
    log = Log()
    log.add(sign_event(Genesis(origin="log.example/audit", created_at=T0, max_skew_ms=SKEW,
                               operator_key=public_bytes(log.operator)), log.operator), T0)
    log.add(sign_event(ControllerRegister(
        controller=CONTROLLER, name="<Shop & Co>", contact="dpo@shop.example",
        key=public_bytes(log.key), registered_at=T0), log.operator), T0)
    return log


def _facts(log: Log) -> tuple[Facts, dict[str, int]]:
    """A small history with one anomaly of each kind; returns the facts and indexes."""
    short = grant(valid_until=T0 + DAY)
    at: dict[str, int] = {}
    at["short"] = log.add(sign_event(short, log.key), T0)
    # Claimed 55 s after the log's clock: within the 60 s allowed, beyond 80 % of it.
    skewed = grant(subject=subject_commitment(CONTROLLER, "customer-7", bytes(32)),
                   purposes=("dpv:Marketing",), consented_at=T0 + 55_000)
    at["skewed"] = log.add(sign_event(skewed, log.key), T0 + 1_000)
    # Forty days of silence, then the short grant (expired 39 days ago) is revoked.
    later = T0 + 40 * DAY
    at["revoke"] = log.add(sign_event(revoke(by="controller", revoked_at=later - 500,
                                             grant=sign_event(short, log.key).id), log.key),
                           later)
    new = Ed25519PrivateKey.generate()
    at["rotate"] = log.add(sign_event(ControllerRotate(
        controller=CONTROLLER, old_key_id=key_id(public_bytes(log.key)),
        key=public_bytes(new), rotated_at=later), log.operator), later)
    return log.facts.facts(log.state), at


def test_counts_series_and_delays(log: Log) -> None:
    facts, _ = _facts(log)
    assert facts["entries"] == 6
    assert facts["counts_by_kind"] == {"controller-register": 1, "controller-rotate": 1,
                                       "genesis": 1, "grant": 2, "revoke": 1}
    assert (facts["grants"], facts["revocations"], facts["grants_revoked"]) == (2, 1, 1)
    assert facts["per_purpose"]["dpv:Marketing"] == {"grants": 2, "revocations": 1}
    assert facts["per_purpose"]["shop.example:newsletter"] == {"grants": 1, "revocations": 1}
    assert facts["per_controller"]["shop.example"] == {
        "grants": 2, "revocations": 1, "keys": 2, "name": "<Shop & Co>"}
    assert facts["per_day"] == {"2026-01-01": {"grants": 2, "revocations": 0},
                                "2026-02-10": {"grants": 0, "revocations": 1}}
    assert sum(v["grants"] for v in facts["per_hour"].values()) == 2
    assert facts["per_minute"] == {}  # forty days is too long to list minutes
    assert facts["withdrawn_by"] == {"controller": 1}
    delay = facts["revocation_delay_ms"]
    assert (delay["count"], delay["p50"], delay["max"]) == (1, 500, 500)
    assert delay["buckets"]["100 ms–1 s"] == 1 and sum(delay["buckets"].values()) == 1


def test_anomalies_and_key_history(log: Log) -> None:
    facts, at = _facts(log)
    anomalies = facts["anomalies"]
    (skew,) = anomalies["clock-skew"]["listed"]
    assert skew["index"] == at["skewed"] and skew["skew_ms"] == 54_000
    (expired,) = anomalies["revoked-long-expired"]["listed"]
    assert expired == {"index": at["revoke"], "grant_index": at["short"], "expired_days": 39}
    (gap,) = anomalies["gap"]["listed"]
    assert gap["index"] == at["revoke"] and gap["ms"] == 40 * DAY - 1_000
    assert facts["largest_gaps"][0] == {"ms": 40 * DAY - 1_000, "before_entry": at["revoke"]}
    assert [(k["index"], k["event"]) for k in facts["key_history"]] == [
        (0, "genesis"), (1, "register"), (at["rotate"], "rotate")]
    assert facts["signed_by_key"][key_id(public_bytes(log.key)).hex()] == 3
    assert facts["max_clock_skew_ms"] == {"seen": 54_000, "allowed": SKEW}


def _result(facts: Facts, failure: AuditFailure | None) -> AuditResult:
    return AuditResult(
        origin="log.example/audit", checkpoint_note="log.example/audit\n6\nAAAA\n\n— sig\n",
        size=6, root="00" * 32, failure=failure, entries_verified=6, signatures_checked=5,
        hash_tiles_checked=1, requests=3, bytes_fetched=100, tiles_reused=0, seconds=0.1,
        verify_seconds=0.05, previous_audit_size=None,
        sources=[SourceReport("http://127.0.0.1:1", "log", 6, "00" * 32, "note", "audited",
                              3)], facts=facts)


def _svgs(page: str) -> list[ET.Element]:
    return [ET.fromstring(svg) for svg in re.findall(r"<svg.*?</svg>", page, re.S)]


def test_the_page_is_self_contained_well_formed_and_escaped(log: Log) -> None:
    facts, _ = _facts(log)
    page = report_html(report_json(_result(facts, None), audited_at=T0))
    assert "VERIFIED FROM GENESIS" in page
    assert "<script" not in page and not re.search(r"\b(src|href)=", page)
    assert "<Shop & Co>" not in page and "&lt;Shop &amp; Co&gt;" in page
    charts = _svgs(page)  # every chart parses as XML: no attribute left open
    assert len(charts) == 4  # timeline, purposes, controllers, revocation delay
    assert all(c.findall(".//{http://www.w3.org/2000/svg}rect") or c.findall(".//rect")
               for c in charts)
    assert "revoked-long-expired" in page and "clock-skew" in page


def test_a_failure_is_shown_with_its_entry_reason_and_evidence(log: Log) -> None:
    facts, _ = _facts(log)
    failure = AuditFailure("bad-signature", "the signature by key ab does not verify",
                           index=4, evidence={"checkpoint": "log.example/audit\n6\n<root>\n"})
    report = report_json(_result(facts, failure), audited_at=T0)
    assert report["verdict"] == "failed"
    assert report["failure"]["entry"] == 4 and report["failure"]["code"] == "bad-signature"
    page = report_html(report)
    assert "FAILED" in page and "at entry 4" in page and "does not verify" in page
    assert "&lt;root&gt;" in page


def test_an_empty_history_renders_without_charts_that_divide_by_zero() -> None:
    state = LedgerState()
    facts = FactCollector().facts(state)
    page = report_html(report_json(_result(facts, None), audited_at=T0))
    assert "nothing to show" in page and "No revocations" in page
