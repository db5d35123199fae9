"""tlog-policy: parsing and formatting, every rejection, and the quorum over real cosignatures."""

from __future__ import annotations

import base64
import itertools
from collections.abc import Sequence

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client.errors import ClientError, LogVerificationError
from client.log_client import VerifiedCheckpoint
from client.policy import (
    CheckpointRejected,
    CheckpointStale,
    Group,
    LogKey,
    PolicyError,
    QuorumNotMet,
    TrustedCheckpoint,
    TrustPolicy,
    Witness,
    format_policy,
    parse_policy,
)
from ledger.checkpoint import Checkpoint, sign_checkpoint
from ledger.cosignature import CosignatureSigner, cosigner_verifier_key
from ledger.merkle import leaf_hash
from ledger.note import (
    ALG_ED25519,
    Ed25519Signer,
    Signature,
    format_note,
    format_verifier_key,
    raw_public_key,
    split_note,
)
from ledger.tree import MerkleTree

ORIGIN = "example.com/consent-log"
NOW = 1_800_000_000


def _key(seed: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)


def _log(seed: int, name: str = ORIGIN) -> tuple[Ed25519Signer, str]:
    key = _key(seed)
    vkey = format_verifier_key(name, ALG_ED25519, raw_public_key(key.public_key()))
    return Ed25519Signer.from_private_key(name, key), vkey


def _witness(seed: int, name: str) -> tuple[CosignatureSigner, str]:
    key = _key(seed)
    return CosignatureSigner.from_private_key(name, key), cosigner_verifier_key(
        name, key.public_key())


LOG, LOG_VKEY = _log(1)
W = {name: _witness(10 + i, f"witness.example/{name}")
     for i, name in enumerate(["A1", "A2", "A3", "B1", "B2", "C1"])}

EXAMPLE = f"""# two organisations, as in the spec's example
log {LOG_VKEY} https://log.example/

witness A1 {W['A1'][1]}
witness A2 {W['A2'][1]}
witness A3 {W['A3'][1]} https://a3.example/witness
group A 2 A1 A2 A3

\twitness B1 {W['B1'][1]}\t
witness B2 {W['B2'][1]}
group B any B1 B2

group AB all A B
quorum AB
"""


def _checkpoint(size: int = 9) -> Checkpoint:
    tree = MerkleTree.from_leaf_hashes(leaf_hash(b"entry %d" % i) for i in range(size))
    return Checkpoint(ORIGIN, tree.size, tree.root())


def _note(cosigners: dict[str, int], *, log: Ed25519Signer | None = LOG,
          checkpoint: Checkpoint | None = None) -> bytes:
    """A checkpoint signed by the log and cosigned by the named witnesses at those times."""
    signers: list[object] = [log] if log else []
    signers += [W[name][0].at(t) for name, t in cosigners.items()]
    return sign_checkpoint(checkpoint or _checkpoint(), signers)  # type: ignore[arg-type]


# ---- Parsing and formatting ------------------------------------------------------------


def test_parses_the_spec_example() -> None:
    policy = parse_policy(EXAMPLE)
    assert policy.logs == (LogKey(LOG_VKEY, "https://log.example/"),)
    assert [w.name for w in policy.witnesses] == ["A1", "A2", "A3", "B1", "B2"]
    assert policy.witnesses[2].url == "https://a3.example/witness"
    assert policy.groups == (Group("A", 2, ("A1", "A2", "A3")), Group("B", 1, ("B1", "B2")),
                             Group("AB", 2, ("A", "B")))
    assert policy.quorum == "AB"
    assert [v.name for v in policy.log_verifiers] == [ORIGIN]
    assert set(policy.witness_verifiers) == {"A1", "A2", "A3", "B1", "B2"}


@pytest.mark.parametrize("text", [
    EXAMPLE,
    EXAMPLE.encode(),
    EXAMPLE.rstrip("\n"),  # no newline after the last line, as Go's parsers allow
    f"log {LOG_VKEY}\nquorum none\n",
    "quorum none\n",  # the spec allows an empty set of logs
    f"witness A1 {W['A1'][1]}\nquorum A1\n",
    f"witness A1 {W['A1'][1]}\nquorum A1\nwitness A2 {W['A2'][1]}\n",  # quorum need not be last
])
def test_format_round_trips(text: str | bytes) -> None:
    policy = parse_policy(text)
    formatted = format_policy(policy)
    assert parse_policy(formatted) == policy
    assert format_policy(parse_policy(formatted)) == formatted


def test_format_spells_thresholds_readably() -> None:
    text = format_policy(parse_policy(EXAMPLE))
    assert "group A 2 A1 A2 A3\n" in text
    assert "group B any B1 B2\n" in text
    assert "group AB all A B\n" in text
    assert text.endswith("quorum AB\n")


def test_none_quorum_is_none() -> None:
    assert parse_policy(f"log {LOG_VKEY}\nquorum none\n").quorum is None


def test_built_policies_check_themselves() -> None:
    a1 = Witness("A1", W["A1"][1])
    assert TrustPolicy((LogKey(LOG_VKEY),), (a1,), (Group("G", 1, ("A1",)),), "G").quorum == "G"
    with pytest.raises(PolicyError, match="threshold 2"):
        TrustPolicy((), (a1,), (Group("G", 2, ("A1",)),), "G")
    with pytest.raises(PolicyError, match="no earlier line"):
        TrustPolicy((), (a1,), (), "missing")


BAD_KEY = "example.com/log+00000000+AAAA"
W1, W2 = W["A1"][1], W["A2"][1]

# (policy text, line at fault or None, words the message must hold)
REJECTED = [
    (f"log {LOG_VKEY}\nmonitor m {W1}\nquorum none\n", 2, "unknown keyword 'monitor'"),
    (f"witness x {W1}\nwitness x {W2}\nquorum x\n", 2, "duplicate name 'x'"),
    (f"witness x {W1}\ngroup x any x\nquorum x\n", 2, "duplicate name 'x'"),
    (f"witness x {W1}\ngroup g any x y\nquorum g\n", 2, "'y', which no earlier line"),
    # Forward references are refused, which is what rules out cycles.
    (f"group g any x\nwitness x {W1}\nquorum g\n", 1, "'x', which no earlier line"),
    (f"witness x {W1}\ngroup g any g\nquorum g\n", 2, "'g', which no earlier line"),
    (f"witness x {W1}\ngroup g 0 x\nquorum g\n", 2, "threshold '0'"),
    (f"witness x {W1}\ngroup g 2 x\nquorum g\n", 2, "threshold 2 is not between 1 and"),
    (f"witness x {W1}\ngroup g 01 x\nquorum g\n", 2, "threshold '01'"),
    (f"witness x {W1}\ngroup g +1 x\nquorum g\n", 2, "threshold '+1'"),
    (f"witness x {W1}\ngroup g some x\nquorum g\n", 2, "threshold 'some'"),
    (f"witness x {W1}\ngroup g any\nquorum g\n", 2, "expected `group"),
    (f"witness x {W1}\nwitness y {W2}\ngroup g any x\ngroup h any x y\nquorum h\n", 4,
     "'x' is already a member"),
    (f"witness x {W1}\ngroup g any x x\nquorum g\n", 2, "'x' is already a member"),
    (f"witness x {W1}\ngroup g any x none\nquorum g\n", 2, "'none' cannot be a group member"),
    (f"witness none {W1}\nquorum none\n", 1, "'none' is predefined"),
    (f"log {LOG_VKEY}\n", None, "no quorum line"),
    ("", None, "no quorum line"),
    (f"witness x {W1}\nquorum x\nquorum none\n", 3, "second quorum line"),
    (f"witness x {W1}\nquorum y\n", 2, "quorum names 'y'"),
    ("quorum\n", 1, "expected `quorum"),
    ("quorum a b\n", 1, "expected `quorum"),
    (f"log {BAD_KEY}\nquorum none\n", 1, "bad log key"),
    ("log not-a-key\nquorum none\n", 1, "bad log key"),
    (f"log {W1}\nquorum none\n", 1, "bad log key"),  # a cosigner key where a log key goes
    (f"witness x {LOG_VKEY}\nquorum x\n", 1, "bad witness key"),  # and the other way round
    (f"log {LOG_VKEY}\nlog {LOG_VKEY} https://mirror.example/\nquorum none\n", 2,
     "duplicate log"),
    (f"log {LOG_VKEY}\nlog {_log(1, 'other.example/log')[1]}\nquorum none\n", 2,
     "duplicate log"),  # same public key under another name
    (f"witness x {W1}\nwitness y {cosigner_verifier_key('other', _key(10).public_key())}\n"
     "quorum x\n", 2, "duplicate witness"),
    (f"witness x {W1} https://x.example/ extra\nquorum x\n", 1, "expected `witness"),
    (f"witness x {W1} # the first witness\nquorum x\n", 1, "comments must be on a line"),
    (f"log {LOG_VKEY}\r\nquorum none\r\n", 1, "carriage return"),
    (f"log {LOG_VKEY}\nquorum\x00none\n", 2, "control character"),
    (f"log {LOG_VKEY}\nquorum\vnone\n", 2, "control character"),
    (b"quorum none\n# caf\xe9\n", 2, "not valid UTF-8"),
]


@pytest.mark.parametrize(("text", "line", "words"), REJECTED)
def test_rejects_with_the_line_number(text: str | bytes, line: int | None, words: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(text)
    assert info.value.line == line
    assert words in str(info.value)
    prefix = f"policy line {line}: " if line else "policy: "
    assert str(info.value).startswith(prefix)
    assert isinstance(info.value, ClientError)


def test_caps_the_number_of_witnesses() -> None:
    lines = [f"witness w{i} {_witness(100 + i, f'w{i}')[1]}" for i in range(65)]
    with pytest.raises(PolicyError, match="more than 64 witnesses") as info:
        parse_policy("\n".join([*lines, "quorum w0", ""]))
    assert info.value.line == 65


# ---- Checking checkpoints --------------------------------------------------------------


@pytest.fixture(scope="module")
def policy() -> TrustPolicy:
    return parse_policy(EXAMPLE)


def _expected(present: Sequence[str]) -> bool:
    """The example's quorum, written out: 2 of the A witnesses and 1 of the B ones."""
    return sum(w.startswith("A") for w in present) >= 2 and any(
        w.startswith("B") for w in present)


def test_nested_quorum_over_every_subset(policy: TrustPolicy) -> None:
    names = ["A1", "A2", "A3", "B1", "B2"]
    for n in range(len(names) + 1):
        for present in itertools.combinations(names, n):
            note = _note({w: NOW for w in present})
            if _expected(present):
                verified = policy.check_checkpoint(note, now=NOW, max_age=None)
                assert dict(verified.cosigned) == {w: NOW for w in present}
                assert verified.quorum_time == NOW
            else:
                with pytest.raises(QuorumNotMet) as info:
                    policy.check_checkpoint(note, now=NOW, max_age=None)
                assert info.value.witnesses == frozenset(present)
                assert info.value.checkpoint == note


def test_verified_checkpoint_carries_the_note(policy: TrustPolicy) -> None:
    note = _note({"A1": NOW, "A3": NOW, "B2": NOW})
    verified = policy.check_checkpoint(note, now=NOW, max_age=60)
    assert isinstance(verified, TrustedCheckpoint)
    assert isinstance(verified, VerifiedCheckpoint)
    assert verified.note == note
    assert verified.checkpoint == _checkpoint()
    assert verified.size == 9


@pytest.mark.parametrize(("k", "present", "ok"), [
    ("any", ["A1"], True), ("any", [], False),
    ("all", ["A1", "A2", "A3"], True), ("all", ["A1", "A3"], False),
    ("2", ["A2", "A3"], True), ("2", ["A3"], False),
])
def test_thresholds(k: str, present: list[str], ok: bool) -> None:
    policy = parse_policy(f"log {LOG_VKEY}\n" + "".join(
        f"witness {n} {W[n][1]}\n" for n in ("A1", "A2", "A3")) + f"group g {k} A1 A2 A3\n"
        "quorum g\n")
    note = _note({w: NOW for w in present})
    if ok:
        policy.check_checkpoint(note, now=NOW, max_age=None)
    else:
        with pytest.raises(QuorumNotMet):
            policy.check_checkpoint(note, now=NOW, max_age=None)


def test_three_levels_of_groups() -> None:
    text = EXAMPLE.replace("quorum AB\n", f"witness C1 {W['C1'][1]}\n"
                           "group top 1 AB C1\nquorum top\n")
    policy = parse_policy(text)
    policy.check_checkpoint(_note({"C1": NOW}), now=NOW, max_age=None)
    policy.check_checkpoint(_note({"A1": NOW, "A2": NOW, "B1": NOW}), now=NOW, max_age=None)
    with pytest.raises(QuorumNotMet):
        policy.check_checkpoint(_note({"A1": NOW, "B1": NOW}), now=NOW, max_age=None)


def test_quorum_of_one_witness() -> None:
    policy = parse_policy(f"log {LOG_VKEY}\nwitness A1 {W1}\nquorum A1\n")
    policy.check_checkpoint(_note({"A1": NOW}), now=NOW, max_age=None)
    with pytest.raises(QuorumNotMet):
        policy.check_checkpoint(_note({"A2": NOW}), now=NOW, max_age=None)


def test_quorum_none_needs_the_log_signature_only() -> None:
    policy = parse_policy(f"log {LOG_VKEY}\nquorum none\n")
    assert not policy.can_judge_freshness
    verified = policy.check_checkpoint(_note({}), now=NOW, max_age=None)
    assert verified.quorum_time is None
    with pytest.raises(CheckpointStale, match="freshness cannot be judged") as info:
        policy.check_checkpoint(_note({"A1": NOW}), now=NOW, max_age=3600)
    assert info.value.quorum_time is None


def test_stale_cosignatures_are_refused(policy: TrustPolicy) -> None:
    note = _note({"A1": NOW - 10, "A2": NOW - 20, "B1": NOW - 1000})
    with pytest.raises(CheckpointStale, match="1000 s ago") as info:
        policy.check_checkpoint(note, now=NOW, max_age=999)
    assert info.value.quorum_time == NOW - 1000
    assert info.value.checkpoint == note
    verified = policy.check_checkpoint(note, now=NOW, max_age=1000)
    assert verified.quorum_time == NOW - 1000
    # Without an age limit, old cosignatures still count.
    assert policy.check_checkpoint(note, now=NOW, max_age=None).quorum_time == NOW - 1000


def test_freshness_uses_the_freshest_quorum(policy: TrustPolicy) -> None:
    # A1 is stale, but A2, A3 and B2 alone meet the quorum recently.
    note = _note({"A1": NOW - 5000, "A2": NOW - 30, "A3": NOW - 40, "B1": NOW - 5000,
                  "B2": NOW - 50})
    assert policy.check_checkpoint(note, now=NOW, max_age=60).quorum_time == NOW - 50
    with pytest.raises(CheckpointStale):
        policy.check_checkpoint(note, now=NOW, max_age=49)


def test_a_negative_age_is_a_caller_bug(policy: TrustPolicy) -> None:
    with pytest.raises(ValueError):
        policy.check_checkpoint(_note({}), now=NOW, max_age=-1)


def _replace_signature(note: bytes, name: str, sig: bytes) -> bytes:
    text, sigs = split_note(note)
    return format_note(text, [Signature(s.name, s.key_id, sig) if s.name == name else s
                              for s in sigs])


def test_forged_cosignature_is_rejected(policy: TrustPolicy) -> None:
    note = _note({"A1": NOW, "A2": NOW, "B1": NOW})
    _, sigs = split_note(note)
    a1 = next(s for s in sigs if s.name == W["A1"][0].name)
    forged = _replace_signature(note, a1.name, a1.signature[:8] + bytes(64))
    with pytest.raises(CheckpointRejected, match="invalid signature") as info:
        policy.check_checkpoint(forged, now=NOW, max_age=None)
    assert info.value.checkpoint == forged
    assert isinstance(info.value, LogVerificationError)


def test_a_changed_timestamp_breaks_the_cosignature(policy: TrustPolicy) -> None:
    note = _note({"A1": NOW - 5000, "A2": NOW, "B1": NOW})
    _, sigs = split_note(note)
    a1 = next(s for s in sigs if s.name == W["A1"][0].name)
    younger = NOW.to_bytes(8, "big") + a1.signature[8:]
    with pytest.raises(CheckpointRejected):
        policy.check_checkpoint(_replace_signature(note, a1.name, younger), now=NOW,
                                max_age=None)


def test_cosignature_of_another_checkpoint_is_rejected(policy: TrustPolicy) -> None:
    other = _note({"A1": NOW}, checkpoint=_checkpoint(8))
    _, sigs = split_note(other)
    a1 = next(s for s in sigs if s.name == W["A1"][0].name)
    note = _replace_signature(_note({"A1": NOW, "A2": NOW, "B1": NOW}), a1.name, a1.signature)
    with pytest.raises(CheckpointRejected):
        policy.check_checkpoint(note, now=NOW, max_age=None)


def test_unknown_cosigners_do_not_count(policy: TrustPolicy) -> None:
    stranger, _ = _witness(99, "witness.example/A1")  # A1's name, another key
    note = sign_checkpoint(_checkpoint(), [LOG, stranger.at(NOW), W["A2"][0].at(NOW),
                                           W["B1"][0].at(NOW)])
    with pytest.raises(QuorumNotMet) as info:
        policy.check_checkpoint(note, now=NOW, max_age=None)
    assert info.value.witnesses == {"A2", "B1"}


def test_cosignatures_without_the_log_signature_are_rejected(policy: TrustPolicy) -> None:
    note = _note({"A1": NOW, "A2": NOW, "B1": NOW}, log=None)
    with pytest.raises(CheckpointRejected, match="not signed by a log key"):
        policy.check_checkpoint(note, now=NOW, max_age=None)


def test_a_tampered_checkpoint_is_rejected(policy: TrustPolicy) -> None:
    note = _note({"A1": NOW, "A2": NOW, "B1": NOW})
    text, sigs = split_note(note)
    lines = text.split("\n")
    lines[1] = "10"
    with pytest.raises(CheckpointRejected, match="invalid signature"):
        policy.check_checkpoint(format_note("\n".join(lines), sigs), now=NOW, max_age=None)


def test_unknown_origin_and_garbage_are_rejected(policy: TrustPolicy) -> None:
    other_log, _ = _log(2, "other.example/log")
    note = sign_checkpoint(Checkpoint("other.example/log", 1, bytes(32)), other_log)
    with pytest.raises(CheckpointRejected, match="no log in the policy"):
        policy.check_checkpoint(note, now=NOW, max_age=None)
    for garbage in (b"", b"hello\n", base64.b64encode(bytes(100))):
        with pytest.raises(CheckpointRejected, match="not a signed note"):
            policy.check_checkpoint(garbage, now=NOW, max_age=None)


def test_a_rotated_log_key_of_the_same_origin_is_accepted() -> None:
    new_log, new_vkey = _log(3)
    policy = parse_policy(f"log {LOG_VKEY}\nlog {new_vkey}\nquorum none\n")
    note = sign_checkpoint(_checkpoint(), new_log)
    assert policy.check_checkpoint(note, now=NOW, max_age=None).size == 9
    stranger, _ = _log(4)
    with pytest.raises(CheckpointRejected, match="not signed by a log key"):
        policy.check_checkpoint(sign_checkpoint(_checkpoint(), stranger), now=NOW,
                                max_age=None)
