"""Targeted tests of the Raft core: each drives RaftNode objects by hand, persisting
every Ready the way the I/O layer does, and checks one rule of the protocol."""

from __future__ import annotations

import random

import pytest

from ledger.raft import (
    AppendEntries,
    AppendReply,
    Entry,
    EntryKind,
    HardState,
    InstallSnapshot,
    Membership,
    MembershipChangeError,
    Message,
    NotLeaderError,
    RaftLog,
    RaftNode,
    Ready,
    RequestVote,
    Snapshot,
    TimeoutNow,
    VoteReply,
)

ABC = Membership.of("a", "b", "c")


def node(node_id: str = "a", *, membership: Membership = ABC, term: int = 0,
         voted_for: str | None = None, log: list[tuple[int, int]] | None = None) -> RaftNode:
    return RaftNode(node_id, membership=membership, hard_state=HardState(term, voted_for),
                    log=RaftLog.restore(log or [], []), rng=random.Random(1))


def flush(n: RaftNode, *, refused_from: int | None = None) -> list[Ready]:
    """Persist and advance every Ready (as an I/O layer would); return them."""
    readies = []
    while n.has_ready():
        r = n.ready()
        n.advance(r, refused_from=refused_from if r.entries else None)
        readies.append(r)
    return readies


def sent(readies: list[Ready]) -> list[Message]:
    return [m for r in readies for m in r.messages]


def elapse(n: RaftNode, ticks: int) -> None:
    for _ in range(ticks):
        n.tick()


def make_leader(n: RaftNode) -> None:
    """Drive n through pre-vote and vote to leadership with the other voters' help."""
    elapse(n, 25)
    for m in sent(flush(n)):
        assert isinstance(m, RequestVote) and m.pre_vote
        n.step(VoteReply(m.term, m.dst, m.src, granted=True, pre_vote=True))
    for m in sent(flush(n)):
        if isinstance(m, RequestVote) and not m.pre_vote:
            n.step(VoteReply(m.term, m.dst, m.src, granted=True, pre_vote=False))
    assert n.role == "leader"


def append(term: int, src: str, prev: tuple[int, int], entries: list[Entry],
           commit: int = 0, dst: str = "a") -> AppendEntries:
    return AppendEntries(term, src, dst, prev[0], prev[1], tuple(entries), commit)


def noop(index: int, term: int) -> Entry:
    return Entry(index, term, EntryKind.NOOP, b"")


def batch(index: int, term: int, data: bytes = b"x") -> Entry:
    return Entry(index, term, EntryKind.BATCH, data)


# ---------------------------------------------------------------- elections


def test_a_follower_pre_votes_then_campaigns_and_leads_with_a_noop() -> None:
    n = node()
    make_leader(n)
    assert n.term == 1 and n.leader_id == "a" and n.last_index == 1
    r = flush(n)
    appends = [m for m in sent(r) if isinstance(m, AppendEntries)]
    assert {m.dst for m in appends} == {"b", "c"}
    assert appends[0].entries[0].kind is EntryKind.NOOP


def test_pre_vote_does_not_move_terms_and_fails_without_a_majority() -> None:
    n = node()
    elapse(n, 25)
    assert n.role == "pre-candidate" and n.term == 0
    votes = [m for m in sent(flush(n)) if isinstance(m, RequestVote)]
    assert votes and all(v.pre_vote and v.term == 1 for v in votes)
    n.step(VoteReply(0, "b", "a", granted=False, pre_vote=True))
    assert n.role == "pre-candidate" and n.term == 0


def test_a_follower_hearing_its_leader_refuses_pre_votes() -> None:
    n = node("b", term=1)
    n.step(append(1, "a", (0, 0), [noop(1, 1)], dst="b"))
    n.step(RequestVote(2, "c", "b", 5, 1, pre_vote=True))
    reply = [m for m in sent(flush(n)) if isinstance(m, VoteReply)]
    assert reply == [VoteReply(1, "b", "c", granted=False, pre_vote=True)]
    assert n.term == 1 and n.leader_id == "a"


def test_votes_go_only_to_up_to_date_candidates_and_once_per_term() -> None:
    n = node("b", log=[(1, 1), (2, 2)])
    n.step(RequestVote(3, "a", "b", last_index=5, last_term=1, pre_vote=False))  # older log
    n.step(RequestVote(3, "c", "b", last_index=2, last_term=2, pre_vote=False))
    n.step(RequestVote(3, "a", "b", last_index=9, last_term=3, pre_vote=False))  # already voted
    replies = [m for m in sent(flush(n)) if isinstance(m, VoteReply)]
    assert {(m.dst, m.granted) for m in replies} == {("a", False), ("c", True)}
    assert n.term == 3


def test_stale_terms_are_answered_with_the_current_term() -> None:
    n = node("b", term=5)
    n.step(append(3, "a", (0, 0), [noop(1, 3)], dst="b"))
    n.step(RequestVote(4, "c", "b", 9, 4, pre_vote=False))
    replies = sent(flush(n))
    assert AppendReply(5, "b", "a", False, 0, 0, False) in replies
    assert VoteReply(5, "b", "c", granted=False, pre_vote=False) in replies
    assert n.last_index == 0 and n.term == 5


def test_a_leader_steps_down_on_a_higher_term() -> None:
    n = node()
    make_leader(n)
    n.step(AppendReply(7, "b", "a", False, 0, 1, False))
    assert n.role == "follower" and n.term == 7


def test_check_quorum_makes_a_cut_off_leader_step_down() -> None:
    n = node()
    make_leader(n)
    flush(n)
    elapse(n, 20)  # nobody answers
    assert n.role == "follower" and n.leader_id is None


def test_a_leader_that_hears_from_a_majority_stays() -> None:
    n = node()
    make_leader(n)
    for _ in range(5):
        for m in sent(flush(n)):
            if isinstance(m, AppendEntries) and m.dst == "b":
                n.step(AppendReply(m.term, "b", "a", True, m.prev_index + len(m.entries), 0,
                                   False))
        elapse(n, 5)
    assert n.role == "leader"


# ---------------------------------------------------------------- log replication


def test_a_conflicting_suffix_is_replaced_and_persisted_truncation_comes_first() -> None:
    n = node("b", log=[(1, 1), (2, 1), (3, 1)])
    n.step(append(2, "a", (1, 1), [noop(2, 2), batch(3, 2, b"new")], commit=0, dst="b"))
    r = n.ready()
    assert r.truncate_after == 1 and [e.index for e in r.entries] == [2, 3]
    assert n.log.term_at(3) == 2 and n.leader_id == "a"


def test_a_mismatch_is_rejected_with_a_hint_that_skips_the_term() -> None:
    n = node("b", term=3, log=[(1, 1), (2, 2), (3, 2), (4, 2)])
    n.step(append(3, "a", (4, 3), [], dst="b"))
    n.step(append(3, "a", (9, 3), [], dst="b"))
    replies = [m for m in sent(flush(n)) if isinstance(m, AppendReply)]
    assert [(m.success, m.match_index, m.hint_index) for m in replies] == [
        (False, 4, 2), (False, 9, 5)]


def test_a_success_reply_waits_for_the_advance_that_persisted_the_entries() -> None:
    n = node("b", term=1)
    n.step(append(1, "a", (0, 0), [noop(1, 1), batch(2, 1)], dst="b"))
    first = n.ready()
    assert first.entries and not any(isinstance(m, AppendReply) for m in first.messages)
    # More traffic before the advance must not release the reply either.
    n.step(append(1, "a", (2, 1), [], commit=0, dst="b"))
    assert not n.has_ready()  # the Ready in flight must be advanced first
    n.advance(first)
    second = n.ready()
    replies = [m for m in second.messages if isinstance(m, AppendReply)]
    assert replies and all(m.success and m.match_index == 2 for m in replies)


def test_a_granted_vote_waits_for_the_persisted_hard_state() -> None:
    n = node("b")
    n.step(RequestVote(1, "a", "b", 0, 0, pre_vote=False))
    r = n.ready()
    assert r.hard_state == HardState(1, "a") and not r.messages
    n.advance(r)
    assert n.ready().messages == (VoteReply(1, "b", "a", granted=True, pre_vote=False),)


def test_commit_reaches_a_follower_only_for_persisted_entries() -> None:
    n = node("b", term=1)
    n.step(append(1, "a", (0, 0), [noop(1, 1), batch(2, 1)], commit=2, dst="b"))
    r = n.ready()
    assert r.commit_index == 0  # not yet on disk here
    n.advance(r)
    r = n.ready()
    assert r.commit_index == 2 and r.newly_committed == (0, 2)


def _leader_with_old_entries() -> RaftNode:
    """a leads term 3 with entries of term 1 that were never committed."""
    n = node("a", term=2, log=[(1, 1), (2, 1)])
    make_leader(n)
    assert n.term == 3 and n.last_index == 3
    flush(n)
    return n


def test_earlier_term_entries_commit_only_through_a_current_term_entry() -> None:
    n = _leader_with_old_entries()
    n.step(AppendReply(3, "b", "a", True, 2, 0, False))  # b has the old entries only
    assert n.commit_index == 0
    n.step(AppendReply(3, "b", "a", True, 3, 0, False))  # and now this term's NOOP
    assert n.commit_index == 3


def test_propose_sends_at_once_and_pipelines_without_waiting() -> None:
    n = _leader_with_old_entries()
    n.step(AppendReply(3, "b", "a", True, 3, 0, False))  # b replicates
    flush(n)
    for i in range(3):
        n.propose(b"p%d" % i)
    appends = [m for m in sent(flush(n)) if isinstance(m, AppendEntries) and m.dst == "b"]
    assert [m.prev_index for m in appends] == [3, 4, 5]
    assert all(e.data is None for m in appends for e in m.entries)  # payloads attached by I/O


def test_a_leaders_new_entries_leave_before_its_write_of_an_earlier_batch() -> None:
    n = _leader_with_old_entries()
    n.step(AppendReply(3, "b", "a", True, 3, 0, False))
    flush(n)
    n.propose(b"first")
    writing = n.ready()  # its own write of the first batch is under way
    second = n.propose(b"second")
    early = n.take_early_messages()
    assert {(m.dst, m.prev_index) for m in early} >= {("b", second.index - 1)}
    assert all(isinstance(m, AppendEntries) for m in early)
    assert n.take_early_messages() == []  # taken once
    # Nothing counts the leader's own copy before its writes are advanced...
    n.step(AppendReply(3, "b", "a", True, second.index, 0, False))
    assert n.commit_index < second.index
    n.advance(writing)
    rest = flush(n)
    # ...and the next Ready persists the second batch without sending it again.
    assert [e.index for r in rest for e in r.entries] == [second.index]
    assert not [m for m in sent(rest) if isinstance(m, AppendEntries) and m.dst == "b"
                and m.entries and m.entries[-1].index == second.index]
    assert n.commit_index == second.index


def test_a_followers_acknowledgement_is_never_taken_early() -> None:
    f = node("b", term=1)
    f.step(append(1, "a", (0, 0), [noop(1, 1)], dst="b"))
    assert f.take_early_messages() == []
    replies = sent(flush(f))
    assert [type(m) for m in replies] == [AppendReply] and replies[0].success


def test_propose_on_a_follower_names_the_leader() -> None:
    n = node("b", term=1)
    n.step(append(1, "a", (0, 0), [noop(1, 1)], dst="b"))
    with pytest.raises(NotLeaderError) as err:
        n.propose(b"x")
    assert err.value.leader_hint == "a"


# ---------------------------------------------------------------- refused entries


def test_a_refused_entry_is_dropped_and_answered_with_refused() -> None:
    n = node("b", term=1)
    n.step(append(1, "a", (0, 0), [noop(1, 1), batch(2, 1, b"BAD"), batch(3, 1)], commit=3,
                  dst="b"))
    r = n.ready()
    n.advance(r, refused_from=2)
    assert n.last_index == 1
    out = n.ready()
    assert out.commit_index <= 1
    assert [m for m in out.messages if isinstance(m, AppendReply)] == [
        AppendReply(1, "b", "a", success=False, match_index=1, hint_index=2, refused=True)]


def test_a_leader_does_not_count_a_refusal_and_retries_on_the_heartbeat() -> None:
    n = _leader_with_old_entries()
    n.step(AppendReply(3, "b", "a", True, 3, 0, False))
    flush(n)
    n.propose(b"BAD")
    flush(n)
    n.step(AppendReply(3, "b", "a", False, 3, 4, True))
    assert n.commit_index == 3
    n.propose(b"more")
    assert not [m for m in sent(flush(n)) if getattr(m, "dst", "") == "b"]
    elapse(n, 2)
    retry = [m for m in sent(flush(n)) if isinstance(m, AppendEntries) and m.dst == "b"]
    assert retry and retry[0].prev_index == 3


def test_a_follower_stops_trusting_a_leader_whose_entry_it_refused() -> None:
    n = node("b", term=1)
    n.step(append(1, "a", (0, 0), [noop(1, 1), batch(2, 1, b"BAD")], dst="b"))
    n.advance(n.ready(), refused_from=2)
    for _ in range(30):  # the leader keeps sending heartbeats
        n.step(append(1, "a", (1, 1), [], dst="b"))
        n.tick()
        flush(n)
    assert n.role == "pre-candidate"


# ---------------------------------------------------------------- membership


def _committed_leader() -> RaftNode:
    n = node()
    make_leader(n)
    flush(n)
    n.step(AppendReply(1, "b", "a", True, 1, 0, False))
    assert n.commit_index == 1
    flush(n)
    return n


def test_a_voter_is_added_when_its_config_is_appended() -> None:
    n = _committed_leader()
    entry = n.propose_membership(Membership.of("a", "b", "c", "d"))
    assert entry.kind is EntryKind.CONFIG and n.membership.voters == {"a", "b", "c", "d"}
    appends = [m for m in sent(flush(n)) if isinstance(m, AppendEntries)]
    assert "d" in {m.dst for m in appends}
    n.step(AppendReply(1, "b", "a", True, 2, 0, False))
    assert n.commit_index == 1  # 2 of 4 is not a majority
    n.step(AppendReply(1, "c", "a", True, 2, 0, False))
    assert n.commit_index == 2


def test_membership_changes_are_one_voter_at_a_time_and_never_overlap() -> None:
    n = node()
    make_leader(n)
    with pytest.raises(MembershipChangeError, match="committed an entry of its term"):
        n.propose_membership(Membership.of("a", "b", "c", "d"))
    flush(n)
    n.step(AppendReply(1, "b", "a", True, 1, 0, False))
    with pytest.raises(MembershipChangeError, match="one voter"):
        n.propose_membership(Membership.of("a", "b", "d", "e"))
    n.propose_membership(Membership.of("a", "b", "c", "d"))
    with pytest.raises(MembershipChangeError, match="pending"):
        n.propose_membership(Membership.of("a", "b", "c", "d", "e"))


def test_a_removed_leader_steps_down_once_its_removal_commits() -> None:
    n = _committed_leader()
    n.propose_membership(Membership.of("b", "c"))
    flush(n)
    assert n.role == "leader"
    n.step(AppendReply(1, "b", "a", True, 2, 0, False))
    assert n.role == "leader"  # b alone is not a majority of {b, c}
    n.step(AppendReply(1, "c", "a", True, 2, 0, False))
    assert n.role == "follower" and n.commit_index == 2
    assert any(type(m).__name__ == "TimeoutNow" for m in sent(flush(n)))
    elapse(n, 50)
    assert n.role == "follower"  # no longer a voter: it never campaigns


def _appends_to(readies: list[Ready], dst: str) -> list[AppendEntries]:
    return [m for m in sent(readies) if isinstance(m, AppendEntries) and m.dst == dst]


def test_a_removed_follower_is_told_its_removal_committed_then_left_alone() -> None:
    n = _committed_leader()
    n.step(AppendReply(1, "c", "a", True, 1, 0, False))
    flush(n)
    n.propose_membership(Membership.of("a", "b"))
    assert [m.entries[-1].index for m in _appends_to(flush(n), "c")] == [2]
    assert n.voter_match_indexes() == {"b": 1}  # c no longer counts
    n.step(AppendReply(1, "c", "a", True, 2, 0, False))
    assert n.commit_index == 1  # c's copy does not commit the config that removed it
    assert _appends_to(flush(n), "c") == []
    n.step(AppendReply(1, "b", "a", True, 2, 0, False))
    assert n.commit_index == 2
    flush(n)
    n.step(AppendReply(1, "c", "a", True, 2, 0, False))  # answers a heartbeat
    (last,) = _appends_to(flush(n), "c")
    assert (last.prev_index, last.entries, last.commit) == (2, (), 2)
    elapse(n, 9)
    n.step(AppendReply(1, "b", "a", True, 2, 0, False))
    elapse(n, 10)
    readies = flush(n)
    assert _appends_to(readies, "c") == [] and _appends_to(readies, "b")
    assert n.role == "leader"


def test_a_removed_member_that_never_answers_is_dropped_at_the_next_check_quorum() -> None:
    n = _committed_leader()
    n.propose_membership(Membership.of("a", "b"))
    flush(n)
    n.step(AppendReply(1, "b", "a", True, 2, 0, False))
    assert n.commit_index == 2
    elapse(n, 8)
    assert _appends_to(flush(n), "c")  # still trying: c may be slow, not gone
    n.step(AppendReply(1, "b", "a", True, 2, 0, False))
    elapse(n, 4)  # the check at tick 10, heartbeats at 10 and 12
    readies = flush(n)
    assert _appends_to(readies, "c") == [] and _appends_to(readies, "b")
    assert n.role == "leader"


def test_a_removed_member_added_back_before_it_left_is_a_voter_again() -> None:
    n = _committed_leader()
    n.propose_membership(Membership.of("a", "b"))
    flush(n)
    n.step(AppendReply(1, "b", "a", True, 2, 0, False))
    assert n.voter_match_indexes() == {"b": 2}
    n.propose_membership(Membership.of("a", "b", "c"))
    flush(n)
    assert n.voter_match_indexes() == {"b": 2, "c": 0}
    n.step(AppendReply(1, "c", "a", True, 3, 0, False))
    assert n.voter_match_indexes() == {"b": 2, "c": 3}
    assert _appends_to(flush(n), "c") == []  # nothing new for it, and it is not dropped
    elapse(n, 2)
    assert _appends_to(flush(n), "c")  # still sent heartbeats, as a voter


def test_leadership_goes_to_a_caught_up_voter_and_writes_wait_meanwhile() -> None:
    n = _committed_leader()
    n.propose(b"x")
    flush(n)
    for bad in ("a", "d"):
        with pytest.raises(ValueError, match="not another voter"):
            n.transfer_leadership(bad)
    n.transfer_leadership("c")
    readies = flush(n)
    assert not [m for m in sent(readies) if isinstance(m, TimeoutNow)]  # c is behind
    with pytest.raises(NotLeaderError) as refused:
        n.propose(b"y")
    assert refused.value.leader_hint == "c"
    n.step(AppendReply(1, "c", "a", True, 2, 0, False))
    n.step(AppendReply(1, "b", "a", True, 2, 0, False))
    assert n.voter_match_indexes() == {"b": 2, "c": 2}
    assert [m.dst for m in sent(flush(n)) if isinstance(m, TimeoutNow)] == ["c"]
    n.step(RequestVote(2, "c", "a", 2, 1, pre_vote=False))
    assert n.role == "follower" and n.voter_match_indexes() == {}


def test_a_follower_takes_the_membership_of_the_config_it_appends() -> None:
    n = node("d", membership=ABC)
    elapse(n, 50)
    assert n.role == "follower"  # not a voter, so no campaign
    config = Entry(2, 1, EntryKind.CONFIG, Membership.of("a", "b", "c", "d").encode())
    n.step(append(1, "a", (0, 0), [noop(1, 1), config], dst="d"))
    assert "d" in n.membership.voters
    n.step(append(2, "b", (1, 1), [noop(2, 2)], dst="d"))  # truncation undoes it
    assert n.membership == ABC


def test_malformed_entries_from_a_peer_are_ignored_without_raising() -> None:
    n = node("b", term=1)
    n.step(append(1, "a", (0, 0), [batch(1, 1)], dst="b"))  # a term must open with its NOOP
    n.step(append(1, "a", (0, 0), [noop(1, 1), Entry(2, 1, EntryKind.CONFIG, b"junk")],
                  dst="b"))
    n.step(append(1, "a", (0, 0), [noop(1, 2)], dst="b"))  # entry above the message term
    assert n.last_index == 0


def test_a_vote_granted_in_an_earlier_term_is_never_sent() -> None:
    # Granted in term 1 but not yet persisted when term 2 arrives: the hard state that
    # reaches the disk is term 2's, so the term-1 grant would be a promise never kept.
    n = node("b")
    n.step(RequestVote(1, "a", "b", 0, 0, pre_vote=False))
    n.step(append(2, "c", (0, 0), [noop(1, 2)], dst="b"))
    readies = flush(n)
    assert [r.hard_state for r in readies if r.hard_state] == [HardState(2, None)]
    assert not [m for m in sent(readies) if isinstance(m, VoteReply)]


def test_a_vote_granted_before_campaigning_is_never_sent() -> None:
    # The grant is in the Ready in flight; the node campaigns in the next term before
    # that Ready is advanced, which would release the grant.
    n = node("b")
    n.step(RequestVote(1, "a", "b", 0, 0, pre_vote=False))
    in_flight = n.ready()
    assert in_flight.hard_state == HardState(1, "a")
    n.step(TimeoutNow(1, "c", "b"))
    assert n.role == "candidate" and n.term == 2
    n.advance(in_flight)
    grants = [m for m in sent(flush(n)) if isinstance(m, VoteReply) and m.granted]
    assert grants == []


# ---------------------------------------------------------------- compaction and snapshots


def test_a_compacted_log_keeps_the_snapshot_term_and_membership() -> None:
    log = RaftLog.restore([(1, 1), (2, 1), (3, 2), (4, 2), (5, 3)],
                          [Entry(4, 2, EntryKind.CONFIG, Membership.of("a", "b").encode())])
    snap = Snapshot(4, 2, Membership.of("a", "b").encode(), b"state")
    log.compact(snap)
    assert (log.first_index, log.last_index, log.snapshot) == (5, 5, snap)
    assert [log.term_at(i) for i in (0, 2, 3, 4, 5, 6)] == [None, None, None, 2, 3, None]
    assert log.latest_config() == Entry(4, 2, EntryKind.CONFIG, snap.config)
    assert log.entries(5, 5) == (noop(5, 3),)
    with pytest.raises(IndexError):
        log.entries(4, 5)
    with pytest.raises(ValueError, match="compacted"):
        log.truncate_after(3)
    with pytest.raises(ValueError, match="compact to 3"):
        log.compact(Snapshot(3, 2, b"", b""))
    # Restored from what an I/O layer persists: the snapshot and the entries after it.
    again = RaftLog.restore([(5, 3)], [], snapshot=snap)
    assert (again.first_index, again.last_index, again.term_at(4)) == (5, 5, 2)
    with pytest.raises(ValueError, match="follows"):
        RaftLog.restore([(6, 3)], [], snapshot=snap)


def test_only_committed_durable_entries_may_be_compacted() -> None:
    n = node(log=[(1, 1), (2, 1), (3, 1)], term=1)
    with pytest.raises(ValueError, match="committed and durable"):
        n.compact(2, b"")  # restarted: nothing known committed yet
    n.step(append(1, "b", (3, 1), [], commit=2))
    flush(n)
    snap = n.compact(2, b"state at 2")
    assert snap == Snapshot(2, 1, ABC.encode(), b"state at 2")
    assert n.log.first_index == 3 and n.commit_index == 2


def _leader_with_compacted_log() -> RaftNode:
    n = node()
    make_leader(n)
    for data in (b"x1", b"x2", b"x3"):
        n.propose(data)
    last = n.last_index
    pending = sent(flush(n))
    while pending:  # c acknowledges whatever it is sent (probed first, then pipelined)
        for m in pending:
            if isinstance(m, AppendEntries) and m.dst == "c":
                n.step(AppendReply(m.term, "c", "a", success=True,
                                   match_index=m.prev_index + len(m.entries), hint_index=0,
                                   refused=False))
        pending = [m for m in sent(flush(n)) if m.dst == "c" and
                   isinstance(m, AppendEntries) and m.entries]
    assert n.commit_index == last
    n.compact(3, b"state at 3")
    return n


def test_a_leader_sends_its_snapshot_to_a_follower_that_needs_compacted_entries() -> None:
    n = _leader_with_compacted_log()
    # b never answered: what it needs first (index 1) is gone from a's log, so the next
    # heartbeat carries the snapshot, and so does each one until b answers.
    for _ in range(2):
        elapse(n, 2)
        assert [m for m in sent(flush(n)) if m.dst == "b"] == [
            InstallSnapshot(1, "a", "b", n.log.snapshot)]
    n.propose(b"x4")  # no entries for b meanwhile
    assert not [m for m in sent(flush(n)) if m.dst == "b"]
    n.step(AppendReply(1, "b", "a", success=True, match_index=3, hint_index=0,
                       refused=False))
    after = [m for m in sent(flush(n)) if m.dst == "b"]
    assert isinstance(after[0], AppendEntries)
    assert (after[0].prev_index, [e.index for e in after[0].entries]) == (3, [4, 5])


def test_a_follower_installs_a_snapshot_and_acknowledges_it_once_durable() -> None:
    b = node("b", log=[(1, 1), (2, 1)], term=2)  # an old, uncommitted suffix of term 1
    snap = Snapshot(7, 2, ABC.encode(), b"state at 7")
    b.step(InstallSnapshot(2, "a", "b", snap))
    assert (b.log.first_index, b.last_index, b.commit_index) == (8, 7, 7)
    ready = b.ready()
    assert ready.snapshot == snap and ready.messages == ()  # not before it is durable
    b.advance(ready)
    readies = flush(b)
    assert sent(readies) == [AppendReply(2, "b", "a", success=True, match_index=7,
                                         hint_index=0, refused=False)]
    assert readies[0].newly_committed == (0, 7)
    # Entries after it follow as usual; a resend of the snapshot is answered at once.
    b.step(append(2, "a", (7, 2), [batch(8, 2)], commit=8, dst="b"))
    b.step(InstallSnapshot(2, "a", "b", snap))
    flush(b)
    assert b.last_index == 8 and b.commit_index == 8
    # An append from before the compaction is answered with what the snapshot holds.
    b.compact(8, b"state at 8")
    b.step(append(2, "a", (5, 2), [batch(6, 2)], commit=6, dst="b"))
    assert [m.match_index for m in sent(flush(b)) if isinstance(m, AppendReply)] == [8]


def test_a_snapshot_at_or_below_the_commit_point_changes_nothing() -> None:
    b = node("b", term=1)
    b.step(append(1, "a", (0, 0), [noop(1, 1), batch(2, 1), batch(3, 1)], commit=3,
                  dst="b"))
    flush(b)
    b.step(InstallSnapshot(1, "a", "b", Snapshot(2, 1, ABC.encode(), b"")))
    readies = flush(b)
    assert all(r.snapshot is None for r in readies) and b.last_index == 3
    assert [m.match_index for m in sent(readies) if isinstance(m, AppendReply)] == [2]
