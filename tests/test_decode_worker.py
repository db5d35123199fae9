"""Large bodies decoded in the node's child process: the same envelopes, the same errors."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from factories import grant
from nodeclient import msgpack_body, now_ms, post, post_raw, register_controller
from nodeproc import NodeProcess, children_of, running, wait_gone

from client.wire import decode_body
from ledger.entry import LogEntry
from ledger.errors import LedgerError
from ledger.events import Grant
from ledger.signed import SignedEvent, sign_batch
from ledger.status import PurposeStatus
from node.batch_payload import decode_batch, encode_batch
from node.decode_worker import MIN_BODY, DecodeWorker, _of_text_and_bytes

KEY = Ed25519PrivateKey.generate()


def batch(n: int, first: int = 0, key: Ed25519PrivateKey = KEY) -> list[SignedEvent]:
    t = now_ms()
    return sign_batch([grant(consented_at=t, valid_until=t + 10**8,
                             subject=(first + i).to_bytes(32, "big")) for i in range(n)], key)


def same_envelopes(got: object, want: list[SignedEvent]) -> None:
    assert isinstance(got, list)
    assert got == want
    assert [s.id for s in got] == [s.id for s in want]
    assert [s.encoded for s in got] == [s.encoded for s in want]
    assert [s.body for s in got] == [s.body for s in want]
    assert [s.__dict__["message"] for s in got] == [s.signed_message() for s in want]


@pytest.fixture
async def worker() -> AsyncIterator[DecodeWorker]:
    worker = await DecodeWorker.start()
    yield worker
    await worker.close()


async def test_the_child_decodes_what_the_loop_would(worker: DecodeWorker) -> None:
    body = msgpack_body(batch(300))
    assert len(body) >= MIN_BODY
    got = await worker.decode(body, 1000)
    same_envelopes(got, decode_body(body, max_items=1000))  # type: ignore[arg-type]
    # What the envelopes of one batch signature share comes once through the pipe.
    assert isinstance(got, list)
    assert got[0].sig is got[299].sig and got[0].message is got[299].message
    first, last = got[0].body, got[299].body
    assert isinstance(first, Grant) and isinstance(last, Grant)
    assert first.controller is last.controller
    assert first.notice is last.notice



def test_only_records_of_text_and_bytes_are_shared() -> None:
    notice = grant().notice
    assert _of_text_and_bytes(notice)
    # A record declared with slots (a status) has no __dict__ to look through.
    assert not _of_text_and_bytes(PurposeStatus(index=1, grant=bytes(32), valid_until=5,
                                                withdrawn_by=None))
    assert not _of_text_and_bytes(("dpv:Marketing",)) and not _of_text_and_bytes(7)

async def test_bodies_in_flight_together_come_back_each_to_its_sender(
        worker: DecodeWorker) -> None:
    bodies = [msgpack_body(batch(40 + i, first=1000 * i)) for i in range(12)]
    results = await asyncio.gather(*(worker.decode(b, 1000) for b in bodies))
    for body, got in zip(bodies, results, strict=True):
        same_envelopes(got, decode_body(body, max_items=1000))  # type: ignore[arg-type]


async def test_a_refused_body_is_left_to_the_loop_and_later_ones_still_decode(
        worker: DecodeWorker) -> None:
    good = msgpack_body(batch(30))
    assert await worker.decode(b"\xc1" * MIN_BODY, 1000) is None
    assert await worker.decode(good, 10) is None  # more envelopes than allowed
    same_envelopes(await worker.decode(good, 1000), decode_body(good, max_items=1000))  # type: ignore[arg-type]
    assert worker.alive


def entries_of(envelopes: list[SignedEvent], first: int = 5) -> list[LogEntry]:
    prev, out = bytes(32), []
    for i, signed in enumerate(envelopes):
        out.append(LogEntry(index=first + i, time=now_ms(), prev=prev, signed=signed))
        prev = out[-1].leaf_hash
    return out


async def test_the_child_decodes_a_leaders_batch_as_a_follower_would(
        worker: DecodeWorker) -> None:
    payload = encode_batch([e.encode() for e in entries_of(batch(300))])
    assert len(payload) >= MIN_BODY
    got, want = await worker.submit_batch(payload), decode_batch(payload)
    assert isinstance(got, list) and got == want
    assert [e.leaf_hash for e in got] == [e.leaf_hash for e in want]
    assert [e.encoded for e in got] == [e.encoded for e in want]
    assert [e.signed.__dict__["message"] for e in got] == \
        [e.signed.signed_message() for e in want]


@pytest.mark.parametrize("payload", [
    b"\xc1" * MIN_BODY,  # not msgpack
    msgpack.packb([]),  # no entries
    msgpack.packb(["an entry is bytes"] * 3000),
    encode_batch([e.encode() for e in entries_of(batch(100))]) + b"\x00",  # bytes after it
    encode_batch([b"\x80" * 200] * 200),  # entries that do not decode
])
async def test_a_batch_the_child_refuses_is_refused_by_the_loop_too(
        worker: DecodeWorker, payload: bytes) -> None:
    assert await worker.submit_batch(payload) is None
    with pytest.raises((ValueError, LedgerError)):
        decode_batch(payload)
    assert worker.alive


async def test_closing_ends_the_child_after_it_answers_what_it_holds() -> None:
    worker = await DecodeWorker.start()
    body = msgpack_body(batch(30))
    # gather starts decode first: its body is in the pipe before close() ends the pipe.
    got, _ = await asyncio.gather(worker.decode(body, 1000), worker.close())
    same_envelopes(got, decode_body(body, max_items=1000))  # type: ignore[arg-type]
    assert worker._process.returncode == 0
    assert await worker.decode(body, 1000) is None


async def _until_alive(worker: DecodeWorker, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not worker.alive:
        assert asyncio.get_running_loop().time() < deadline, "no new decoding process"
        await asyncio.sleep(0.01)  # polling the worker's own restart timer


async def test_a_killed_child_leaves_decoding_to_the_loop_until_a_new_one_starts(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="consent_ledger.decode_worker")
    restarts: list[int] = []
    worker = await DecodeWorker.start(on_restarted=lambda: restarts.append(worker.pid),
                                      restart_after=(1.0, 2.0))  # long enough to see it down
    first = worker.pid
    os.kill(first, signal.SIGKILL)
    body = msgpack_body(batch(30))
    assert await worker.decode(body, 1000) is None
    assert not worker.alive
    assert await worker.submit_batch(encode_batch([b"\x80"] * 20_000)) is None
    assert any("decoding process stopped" in r.getMessage() for r in caplog.records)

    await _until_alive(worker)
    assert restarts == [worker.pid] and worker.pid != first
    assert not running(first)  # reaped: one child at a time
    same_envelopes(await worker.decode(body, 1000), decode_body(body, max_items=1000))
    assert any("started again" in r.getMessage() for r in caplog.records)
    await worker.close()
    assert not running(worker.pid)


async def test_children_that_keep_dying_young_are_started_ever_more_slowly() -> None:
    worker = await DecodeWorker.start(restart_after=(0.2, 0.8))
    try:
        pauses = []
        for _ in range(4):
            os.kill(worker.pid, signal.SIGKILL)
            killed = asyncio.get_running_loop().time()
            assert await worker.decode(msgpack_body(batch(2)), 1000) is None
            await _until_alive(worker)
            pauses.append(asyncio.get_running_loop().time() - killed)
        # 0.2, 0.4, 0.8, then the ceiling: each start waits at least its back-off
        assert [p >= want for p, want in zip(pauses, (0.2, 0.4, 0.8, 0.8), strict=True)] \
            == [True] * 4, pauses
    finally:
        await worker.close()


async def test_closing_while_a_new_child_is_due_starts_none() -> None:
    worker = await DecodeWorker.start(restart_after=(30.0, 60.0))
    first = worker.pid
    os.kill(first, signal.SIGKILL)
    assert await worker.decode(msgpack_body(batch(2)), 1000) is None
    await worker.close()
    assert worker.pid == first and not worker.alive


# ---------------------------------------------------------------- in a real node


async def test_a_node_decodes_large_bodies_in_its_child_and_starts_another_if_it_dies(
        tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "data", "--origin", "test.example/decode")
    node.start()
    try:
        assert node.proc is not None
        (child,) = children_of(node.proc.pid)
        assert children_of(node.proc.pid, b"node.decode_worker") == [child]
        async with aiohttp.ClientSession() as session:
            key = await register_controller(session, node.url, node.data_dir / "operator.key")
            status, body, _ = await post(session, node.url, batch(300, key=key))
            assert status == 200, body
            assert len(body["results"]) == 300

            # The child refuses, the loop decodes again and names the field, as it would.
            wires = [s.to_wire() for s in batch(300, first=10_000, key=key)]
            wires[200]["sig"] = wires[200]["sig"][:63]
            status, problem, _ = await post_raw(session, node.url, msgpack.packb(wires))
            assert status == 400
            assert problem["type"].endswith("/invalid-field"), problem
            assert problem["field"] == "[200].sig"

            # A path that leads elsewhere: the child's signed message for it fails to verify.
            wires = [s.to_wire() for s in batch(300, first=30_000, key=key)]
            wires[100]["batch"]["index"] = 101
            status, body, _ = await post_raw(session, node.url, msgpack.packb(wires))
            assert status == 200, body
            problems = {i: r["problem"]["type"] for i, r in enumerate(body["results"])
                        if "problem" in r}
            assert list(problems) == [100] and problems[100].endswith("/bad-signature")
            async with session.get(node.url + "/metrics") as resp:  # the refused one: not
                assert 'consent_ledger_decoded_in_process_total{kind="body"} 2\n' \
                    in await resp.text()

            os.kill(child, signal.SIGKILL)
            status, body, _ = await post(session, node.url, batch(300, first=20_000, key=key))
            assert status == 200, body
            assert len(body["results"]) == 300

            # A new child, a second later: large bodies go to it again.
            deadline = asyncio.get_running_loop().time() + 15
            while not children_of(node.proc.pid, b"node.decode_worker"):
                assert asyncio.get_running_loop().time() < deadline, node.stderr()
                await asyncio.sleep(0.05)  # polling the node's restart timer
            (second,) = children_of(node.proc.pid, b"node.decode_worker")
            assert second != child and not running(child)
            status, body, _ = await post(session, node.url, batch(300, first=40_000, key=key))
            assert status == 200, body
            async with session.get(node.url + "/metrics") as resp:
                metrics = await resp.text()
            assert 'consent_ledger_decoded_in_process_total{kind="body"} 3\n' in metrics
            assert "consent_ledger_decode_process_restarts_total 1\n" in metrics
        assert "decoding process stopped" in node.stderr()
        assert "decoding process started again" in node.stderr()
    finally:
        assert node.stop() == 0, node.stderr()


def test_a_killed_node_takes_its_child_with_it(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "data")
    node.start()
    assert node.proc is not None
    (child,) = children_of(node.proc.pid)
    node.kill()
    assert wait_gone(child)


def test_decoding_on_the_loop_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSENT_LEDGER_DECODE_PROCESS", "false")
    node = NodeProcess(tmp_path / "data")
    node.start()
    try:
        assert node.proc is not None
        assert children_of(node.proc.pid) == []
    finally:
        assert node.stop() == 0, node.stderr()
