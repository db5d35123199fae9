"""The client's side of the wire: request bodies both ways with every strict refusal, and a
LogClient that proves what a (scripted, sometimes lying) node answers."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgpack
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from factories import grant, revoke

from client.demo import DEMO_CONTROLLER, Workload
from client.errors import PROBLEM_BASE, LogVerificationError, ProblemError
from client.log_client import Accepted, LogClient, Rejected
from client.wire import (
    MAX_BATCH_ITEMS,
    decode_body,
    decode_json_body,
    encode_batch,
    from_json,
    to_json,
)
from ledger import merkle
from ledger.checkpoint import Checkpoint, sign_checkpoint
from ledger.codec import pack
from ledger.errors import (
    DecodeError,
    DuplicateKeyError,
    FieldTypeError,
    FieldValueError,
    MalformedError,
    MissingFieldError,
    NonCanonicalError,
    OversizeError,
    RejectedError,
    UnknownFieldError,
)
from ledger.events import Genesis
from ledger.note import ALG_ED25519, Ed25519Signer, format_verifier_key
from ledger.signed import SignedEvent, public_bytes, sign_batch, sign_event, token_revocation
from ledger.state import LedgerState
from ledger.tiles import encode_entry_bundle, parse_tile_path
from ledger.tree import MerkleTree

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def single() -> SignedEvent:
    return sign_event(grant(), KEY)


@pytest.fixture(scope="module")
def batch() -> list[SignedEvent]:
    return sign_batch([grant(retention_days=d) for d in range(1, 6)], KEY)


@pytest.fixture(scope="module")
def withdrawal() -> SignedEvent:
    return token_revocation(revoke(), b"t" * 32)


@pytest.fixture(scope="module")
def mixed(single: SignedEvent, batch: list[SignedEvent],
          withdrawal: SignedEvent) -> list[SignedEvent]:
    return [single, *batch, withdrawal]


def expect(exc: type[DecodeError], field: str | None, fn: Any, *args: Any, **kw: Any) -> None:
    with pytest.raises(exc) as info:
        fn(*args, **kw)
    assert info.value.field == field, str(info.value)


# ---------------------------------------------------------------- round trips


def test_json_round_trip_of_each_envelope_form(mixed: list[SignedEvent]) -> None:
    for signed in mixed:
        again = from_json(json.loads(json.dumps(to_json(signed))))
        assert again == signed
        assert again.encode() == signed.encode()


def test_json_leaves_absent_members_out(single: SignedEvent, withdrawal: SignedEvent) -> None:
    assert set(to_json(single)) == {"event", "signer", "sig"}
    assert set(to_json(withdrawal)) == {"event", "token"}


def test_json_batch_member_has_the_documented_shape(batch: list[SignedEvent]) -> None:
    obj = to_json(batch[3])
    assert obj["batch"]["size"] == 5 and obj["batch"]["index"] == 3
    assert all(len(base64.b64decode(h)) == 32 for h in obj["batch"]["path"])


def test_json_body_one_or_many(mixed: list[SignedEvent], single: SignedEvent) -> None:
    assert decode_json_body(json.dumps([to_json(s) for s in mixed]).encode()) == mixed
    assert decode_json_body(json.dumps(to_json(single)).encode()) == single


def test_msgpack_body_one_or_many(mixed: list[SignedEvent], single: SignedEvent) -> None:
    assert decode_body(encode_batch(mixed)) == mixed
    assert decode_body(single.encode()) == single


def test_msgpack_batch_is_an_array_of_canonical_envelopes(mixed: list[SignedEvent]) -> None:
    items = msgpack.unpackb(encode_batch(mixed))
    assert [pack(i) for i in items] == [s.encode() for s in mixed]


def test_encode_batch_refuses_empty_and_oversized(single: SignedEvent) -> None:
    with pytest.raises(ValueError):
        encode_batch([])
    with pytest.raises(ValueError):
        encode_batch([single] * (MAX_BATCH_ITEMS + 1))


# ---------------------------------------------------------------- JSON refusals


def _with(obj: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(obj))
    for k, v in changes.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def test_json_refuses_unknown_and_missing_members(single: SignedEvent,
                                                  batch: list[SignedEvent]) -> None:
    obj = to_json(single)
    expect(UnknownFieldError, "extra", from_json, _with(obj, extra=1))
    expect(MissingFieldError, "event", from_json, _with(obj, event=None))
    expect(FieldValueError, "signer", from_json, _with(obj, signer=None))
    b = to_json(batch[0])
    expect(UnknownFieldError, "batch.root", from_json,
           _with(b, batch={**b["batch"], "root": b64(bytes(32))}))
    expect(MissingFieldError, "batch.path", from_json,
           _with(b, batch={"size": 5, "index": 0}))


@pytest.mark.parametrize("member, value, error", [
    ("event", 17, FieldTypeError),
    ("event", None, MissingFieldError),  # None removes the member
    ("signer", ["AAAA"], FieldTypeError),
    ("sig", b64(bytes(63)), FieldValueError),
    ("signer", b64(bytes(9)), FieldValueError),
    ("sig", "!!not base64!!", FieldValueError),
    ("signer", "AAAAAAAAAAA", FieldValueError),  # unpadded
    ("signer", "AAAAAAAAAAB=", NonCanonicalError),  # stray bits in the last character
    ("signer", "AAAA AAAAAA=", FieldValueError),
    ("signer", "ＡＡＡＡＡＡＡＡＡＡＡ=", FieldValueError),  # not ASCII
    ("event", "A" * 20_000, OversizeError),
])
def test_json_refuses_bad_member_values(single: SignedEvent, member: str, value: Any,
                                        error: type[DecodeError]) -> None:
    expect(error, member, from_json, _with(to_json(single), **{member: value}))


@pytest.mark.parametrize("change, field, error", [
    ({"size": "5"}, "batch.size", FieldTypeError),
    ({"size": True}, "batch.size", FieldTypeError),
    ({"index": 5.0}, "batch.index", FieldTypeError),
    ({"index": 5}, "batch.index", FieldValueError),  # not below size
    ({"path": "x"}, "batch.path", FieldTypeError),
    ({"path": [1]}, "batch.path[0]", FieldTypeError),
    ({"path": [b64(bytes(31))]}, "batch.path[0]", FieldValueError),
])
def test_json_refuses_bad_batch_paths(batch: list[SignedEvent], change: dict[str, Any],
                                      field: str, error: type[DecodeError]) -> None:
    b = to_json(batch[0])
    expect(error, field, from_json, _with(b, batch={**b["batch"], **change}))


def test_json_refuses_non_objects() -> None:
    expect(FieldTypeError, None, from_json, [])
    expect(FieldTypeError, "[4]", from_json, "x", path="[4]")
    expect(FieldTypeError, "batch", from_json, {"event": "", "batch": []})


def test_json_names_fields_inside_the_event(single: SignedEvent) -> None:
    wire = grant().to_wire()
    wire["purposes"] = ["marketing"]
    obj = _with(to_json(single), event=b64(pack(wire)))
    expect(FieldValueError, "event.purposes[0]", from_json, obj)
    expect(FieldValueError, "[2].event.purposes[0]", from_json, obj, path="[2]")
    expect(MalformedError, "event", from_json, _with(obj, event=b64(b"\xc1")))
    wide = _with(obj, event=b64(msgpack.packb({"kind": "nope"})))
    expect(FieldValueError, "event.kind", from_json, wide)


def test_json_refuses_token_with_signature(withdrawal: SignedEvent,
                                           single: SignedEvent) -> None:
    obj = {**to_json(withdrawal), "signer": to_json(single)["signer"]}
    expect(FieldValueError, "token", from_json, obj)
    expect(FieldValueError, "token", from_json, {**to_json(single), "token": b64(bytes(32))})


@pytest.mark.parametrize("body, error, field", [
    (b"{", MalformedError, None),
    (b"\xff", MalformedError, None),
    (b"[]", FieldValueError, None),
    (b'{"event": NaN}', MalformedError, None),
    (b'{"event": "", "event": ""}', DuplicateKeyError, "event"),
    (b"[" * 100_000, MalformedError, None),
])
def test_json_body_refusals(body: bytes, error: type[DecodeError], field: str | None) -> None:
    expect(error, field, decode_json_body, body)


def test_json_body_item_count(single: SignedEvent) -> None:
    body = json.dumps([to_json(single)] * 4).encode()
    expect(OversizeError, None, decode_json_body, body, max_items=3)
    bad = json.dumps([to_json(single), {"event": 1}]).encode()
    expect(FieldTypeError, "[1].event", decode_json_body, bad)


# ---------------------------------------------------------------- msgpack refusals


def test_msgpack_refuses_trailing_bytes_and_garbage(mixed: list[SignedEvent]) -> None:
    expect(MalformedError, None, decode_body, encode_batch(mixed) + b"\x00")
    expect(MalformedError, None, decode_body, b"\xc1")
    expect(FieldTypeError, None, decode_body, pack(7))
    expect(FieldTypeError, None, decode_body, pack("events"))


def test_msgpack_refuses_empty_bodies() -> None:
    expect(FieldValueError, None, decode_body, pack([]))
    expect(FieldValueError, None, decode_body, pack({}))


def test_msgpack_item_count(single: SignedEvent) -> None:
    expect(OversizeError, None, decode_body, encode_batch([single] * 4), max_items=3)
    body = pack([single.to_wire()] * (MAX_BATCH_ITEMS + 1))
    expect(OversizeError, None, decode_body, body)


def test_msgpack_names_the_item_and_field(mixed: list[SignedEvent]) -> None:
    wires = [s.to_wire() for s in mixed]
    expect(UnknownFieldError, "[1].extra", decode_body,
           pack([wires[0], {**wires[1], "extra": 1}]))
    expect(FieldTypeError, "[1]", decode_body, pack([wires[0], [1, 2]]))
    expect(MissingFieldError, "[0].event", decode_body,
           pack([{k: v for k, v in wires[0].items() if k != "event"}]))
    expect(FieldValueError, "[0].sig", decode_body, pack([{**wires[0], "sig": bytes(3)}]))
    bad_event = grant().to_wire()
    bad_event["purposes"] = ["marketing"]
    expect(FieldValueError, "[1].event.purposes[0]", decode_body,
           pack([wires[0], {**wires[0], "event": pack(bad_event)}]))
    expect(FieldValueError, "event.purposes[0]", decode_body,
           pack({**wires[0], "event": pack(bad_event)}))
    expect(FieldValueError, "[2].batch.index", decode_body,
           pack([wires[0], wires[1], {**wires[2], "batch": {**wires[2]["batch"], "index": 9}}]))


def test_msgpack_refuses_keys_out_of_order(single: SignedEvent) -> None:
    wire = single.to_wire()
    backwards = dict(reversed(list(wire.items())))
    expect(NonCanonicalError, "[0].signer", decode_body, pack([backwards]))


def test_msgpack_refuses_wide_encodings(mixed: list[SignedEvent]) -> None:
    canonical = encode_batch(mixed)
    # The same array with an array16 header instead of a fixarray one.
    wide_header = b"\xdc" + len(mixed).to_bytes(2, "big") + canonical[1:]
    expect(NonCanonicalError, None, decode_body, wide_header)
    # batch.size as a uint16 instead of a positive fixint, inside item 1.
    item = mixed[1].encode()
    wide_item = item.replace(b"\xa4size\x05", b"\xa4size\xcd\x00\x05", 1)
    assert wide_item != item
    body = canonical.replace(item, wide_item, 1)
    expect(NonCanonicalError, "[1]", decode_body, body)
    expect(NonCanonicalError, None, decode_body, wide_item)


# ---------------------------------------------------------------- LogClient, scripted node
#
# A node built from the ledger's own parts, with switches that make it lie, so that the
# client's checks are tested without node/ (integration tests against it come later).

ORIGIN = "client.test/log"


class ScriptedNode:
    def __init__(self) -> None:
        self.operator = Ed25519PrivateKey.generate()
        log_key = Ed25519PrivateKey.generate()
        self.signer = Ed25519Signer.from_private_key(ORIGIN, log_key)
        self.vkey = format_verifier_key(ORIGIN, ALG_ED25519, public_bytes(log_key))
        self.state, self.tree, self.entries = LedgerState(), MerkleTree(), []
        self.lie: str | None = None
        self.busy = 0  # how many requests to answer 503 first
        genesis = Genesis(origin=ORIGIN, operator_key=public_bytes(self.operator),
                          created_at=now_ms(), max_skew_ms=60_000)
        self._append(sign_event(genesis, self.operator))

    def _append(self, signed: SignedEvent) -> tuple[int, bool]:
        index = self.state.index_of(signed.id)
        if index is not None:
            return index, True
        entry = self.state.admit(signed, now_ms(), signature_verified=False)
        self.entries.append(entry.encoded)
        return self.tree.append(entry.leaf_hash), False

    def checkpoint(self) -> bytes:
        root = self.tree.root()
        if self.lie == "fork":
            root = bytes(32)
        return sign_checkpoint(Checkpoint(ORIGIN, self.tree.size, root), self.signer)

    async def post_events(self, request: web.Request) -> web.Response:
        if self.busy:
            self.busy -= 1
            return web.json_response({"type": PROBLEM_BASE + "overloaded", "status": 503},
                                     status=503, headers={"Retry-After": "0"})
        items = decode_body(await request.read())
        assert isinstance(items, list)
        results: list[dict[str, Any]] = []
        for signed in items:
            try:
                index, duplicate = self._append(signed)
            except RejectedError as exc:
                results.append({"problem": {"type": PROBLEM_BASE + exc.code, "title": "",
                                            "status": 409, "detail": str(exc)}})
                continue
            leaf = self.tree.hash_at(0, index)
            results.append({"index": index, "event_id": b64(signed.id),
                            "leaf_hash": b64(bytes(32) if self.lie == "leaf" else leaf),
                            "duplicate": duplicate})
        note = self.checkpoint()
        if self.lie == "log-key":
            other = Ed25519Signer.from_private_key(ORIGIN, Ed25519PrivateKey.generate())
            note = sign_checkpoint(Checkpoint(ORIGIN, self.tree.size, self.tree.root()), other)
        if self.lie == "event-id":
            results[0]["event_id"] = b64(bytes(32))
        return web.json_response({"results": results, "checkpoint": note.decode()})

    async def get_inclusion(self, request: web.Request) -> web.Response:
        index, size = int(request.query["index"]), int(request.query["size"])
        proof = self.tree.inclusion_proof(index, size)
        if self.lie == "proof" and proof:
            proof[0] = bytes(32)
        return web.json_response({"index": index, "size": size,
                                  "proof": [b64(h) for h in proof]})

    async def get_consistency(self, request: web.Request) -> web.Response:
        old, new = int(request.query["from"]), int(request.query["to"])
        proof = self.tree.consistency_proof(old, new)
        return web.json_response({"from": old, "to": new, "proof": [b64(h) for h in proof]})

    async def get_tile(self, request: web.Request) -> web.Response:
        tile = parse_tile_path("tile/" + request.match_info["path"])
        start = tile.index * 256
        entries = self.entries[start:start + tile.width]
        if self.lie == "entry":
            entries = [entries[0], *entries[:-1]]  # every entry one place late
        return web.Response(body=encode_entry_bundle(entries))

    async def get_entry(self, request: web.Request) -> web.Response:
        index = int(request.match_info["index"])
        return web.json_response({"index": index, "leaf_hash": b64(self.tree.hash_at(0, index)),
                                  "entry": b64(self.entries[index])})

    async def get_checkpoint(self, request: web.Request) -> web.Response:
        return web.Response(body=self.checkpoint(), content_type="text/plain")

    async def get_keys(self, request: web.Request) -> web.Response:
        return web.json_response({"origin": ORIGIN, "log": self.vkey})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/events", self.post_events)
        app.router.add_get("/v1/proofs/inclusion", self.get_inclusion)
        app.router.add_get("/v1/proofs/consistency", self.get_consistency)
        app.router.add_get("/v1/entries/{index}", self.get_entry)
        app.router.add_get("/tile/{path:.+}", self.get_tile)
        app.router.add_get("/checkpoint", self.get_checkpoint)
        app.router.add_get("/v1/keys", self.get_keys)
        return app


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[ScriptedNode, LogClient, Workload]]:
    node = ScriptedNode()
    server = TestServer(node.app())
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    async with aiohttp.ClientSession() as session:
        vkey = await LogClient.fetch_log_key(url, session)
        client = LogClient(url, log_key=vkey, session=session, max_retries=2)
        workload = Workload(DEMO_CONTROLLER, Ed25519PrivateKey.generate())
        (registered,) = await client.submit([workload.register(node.operator)])
        assert isinstance(registered, Accepted) and registered.index == 1
        yield node, client, workload
    await server.close()


async def test_client_proves_every_acceptance(scripted) -> None:  # type: ignore[no-untyped-def]
    node, client, workload = scripted
    batch = workload.next_batch(40)
    results = await client.submit(batch.signed)
    assert all(isinstance(r, Accepted) for r in results)
    accepted = [r for r in results if isinstance(r, Accepted)]
    assert [r.index for r in accepted] == list(range(2, 42))
    assert client.latest is not None and client.latest.size == node.tree.size == 42
    for r in accepted[:3]:
        merkle.verify_inclusion(r.leaf_hash, r.index, r.checkpoint.size, r.proof,
                                r.checkpoint.root)
        assert (await client.entry(r.index, r.checkpoint)).signed.id == r.event_id
    again = await client.submit(batch.signed[:2])
    assert [(r.index, r.duplicate) for r in again] == [(2, True), (3, True)]  # type: ignore[union-attr]


async def test_client_reports_rejections_as_problems(scripted) -> None:  # type: ignore[no-untyped-def]
    _, client, workload = scripted
    unknown = token_revocation(revoke(controller=DEMO_CONTROLLER, revoked_at=now_ms()),
                               b"t" * 32)
    first, second = await client.submit([*workload.next_batch(1).signed, unknown])
    assert isinstance(first, Accepted)
    assert isinstance(second, Rejected) and second.problem.code == "unknown-grant"


async def test_client_retries_a_busy_node(scripted) -> None:  # type: ignore[no-untyped-def]
    node, client, workload = scripted
    node.busy = 2
    assert isinstance((await client.submit(workload.next_batch(1).signed))[0], Accepted)
    node.busy = 3  # one more than max_retries
    with pytest.raises(ProblemError) as info:
        await client.submit(workload.next_batch(1).signed)
    assert info.value.status == 503 and info.value.code == "overloaded"


@pytest.mark.parametrize("lie", ["proof", "leaf", "event-id", "entry", "log-key", "fork"])
async def test_client_catches_a_lying_node(scripted, lie: str) -> None:  # type: ignore[no-untyped-def]
    node, client, workload = scripted
    node.lie = lie
    with pytest.raises(LogVerificationError) as info:
        await client.submit(workload.next_batch(5).signed)
    assert info.value.checkpoint is not None  # the signed evidence is kept


async def test_client_catches_a_fork_between_checkpoints(scripted) -> None:  # type: ignore[no-untyped-def]
    node, client, _ = scripted
    honest = await client.checkpoint()
    node.lie = "fork"
    with pytest.raises(LogVerificationError) as info:
        await client.checkpoint()
    evidence = {info.value.checkpoint, info.value.other_checkpoint}
    assert honest.note in evidence and len(evidence) == 2  # both signed notes of the fork
