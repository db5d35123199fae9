"""A real node process on loopback, driven through its HTTP API."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from factories import grant, revoke
from nodeclient import b64d, load_key, now_ms, post, post_raw, register_controller
from nodeproc import NodeProcess

from ledger import merkle
from ledger.checkpoint import parse_checkpoint
from ledger.commitment import token_hash
from ledger.entry import LogEntry
from ledger.events import Genesis
from ledger.note import open_note
from ledger.signed import sign_batch, sign_event, token_revocation
from ledger.tiles import parse_entry_bundle

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    data = tmp_path_factory.mktemp("node") / "data"
    proc = NodeProcess(data, "--origin", "test.example/api")
    proc.start()
    yield proc
    assert proc.stop() == 0, proc.stderr()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def controller(node: NodeProcess, session: aiohttp.ClientSession) -> Ed25519PrivateKey:
    return await register_controller(session, node.url, node.data_dir / "operator.key")


def fresh(**changes: object) -> object:
    """A grant at the current time (the node refuses clock skew)."""
    t = now_ms()
    return grant(consented_at=t, valid_until=t + 86_400_000, **changes)


async def get_json(session: aiohttp.ClientSession, url: str) -> tuple[int, dict, str]:
    async with session.get(url) as resp:
        return resp.status, await resp.json(content_type=None), resp.content_type


async def verified_checkpoint(session: aiohttp.ClientSession, url: str):  # type: ignore[no-untyped-def]
    status, keys, _ = await get_json(session, f"{url}/v1/keys")
    assert status == 200
    async with session.get(f"{url}/checkpoint") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/plain"
        note_bytes = await resp.read()
    from ledger.note import new_verifier

    note = open_note(note_bytes, [new_verifier(keys["log"])])
    return parse_checkpoint(note.text)


async def test_genesis_is_entry_zero(node: NodeProcess, session: aiohttp.ClientSession) -> None:
    status, body, _ = await get_json(session, f"{node.url}/v1/entries/0")
    assert status == 200
    entry = LogEntry.decode(b64d(body["entry"]))
    assert isinstance(entry.signed.body, Genesis)
    assert entry.signed.body.origin == "test.example/api"
    assert entry.prev == bytes(32)
    checkpoint = await verified_checkpoint(session, node.url)
    assert checkpoint.origin == "test.example/api"
    assert checkpoint.size >= 1


async def test_grant_is_acknowledged_with_a_covering_checkpoint(
        node: NodeProcess, session: aiohttp.ClientSession,
        controller: Ed25519PrivateKey) -> None:
    signed = sign_event(fresh(), controller)
    status, body, _ = await post(session, node.url, signed)
    assert status == 200, body
    assert body["duplicate"] is False
    index = body["index"]
    status, keys, _ = await get_json(session, f"{node.url}/v1/keys")
    from ledger.note import new_verifier

    checkpoint = parse_checkpoint(
        open_note(body["checkpoint"].encode(), [new_verifier(keys["log"])]).text)
    assert checkpoint.size > index
    status, proof, _ = await get_json(
        session, f"{node.url}/v1/proofs/inclusion?index={index}&size={checkpoint.size}")
    assert status == 200
    merkle.verify_inclusion(b64d(body["leaf_hash"]), index, checkpoint.size,
                            [b64d(h) for h in proof["proof"]], checkpoint.root)
    # The same event again: same index, no new entry.
    status, again, _ = await post(session, node.url, signed)
    assert status == 200
    assert again["index"] == index and again["duplicate"] is True
    status, found, _ = await get_json(session, f"{node.url}/v1/events/{signed.id.hex()}")
    assert status == 200 and found["index"] == index


async def test_an_entry_is_found_by_its_leaf_hash_and_its_event_id(
        node: NodeProcess, session: aiohttp.ClientSession,
        controller: Ed25519PrivateKey) -> None:
    async def by_leaf(leaf: str) -> tuple[int, dict]:
        status, body, _ = await get_json(session, f"{node.url}/v1/entries?leaf_hash={leaf}")
        return status, body

    first = sign_event(fresh(subject=b"l" * 32), controller)
    status, one, _ = await post(session, node.url, first)
    assert status == 200, one
    leaf = b64d(one["leaf_hash"])
    for spelled in (leaf.hex(), base64.urlsafe_b64encode(leaf).decode()):
        status, found = await by_leaf(spelled)
        assert status == 200 and found["index"] == one["index"], found
        assert b64d(found["leaf_hash"]) == leaf
        assert merkle.leaf_hash(b64d(found["entry"])) == leaf
    # Entries written after the first lookup are found too (the index catches up).
    second = sign_event(fresh(subject=b"m" * 32), controller)
    status, two, _ = await post(session, node.url, second)
    assert status == 200, two
    status, found = await by_leaf(b64d(two["leaf_hash"]).hex())
    assert status == 200 and found["index"] == two["index"]
    status, found, _ = await get_json(session, f"{node.url}/v1/events/{second.id.hex()}")
    assert status == 200 and found["index"] == two["index"]
    status, problem = await by_leaf("ab" * 32)
    assert status == 404 and problem["type"].endswith("/not-found")


async def test_json_body_is_accepted(node: NodeProcess, session: aiohttp.ClientSession,
                                     controller: Ed25519PrivateKey) -> None:
    signed = sign_event(fresh(), controller)
    body = json.dumps({"event": base64.b64encode(signed.event).decode(),
                       "signer": base64.b64encode(signed.signer).decode(),
                       "sig": base64.b64encode(signed.sig).decode()})
    status, reply, _ = await post_raw(session, node.url, body.encode(), "application/json")
    assert status == 200, reply
    assert b64d(reply["event_id"]) == signed.id


async def test_batch_with_one_signature(node: NodeProcess, session: aiohttp.ClientSession,
                                        controller: Ed25519PrivateKey) -> None:
    t = now_ms()
    batch = sign_batch([grant(consented_at=t, valid_until=t + 10**8,
                              subject=i.to_bytes(32, "big")) for i in range(300)], controller)
    status, body, _ = await post(session, node.url, batch)
    assert status == 200, body
    indexes = [r["index"] for r in body["results"]]
    assert indexes == list(range(indexes[0], indexes[0] + 300))
    # Entry bundles and hash tiles agree with the entries, as a tlog client would check.
    async with session.get(f"{node.url}/tile/entries/000") as resp:
        assert resp.status == 200
        assert "immutable" in resp.headers["Cache-Control"]
        bundle = parse_entry_bundle(await resp.read())
    assert len(bundle) == 256
    async with session.get(f"{node.url}/tile/0/000") as resp:
        assert resp.status == 200
        hashes = await resp.read()
    assert [hashes[i * 32:(i + 1) * 32] for i in range(256)] == [
        merkle.leaf_hash(e) for e in bundle]
    status, first, _ = await get_json(session, f"{node.url}/v1/entries/{indexes[0]}")
    assert status == 200
    assert LogEntry.decode(b64d(first["entry"])).signed == batch[0]


async def test_partial_tiles_and_bounds(node: NodeProcess, session: aiohttp.ClientSession) -> None:
    checkpoint = await verified_checkpoint(session, node.url)
    width = checkpoint.size % 256 or 256
    last = (checkpoint.size - 1) // 256
    suffix = "" if width == 256 else f".p/{width}"
    async with session.get(f"{node.url}/tile/0/{last:03d}{suffix}") as resp:
        assert resp.status == 200
        assert len(await resp.read()) == 32 * width
    async with session.get(f"{node.url}/tile/0/{last + 1:03d}") as resp:
        assert resp.status == 404
        assert resp.content_type == PROBLEM
    async with session.get(f"{node.url}/tile/0/01") as resp:  # not canonical
        assert resp.status == 404


@pytest.mark.parametrize("body, code", [
    (b"\xc1", "malformed"),
    (msgpack.packb({"event": b"x"}), "invalid-field"),
    (msgpack.packb([1, 2]), "invalid-field"),
])
async def test_malformed_bodies(node: NodeProcess, session: aiohttp.ClientSession,
                                body: bytes, code: str) -> None:
    status, problem, headers = await post_raw(session, node.url, body)
    assert status == 400
    assert headers["Content-Type"].startswith(PROBLEM)
    assert problem["type"].endswith("/" + code), problem
    assert problem["detail"]


async def test_non_canonical_envelope(node: NodeProcess, session: aiohttp.ClientSession,
                                      controller: Ed25519PrivateKey) -> None:
    wire = sign_event(fresh(), controller).to_wire()
    reordered = dict(reversed(list(wire.items())))
    status, problem, _ = await post_raw(session, node.url, msgpack.packb(reordered))
    assert status == 400
    assert problem["type"].endswith("/non-canonical")


async def test_unknown_field_is_named(node: NodeProcess, session: aiohttp.ClientSession,
                                      controller: Ed25519PrivateKey) -> None:
    wire = sign_event(fresh(), controller).to_wire()
    wire["extra"] = 1
    status, problem, _ = await post_raw(session, node.url, msgpack.packb(wire))
    assert status == 400
    assert problem["type"].endswith("/invalid-field")
    assert problem["field"] == "extra"


async def test_wrong_media_type(node: NodeProcess, session: aiohttp.ClientSession) -> None:
    status, problem, _ = await post_raw(session, node.url, b"hello", "text/plain")
    assert status == 415
    assert problem["type"].endswith("/unsupported-media-type")


async def test_body_over_the_limit_is_refused_unread(node: NodeProcess,
                                                     session: aiohttp.ClientSession) -> None:
    status, problem, _ = await post_raw(session, node.url, b"\x00" * (4 * 1024 * 1024 + 1))
    assert status == 413
    assert problem["type"].endswith("/too-large")


async def test_bad_signature(node: NodeProcess, session: aiohttp.ClientSession,
                             controller: Ed25519PrivateKey) -> None:
    forged = dataclasses.replace(sign_event(fresh(), controller), sig=bytes(64))
    status, problem, _ = await post(session, node.url, forged)
    assert status == 403
    assert problem["type"].endswith("/bad-signature")


async def test_unregistered_key(node: NodeProcess, session: aiohttp.ClientSession) -> None:
    status, problem, _ = await post(session, node.url,
                                    sign_event(fresh(), Ed25519PrivateKey.generate()))
    assert status == 403
    assert problem["type"].endswith("/unknown-key")


async def test_clock_skew(node: NodeProcess, session: aiohttp.ClientSession,
                          controller: Ed25519PrivateKey) -> None:
    old = now_ms() - 3_600_000
    status, problem, _ = await post(session, node.url, sign_event(
        grant(consented_at=old, valid_until=old + 10**9), controller))
    assert status == 422
    assert problem["type"].endswith("/clock-skew")


async def test_revocation_rules(node: NodeProcess, session: aiohttp.ClientSession,
                                controller: Ed25519PrivateKey) -> None:
    token = b"k" * 32
    g = sign_event(fresh(token_hash=token_hash(token)), controller)
    status, body, _ = await post(session, node.url, g)
    assert status == 200
    status, problem, _ = await post(session, node.url, sign_event(
        revoke(grant=bytes(32), revoked_at=now_ms()), controller))
    assert status == 409 and problem["type"].endswith("/unknown-grant")
    status, problem, _ = await post(session, node.url, token_revocation(
        revoke(grant=g.id, revoked_at=now_ms()), b"x" * 32))
    assert status == 403 and problem["type"].endswith("/bad-token")
    status, body, _ = await post(session, node.url, token_revocation(
        revoke(grant=g.id, revoked_at=now_ms()), token))
    assert status == 200, body
    status, problem, _ = await post(session, node.url, token_revocation(
        revoke(grant=g.id, revoked_at=now_ms() + 1, reason="twice"), token))
    assert status == 409 and problem["type"].endswith("/already-revoked")


async def test_batch_reports_each_rejection(node: NodeProcess, session: aiohttp.ClientSession,
                                            controller: Ed25519PrivateKey) -> None:
    good = sign_event(fresh(subject=b"g" * 32), controller)
    bad = dataclasses.replace(sign_event(fresh(subject=b"b" * 32), controller), sig=bytes(64))
    status, body, _ = await post(session, node.url, [good, bad])
    assert status == 200
    ok, refused = body["results"]
    assert "index" in ok
    assert refused["problem"]["type"].endswith("/bad-signature")


async def test_unknown_route_and_method(node: NodeProcess,
                                        session: aiohttp.ClientSession) -> None:
    status, _problem, ctype = await get_json(session, f"{node.url}/nope")
    assert status == 404 and ctype == PROBLEM
    async with session.delete(f"{node.url}/v1/events") as resp:
        assert resp.status == 405
        assert resp.content_type == PROBLEM


async def test_lookup_errors(node: NodeProcess, session: aiohttp.ClientSession) -> None:
    for path, status in [("/v1/entries/999999", 404), ("/v1/entries/01", 400),
                         ("/v1/proofs/inclusion?index=5&size=2", 400),
                         ("/v1/proofs/inclusion?index=-1&size=2", 400),
                         ("/v1/proofs/consistency?from=1", 400),
                         (f"/v1/events/{'00' * 32}", 404), ("/v1/events/zz", 400)]:
        got, problem, ctype = await get_json(session, node.url + path)
        assert (got, ctype) == (status, PROBLEM), (path, problem)


async def test_consistency_proof(node: NodeProcess, session: aiohttp.ClientSession,
                                 controller: Ed25519PrivateKey) -> None:
    before = await verified_checkpoint(session, node.url)
    status, _, _ = await post(session, node.url, sign_event(fresh(subject=b"c" * 32), controller))
    after = await verified_checkpoint(session, node.url)
    status, body, _ = await get_json(
        session, f"{node.url}/v1/proofs/consistency?from={before.size}&to={after.size}")
    assert status == 200
    merkle.verify_consistency(before.size, after.size, [b64d(h) for h in body["proof"]],
                              before.root, after.root)


async def test_operations_endpoints(node: NodeProcess, session: aiohttp.ClientSession) -> None:
    assert (await get_json(session, f"{node.url}/healthz"))[0] == 200
    status, ready, _ = await get_json(session, f"{node.url}/readyz")
    assert status == 200 and ready["size"] >= 1
    async with session.get(f"{node.url}/metrics") as resp:
        text = await resp.text()
    assert "consent_ledger_appended_total" in text
    assert "consent_ledger_commit_entries_bucket" in text


def test_queue_limit_answers_503(tmp_path: Path) -> None:
    import asyncio

    config = tmp_path / "node.toml"
    config.write_text('[node]\nmax_queue = 2\norigin = "test.example/small"\n')
    proc = NodeProcess(tmp_path / "data", "--config", str(config))
    proc.start()
    try:
        async def go() -> None:
            async with aiohttp.ClientSession() as s:
                key = await register_controller(s, proc.url, proc.data_dir / "operator.key")
                t = now_ms()
                events = sign_batch([grant(consented_at=t, valid_until=t + 10**8,
                                           subject=bytes([i]) * 32) for i in range(3)], key)
                status, problem, headers = await post(s, proc.url, events)
                assert status == 503
                assert problem["type"].endswith("/overloaded")
                assert int(headers["Retry-After"]) >= 1

        asyncio.run(go())
    finally:
        assert proc.stop() == 0


def test_origin_cannot_change(tmp_path: Path) -> None:
    from nodeproc import NodeFailedToStart

    proc = NodeProcess(tmp_path / "data", "--origin", "a.example/log")
    proc.start()
    assert proc.stop() == 0
    again = NodeProcess(tmp_path / "data", "--origin", "b.example/log")
    with pytest.raises(NodeFailedToStart) as err:
        again.start()
    assert "origin" in str(err.value)
    assert "Traceback" not in str(err.value)


def test_operator_key_file_is_private(node: NodeProcess) -> None:
    assert (node.data_dir / "operator.key").stat().st_mode & 0o077 == 0
    load_key(node.data_dir / "operator.key")


def test_operator_key_may_leave_the_node_after_genesis(tmp_path: Path) -> None:
    import asyncio
    import base64 as b64m

    proc = NodeProcess(tmp_path / "data", "--origin", "test.example/offline")
    proc.start()
    operator = load_key(proc.data_dir / "operator.key")
    assert proc.stop() == 0
    (proc.data_dir / "operator.key").rename(tmp_path / "operator.key")  # kept offline
    proc.start()
    try:
        async def keys() -> dict:
            async with aiohttp.ClientSession() as s, s.get(f"{proc.url}/v1/keys") as resp:
                return await resp.json()

        from ledger.signed import public_bytes

        assert b64m.b64decode(asyncio.run(keys())["operator"]) == public_bytes(operator)
        assert not (proc.data_dir / "operator.key").exists()  # not silently recreated
    finally:
        assert proc.stop() == 0


async def _intake_bytes(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(f"{url}/metrics") as resp:
        for line in (await resp.text()).splitlines():
            if line.startswith("consent_ledger_intake_bytes "):
                return int(line.split()[1])
    raise AssertionError("no consent_ledger_intake_bytes gauge")


@pytest.fixture
def small_intake_node(tmp_path: Path) -> Iterator[NodeProcess]:
    """A node whose intake budget (a setting) is 64 KiB."""
    config = tmp_path / "node.toml"
    config.write_text(f'[node]\ndata_dir = "data"\norigin = "intake.example/log"\n'
                      f"intake_bytes = {SMALL_INTAKE}\n")
    proc = NodeProcess(tmp_path / "data", "--config", str(config))
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


SMALL_INTAKE = 64 * 1024


async def test_a_body_being_read_holds_the_intake_budget_and_later_bodies_are_pushed_back(
        small_intake_node: NodeProcess, session: aiohttp.ClientSession) -> None:
    import asyncio
    import time

    node = small_intake_node
    key = await register_controller(session, node.url, node.data_dir / "operator.key")
    t = now_ms()
    batch = sign_batch([grant(consented_at=t, valid_until=t + 10**8, subject=bytes([i]) * 32)
                        for i in range(2)], key)
    host, port = node.url.removeprefix("http://").rsplit(":", 1)
    # A client that announces a body as large as the whole budget and sends it slowly.
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"POST /v1/events HTTP/1.1\r\nHost: {host}\r\n"
                 "Content-Type: application/msgpack\r\n"
                 f"Content-Length: {SMALL_INTAKE}\r\n\r\n".encode() + b"\x91")
    await writer.drain()
    try:
        deadline = time.monotonic() + 10
        while await _intake_bytes(session, node.url) < SMALL_INTAKE:
            assert time.monotonic() < deadline, "the slow body never entered intake"
            await asyncio.sleep(0.01)  # polling a condition with a deadline
        status, problem, headers = await post(session, node.url, batch)
        assert status == 503, problem
        assert problem["type"].endswith("/overloaded")
        assert "decoded" in problem["detail"]
        assert int(headers["Retry-After"]) >= 1
    finally:
        writer.close()  # the slow client gives up: its share of the budget comes back
        await writer.wait_closed()
    deadline = time.monotonic() + 10
    while await _intake_bytes(session, node.url) != 0:
        assert time.monotonic() < deadline, "an aborted body kept its intake budget"
        await asyncio.sleep(0.01)  # polling a condition with a deadline
    status, body, _ = await post(session, node.url, batch)
    assert status == 200, body
    assert all("index" in r for r in body["results"])
