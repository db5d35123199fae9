"""The demo workload, the key files and the demo command; at the end, against a real node.

The workload's events are fed to a fresh LedgerState exactly as a node would admit
them, signatures included, so any event the node would refuse fails here first.
"""

from __future__ import annotations

import asyncio
import os
import random
import stat
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
)
from nodeproc import NodeProcess

from client.demo import DEMO_CONTROLLER, Batch, DemoReport, Workload, demo_main, run_demo
from client.errors import KeyFileError, ProblemError
from client.keys import generate_key_file, load_private_key
from client.log_client import Accepted, LogClient, Rejected, SubmitResult, VerifiedCheckpoint
from client.verify_log import verify_log
from ledger.checkpoint import Checkpoint
from ledger.errors import RejectedError
from ledger.events import Genesis, Grant, Revoke
from ledger.signed import sign_event
from ledger.state import ConsentStatus, LedgerState

T = 1_767_225_600_000
_CP = VerifiedCheckpoint(Checkpoint("demo.test/log", 1, bytes(32)), b"")


def _ledger(operator: Ed25519PrivateKey) -> LedgerState:
    state = LedgerState()
    genesis = Genesis(origin="demo.test/log", operator_key=operator.public_key().public_bytes_raw(),
                      created_at=T, max_skew_ms=600_000)
    state.admit(sign_event(genesis, operator), T, signature_verified=False)
    return state


def _admit(state: LedgerState, batch: Batch) -> list[SubmitResult]:
    """What a node would answer, decided by the state machine itself."""
    results: list[SubmitResult] = []
    for signed in batch.signed:
        try:
            entry = state.admit(signed, T, signature_verified=False)
        except RejectedError as exc:
            results.append(Rejected(ProblemError(exc.code, "", 409, str(exc))))
            continue
        results.append(Accepted(entry.index, signed.id, entry.leaf_hash, False, (), _CP))
    return results


@pytest.fixture
def run() -> tuple[LedgerState, Workload, list[Batch], list[list[SubmitResult]]]:
    operator, controller = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    state = _ledger(operator)
    workload = Workload(DEMO_CONTROLLER, controller, rng=random.Random(7), clock=lambda: T)
    state.admit(workload.register(operator), T, signature_verified=False)
    batches, answers = [], []
    for n in [1, 50, 100, 100, 37, 100, 100, 12]:
        batch = workload.next_batch(n)
        answer = _admit(state, batch)
        workload.record(batch, answer)
        batches.append(batch)
        answers.append(answer)
    return state, workload, batches, answers


def test_every_event_is_admitted_signatures_checked(run) -> None:  # type: ignore[no-untyped-def]
    state, _, batches, answers = run
    rejected = [r.problem for a in answers for r in a if isinstance(r, Rejected)]
    assert rejected == []
    assert state.size == 2 + sum(len(b.signed) for b in batches)


def test_the_mix_is_about_one_fifth_revocations_of_both_kinds(run) -> None:  # type: ignore[no-untyped-def]
    _, _, batches, _ = run
    kinds = Counter(k for b in batches for k in b.kinds)
    total = sum(kinds.values())
    revocations = kinds["revoke-token"] + kinds["revoke-controller"]
    assert abs(revocations / total - 0.2) < 0.03
    assert kinds["revoke-token"] > 0 and kinds["revoke-controller"] > 0


def test_revocations_withdraw_and_revoke_in_the_state(run) -> None:  # type: ignore[no-untyped-def]
    state, _, batches, _ = run
    statuses = Counter(s.status(T) for s in state.statuses.values())
    assert statuses[ConsentStatus.WITHDRAWN] > 0 and statuses[ConsentStatus.REVOKED] > 0
    revoked = [g for g in state.grants.values() if g.revoked_at is not None]
    assert len(revoked) == sum(k != "grant" for b in batches for k in b.kinds)


def test_one_signature_per_request(run) -> None:  # type: ignore[no-untyped-def]
    _, _, batches, _ = run
    for batch in batches:
        sigs = {s.sig for s in batch.signed if s.token is None}
        assert len(sigs) == 1
        for signed, kind in zip(batch.signed, batch.kinds, strict=True):
            assert (signed.token is not None) == (kind == "revoke-token")
            assert (signed.batch is not None) == (kind != "revoke-token")


def test_grants_are_varied_and_current(run) -> None:  # type: ignore[no-untyped-def]
    _, _, batches, _ = run
    grants = [s.body for b in batches for s in b.signed if isinstance(s.body, Grant)]
    purposes = Counter(p for g in grants for p in g.purposes)
    categories = Counter(c for g in grants for c in g.data_categories)
    assert {"dpv:ServiceProvision", "dpv:Marketing", "dpv:Personalisation",
            "dpv:ResearchAndDevelopment"} <= set(purposes)
    assert {"pd:EmailAddress", "pd:Name", "pd:Location", "pd:PurchaseHistory"} <= set(categories)
    assert any(p.startswith(f"{DEMO_CONTROLLER}:") for p in purposes)
    assert all(g.consented_at == T for g in grants)
    subjects = Counter(g.subject for g in grants)
    assert len(subjects) > len(grants) / 2 and max(subjects.values()) > 1  # many, some return
    assert len({g.notice.sha256 for g in grants}) == 1


def test_revocations_name_only_recorded_grants() -> None:
    workload = Workload(DEMO_CONTROLLER, Ed25519PrivateKey.generate(), clock=lambda: T)
    first = workload.next_batch(100)
    assert set(first.kinds) == {"grant"}  # nothing recorded yet: nothing to revoke
    rejected = [Rejected(ProblemError("x", "", 409, "")) for _ in first.signed]
    workload.record(first, rejected)
    assert set(workload.next_batch(100).kinds) == {"grant"}


def test_each_grant_is_revoked_at_most_once() -> None:
    workload = Workload(DEMO_CONTROLLER, Ed25519PrivateKey.generate(), clock=lambda: T,
                        rng=random.Random(3), revoke_share=0.9)
    first = workload.next_batch(10)
    workload.record(first, [Accepted(i, s.id, bytes(32), False, (), _CP)
                            for i, s in enumerate(first.signed)])
    second = workload.next_batch(100)
    named = [s.body.grant for s in second.signed if isinstance(s.body, Revoke)]
    assert len(named) == 10 and len(set(named)) == 10


def test_batch_size_bounds() -> None:
    workload = Workload(DEMO_CONTROLLER, Ed25519PrivateKey.generate())
    for n in (0, 1001):
        with pytest.raises(ValueError):
            workload.next_batch(n)


# ---------------------------------------------------------------- report


def test_report_format_is_a_few_lines() -> None:
    report = DemoReport(log_url="http://127.0.0.1:8080", origin="demo.test/log",
                        log_key_source="fetched from GET /v1/keys (trust on first use)",
                        controller=DEMO_CONTROLLER, controller_key_id="00" * 8,
                        registration="registered at entry 1", submitted=1000, batches=10,
                        concurrency=4, grants=800, revoked_by_token=120,
                        revoked_by_controller=80, seconds=0.5,
                        latencies_ms=[float(i) for i in range(1, 101)], inclusion_proven=1000,
                        tree_size=1002, checkpoint_verified=True, consistent=True,
                        sample_verified=32, sample_total=32)
    report.rejected["clock-skew"] = 2
    text = report.format()
    assert 4 <= len(text.splitlines()) <= 8
    for needle in ("2,000 events/s", "p50 50 ms", "p99 99 ms", "trust on first use",
                   "800 grants", "120 withdrawn by token", "80 revoked", "2 clock-skew",
                   "tree size 1002", "32/32"):
        assert needle in text, needle


# ---------------------------------------------------------------- key files


def test_generated_key_file_is_private_and_loads(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    key = generate_key_file(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert load_private_key(path).public_key() == key.public_key()
    assert [p.name for p in tmp_path.iterdir()] == ["k.pem"]  # no temporary left behind


def test_generate_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    path.write_bytes(b"precious")
    with pytest.raises(KeyFileError):
        generate_key_file(path)
    assert path.read_bytes() == b"precious"


def _pem(key: object, encryption: object = None) -> bytes:
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8,  # type: ignore[attr-defined]
                             encryption or NoEncryption())


@pytest.mark.parametrize("content, words", [
    (None, "cannot read"),
    (b"not a key", "not a PEM private key"),
    (_pem(ec.generate_private_key(ec.SECP256R1())), "not an Ed25519 key"),
    (_pem(Ed25519PrivateKey.generate(), BestAvailableEncryption(b"pw")), "encrypted"),
])
def test_load_errors_are_one_readable_line(tmp_path: Path, content: bytes | None,
                                           words: str) -> None:
    path = tmp_path / "k.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(KeyFileError) as info:
        load_private_key(path)
    message = str(info.value)
    assert words in message and str(path) in message and "\n" not in message


# ---------------------------------------------------------------- the command


def test_demo_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert demo_main(["--log", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--operator-key" in err


def test_demo_missing_key_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = demo_main(["--log", "http://127.0.0.1:9", "--operator-key",
                      str(tmp_path / "nope.key"), "--events", "10"])
    assert code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.key" in err and "Traceback" not in err


def test_demo_unreachable_node_is_one_line(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "operator.key"
    generate_key_file(key)
    code = demo_main(["--log", "http://127.0.0.1:9", "--operator-key", str(key),
                      "--events", "10"])
    assert code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("consent-ledger demo: error:")


def test_demo_refuses_bad_numbers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "operator.key"
    generate_key_file(key)
    code = demo_main(["--log", "http://127.0.0.1:9", "--operator-key", str(key),
                      "--events", "10", "--batch", "5000"])
    assert code == 1
    assert "batch" in capsys.readouterr().err


def test_demo_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert demo_main(["--help"]) == 0
    assert "--log-key" in capsys.readouterr().out


# ---------------------------------------------------------------- against a real node


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    proc = NodeProcess(tmp_path_factory.mktemp("demo") / "data", "--origin", "demo.test/log")
    proc.start()
    yield proc
    assert proc.stop() == 0, proc.stderr()


async def test_demo_against_a_node_then_the_whole_log_verifies(node: NodeProcess) -> None:
    operator_key = node.data_dir / "operator.key"
    first = await run_demo(node.url, operator_key, 600, concurrency=4, batch=50, seed=1)
    assert first.rejected == Counter()
    assert first.submitted == 600 == first.inclusion_proven
    assert first.grants + first.revoked_by_token + first.revoked_by_controller == 600
    assert first.revoked_by_token > 0 and first.revoked_by_controller > 0
    assert first.registration.startswith("registered at entry")
    assert first.checkpoint_verified and first.consistent
    assert first.sample_verified == first.sample_total == 32
    assert "trust on first use" in first.format()

    again = await run_demo(node.url, operator_key, 100, batch=100, seed=2)
    assert again.registration.startswith("already registered")  # the key file was kept
    # 100 events, plus the status root that closes each committed batch.
    assert again.first_size == first.tree_size
    assert first.tree_size + 100 < again.tree_size <= first.tree_size + 200

    async with aiohttp.ClientSession() as session:
        vkey = await LogClient.fetch_log_key(node.url, session)
        log = await verify_log(session, node.url, vkey)  # every entry replayed and checked
    assert log.checkpoint.size == again.tree_size


def test_demo_command_against_a_node(node: NodeProcess,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    vkey = asyncio.run(_log_key(node.url))
    code = demo_main(["--log", node.url, "--operator-key", str(node.data_dir / "operator.key"),
                      "--events", "120", "--batch", "40", "--log-key", vkey])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "120 events" in out.out and "log key given" in out.out and out.err == ""


async def _log_key(url: str) -> str:
    async with aiohttp.ClientSession() as session:
        return await LogClient.fetch_log_key(url, session)
