"""HTTP handlers: the write endpoint, the tlog-tiles read API, JSON lookups and proofs."""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from client.wire import decode_body, decode_json_body
from ledger.errors import DecodeError, RejectedError
from ledger.signed import SignedEvent
from ledger.smt import map_key
from ledger.status import ConsentStatus
from node.decode_worker import MIN_BODY as DECODE_ELSEWHERE
from node.intake import IntakeBudget, IntakeFull
from node.leaf_index import LeafIndex
from node.problems import ProblemResponse, problem_of, raise_problem
from node.read_api import checkpoint_response, tile_response
from node.runtime import RUNTIME, NodeRuntime
from node.sequencer import Accepted, OverloadedError, UnavailableError

MSGPACK_TYPES = frozenset({"application/msgpack", "application/x-msgpack",
                           "application/vnd.msgpack"})
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,18}")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _runtime(request: web.Request) -> NodeRuntime:
    return request.app[RUNTIME]


# ---------------------------------------------------------------- writes


async def post_events(request: web.Request) -> web.Response:
    rt = _runtime(request)
    if request.content_length is not None and request.content_length > rt.config.max_body_bytes:
        raise_problem("too-large", f"the body is {request.content_length} bytes; "
                      f"at most {rt.config.max_body_bytes} are accepted")
    if rt.replica is not None and not rt.replica.is_leader:
        from node.cluster_api import forward_to_leader

        return await forward_to_leader(request, rt.replica, await request.read())
    if rt.sequencer.full:  # shed load before reading and decoding: that is the costly part
        rt.metrics.overloaded += 1
        raise_problem("overloaded", "the write queue is full; retry in 1 s",
                      headers={"Retry-After": "1"})
    try:
        with request.app[INTAKE].admit(request.content_length or rt.config.max_body_bytes):
            items, single = await _read_events(request, rt)
            verdicts = await rt.verifier.verify(rt.state, items)
            outcomes: list[Accepted | RejectedError | None] = [
                v if isinstance(v, RejectedError) else None for v in verdicts]
            todo = [(i, (items[i], bool(v))) for i, v in enumerate(verdicts)
                    if not isinstance(v, RejectedError)]
            submitted = rt.sequencer.submit([pair for _, pair in todo]) if todo else None
    except IntakeFull as exc:
        rt.metrics.overloaded += 1
        raise_problem("overloaded", f"too many requests are being decoded ({exc}); "
                      "retry in 1 s", headers={"Retry-After": "1"})
    except OverloadedError as exc:
        raise_problem("overloaded", str(exc), headers={"Retry-After": str(exc.retry_after)})
    except UnavailableError as exc:
        raise_problem("unavailable", str(exc), headers={"Retry-After": "5"})
    try:
        done = await submitted if submitted is not None else []
    except UnavailableError as exc:
        raise_problem("unavailable", str(exc), headers={"Retry-After": "5"})
    for (i, _), outcome in zip(todo, done, strict=True):
        outcomes[i] = outcome
    results = [_result(o) for o in outcomes]
    rt.metrics.rejected += sum(1 for o in outcomes if isinstance(o, RejectedError))
    checkpoint = rt.sequencer.checkpoint.decode()
    if single:
        result = results[0]
        if "problem" in result:
            raise ProblemResponse(result["problem"])
        return web.json_response({**result, "checkpoint": checkpoint})
    return web.json_response({"results": results, "checkpoint": checkpoint})


def _result(outcome: Accepted | RejectedError | None) -> dict[str, Any]:
    if isinstance(outcome, Accepted):
        return {"index": outcome.index, "event_id": b64(outcome.event_id),
                "leaf_hash": b64(outcome.leaf_hash), "duplicate": outcome.duplicate}
    assert outcome is not None
    return {"problem": problem_of(outcome)}


async def _read_events(request: web.Request, rt: NodeRuntime) -> tuple[list[SignedEvent], bool]:
    media = request.content_type
    if media not in MSGPACK_TYPES and media != "application/json":
        raise_problem("unsupported-media-type",
                      f"send application/msgpack or application/json, not {media!r}")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise_problem("too-large", f"at most {rt.config.max_body_bytes} bytes are accepted")
    decoded: list[SignedEvent] | SignedEvent | None = None
    if media != "application/json" and rt.decoder is not None \
            and len(body) >= DECODE_ELSEWHERE:
        decoded = await rt.decoder.decode(body, rt.config.max_batch_items)
    try:
        if decoded is None:  # small, refused (decoding again names why), or no child
            # One body per turn of the event loop: the loop runs every handler that is
            # ready in one turn, so 84 bodies decoded side by side (the intake budget's
            # worth) held a cluster leader's loop for 700 ms, its heartbeats with it, and
            # the followers elected another.
            async with request.app[DECODING_TURN]:
                decode = decode_json_body if media == "application/json" else decode_body
                decoded = decode(body, max_items=rt.config.max_batch_items)
                await asyncio.sleep(0)  # the turn lasts until the loop has run once more
    except DecodeError as exc:
        raise ProblemResponse(problem_of(exc)) from None
    if isinstance(decoded, SignedEvent):
        return [decoded], True
    return list(decoded), False


# ---------------------------------------------------------------- tlog-tiles reads


class _ServedByNode:
    """The node's committed log, as node/read_api.py serves it."""

    def __init__(self, rt: NodeRuntime) -> None:
        self._rt = rt

    @property
    def served_size(self) -> int:
        return self._rt.sequencer.committed_size

    @property
    def served_checkpoint(self) -> bytes:
        return self._rt.sequencer.checkpoint

    def tile_hashes(self, level: int, index: int, width: int) -> bytes:
        return self._rt.tree.tile_hashes(level, index, width)

    async def entry_data(self, start: int, end: int) -> list[bytes]:
        return await self._rt.storage.entry_data(start, end)


async def get_checkpoint(request: web.Request) -> web.Response:
    return await checkpoint_response(_ServedByNode(_runtime(request)))


async def get_tile(request: web.Request) -> web.Response:
    return await tile_response(_ServedByNode(_runtime(request)), request.match_info["path"])


# ---------------------------------------------------------------- JSON lookups and proofs


def _decimal(request: web.Request, name: str) -> int:
    raw = request.query.get(name)
    if raw is None:
        raise_problem("out-of-range", f"the query parameter {name!r} is required")
    if not _DECIMAL.fullmatch(raw):
        raise_problem("out-of-range", f"{name}={raw!r} is not a canonical decimal number")
    return int(raw)


def _hash_param(raw: str, name: str) -> bytes:
    try:
        if re.fullmatch(r"[0-9a-f]{64}", raw):
            return bytes.fromhex(raw)
        value = base64.b64decode(raw.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        value = b""
    if len(value) != 32:
        raise_problem("out-of-range", f"{name} must be a 32-byte hash in hex or base64")
    return value


async def _catch_up(rt: NodeRuntime, size: int) -> None:
    """A cluster member a moment behind the checkpoint a client holds waits a little."""
    if rt.replica is not None and size > rt.sequencer.committed_size:
        await rt.sequencer.wait_for_size(size, timeout=2.0)


async def _entry_response(rt: NodeRuntime, index: int) -> web.Response:
    await _catch_up(rt, index + 1)
    if index >= rt.sequencer.committed_size:
        raise_problem("not-found", f"no entry {index}; the log has "
                      f"{rt.sequencer.committed_size} entries")
    (data,) = await rt.storage.entry_data(index, index + 1)
    return web.json_response({"index": index, "leaf_hash": b64(rt.tree.hash_at(0, index)),
                              "entry": b64(data)})


async def get_entry(request: web.Request) -> web.Response:
    raw = request.match_info["index"]
    if not _DECIMAL.fullmatch(raw):
        raise_problem("out-of-range", f"{raw!r} is not an entry index")
    return await _entry_response(_runtime(request), int(raw))


async def find_entry(request: web.Request) -> web.Response:
    rt = _runtime(request)
    raw = request.query.get("leaf_hash")
    if raw is None:
        raise_problem("out-of-range", "give ?leaf_hash=<hex or base64>")
    leaf = _hash_param(raw, "leaf_hash")
    while True:
        tree = rt.tree
        index = await request.app[LEAVES].find(tree, leaf)
        if tree is rt.tree:  # else the ledger was reloaded meanwhile: look again
            break
    if index is None:
        raise_problem("not-found", "no entry has that leaf hash")
    return await _entry_response(rt, index)


async def get_event(request: web.Request) -> web.Response:
    rt = _runtime(request)
    event_id = _hash_param(request.match_info["event_id"], "event_id")
    index = rt.state.index_of(event_id)  # the ledger's own index of events, in memory
    if index is not None:
        await _catch_up(rt, index + 1)
        if rt.state.index_of(event_id) != index:  # overwritten meanwhile (a new leader's)
            index = None
    if index is None:
        raise_problem("not-found", "no entry holds that event")
    return await _entry_response(rt, index)


async def get_inclusion(request: web.Request) -> web.Response:
    rt = _runtime(request)
    index, size = _decimal(request, "index"), _decimal(request, "size")
    await _catch_up(rt, size)
    if not index < size <= rt.sequencer.committed_size:
        raise_problem("out-of-range", f"need index < size <= {rt.sequencer.committed_size}")
    proof = rt.tree.inclusion_proof(index, size)
    return web.json_response({"index": index, "size": size, "proof": [b64(h) for h in proof]})


async def get_consistency(request: web.Request) -> web.Response:
    rt = _runtime(request)
    old, new = _decimal(request, "from"), _decimal(request, "to")
    await _catch_up(rt, new)
    if not 0 < old <= new <= rt.sequencer.committed_size:
        raise_problem("out-of-range", f"need 0 < from <= to <= {rt.sequencer.committed_size}")
    proof = rt.tree.consistency_proof(old, new)
    return web.json_response({"from": old, "to": new, "proof": [b64(h) for h in proof]})


async def get_status(request: web.Request) -> web.Response:
    """The current status of (controller, subject, purpose), proven.

    The answer holds the status map proof against the status root that closes the
    checkpoint (its last entry), that entry with its inclusion proof, and the checkpoint:
    a client checks all of it (client/status.py) and trusts none of it.
    """
    rt = _runtime(request)
    controller = request.query.get("controller", "")
    purpose = request.query.get("purpose", "")
    if not controller or not purpose:
        raise_problem("out-of-range", "give ?controller=&subject=&purpose=")
    subject = _hash_param(request.query.get("subject", ""), "subject")
    if rt.replica is not None and not rt.replica.is_leader:
        # Only the leader's map is always the one its latest checkpoint commits to.
        from node.cluster_api import forward_to_leader

        return await forward_to_leader(request, rt.replica, None)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 2.0
    while True:
        async with rt.sequencer.map_as_published():
            sequencer = rt.sequencer
            if not sequencer.healthy:
                raise_problem("unavailable", sequencer.why_suspended,
                              headers={"Retry-After": "5"})
            # Nothing awaits from here to the proofs: map, tree and checkpoint are those of
            # one committed batch.
            size = sequencer.committed_size
            if 0 < size == rt.tree.size:
                checkpoint = sequencer.checkpoint
                proof = rt.state.map.prove(map_key(controller, subject, purpose))
                latest = rt.state.statuses.get((controller, subject, purpose))
                inclusion = rt.tree.inclusion_proof(size - 1, size)
                break
        # A member elected moments ago holds entries (its predecessor's last ones, at least
        # the genesis) that no checkpoint of its own covers yet: it publishes one shortly.
        left = deadline - loop.time()
        if left <= 0 or not await rt.sequencer.wait_for_size(max(rt.tree.size, 1), left):
            raise_problem("no-leader", "this member has just been elected and has not yet "
                          "published a checkpoint covering its log; retry shortly",
                          headers={"Retry-After": "1"})
    (root_entry,) = await rt.storage.entry_data(size - 1, size)  # immutable once written
    now = time.time_ns() // 1_000_000
    return web.json_response({
        "status": latest.status(now) if latest else ConsentStatus.UNKNOWN.value,
        "value": b64(latest.encode()) if latest else None,
        "map_proof": b64(proof.encode()),
        "root_index": size - 1,
        "root_entry": b64(root_entry),
        "inclusion_proof": [b64(h) for h in inclusion],
        "checkpoint": checkpoint.decode(),
    })


async def get_keys(request: web.Request) -> web.Response:
    rt = _runtime(request)
    cosigners = [] if rt.replica is None else [m.key for m in rt.replica.cluster.members]
    operator = rt.state.keys[rt.state.operator_key_id].public_key \
        if rt.state.operator_key_id is not None else rt.operator_public
    body: dict[str, Any] = {"origin": rt.origin, "log": rt.log_vkey, "operator": b64(operator),
                            "cosigners": cosigners}
    if rt.replica is not None:
        body["policy"] = rt.replica.cluster.policy_text()
    return web.json_response(body)


# ---------------------------------------------------------------- operations


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    rt = _runtime(request)
    if not rt.sequencer.healthy:
        raise_problem("unavailable", rt.sequencer.why_suspended, headers={"Retry-After": "5"})
    if rt.replica is not None and rt.replica.failed is not None:
        raise_problem("unavailable", f"this member stopped replicating: {rt.replica.failed}")
    return web.json_response({"status": "ready", "size": rt.sequencer.committed_size})


async def metrics(request: web.Request) -> web.Response:
    rt = _runtime(request)
    return web.Response(text=rt.metrics.render(), content_type="text/plain",
                        headers={"Cache-Control": "no-store"})


_OPENAPI = Path(__file__).with_name("openapi.yaml")


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=_OPENAPI.read_bytes(), content_type="application/yaml")


INTAKE = web.AppKey("intake", IntakeBudget)
DECODING_TURN = web.AppKey("decoding_turn", asyncio.Lock)
LEAVES = web.AppKey("leaves", LeafIndex)


def add_routes(app: web.Application, *, intake_bytes: int) -> None:
    def report(in_use: int) -> None:
        if RUNTIME in app:
            app[RUNTIME].metrics.intake_bytes = in_use

    app[INTAKE] = IntakeBudget(intake_bytes, report=report)
    app[DECODING_TURN] = asyncio.Lock()
    app[LEAVES] = LeafIndex()
    app.router.add_get("/openapi.yaml", openapi)
    app.router.add_post("/v1/events", post_events)
    app.router.add_get("/checkpoint", get_checkpoint)
    app.router.add_get("/tile/{path:.+}", get_tile)
    app.router.add_get("/v1/entries/{index}", get_entry)
    app.router.add_get("/v1/entries", find_entry)
    app.router.add_get("/v1/events/{event_id}", get_event)
    app.router.add_get("/v1/proofs/inclusion", get_inclusion)
    app.router.add_get("/v1/proofs/consistency", get_consistency)
    app.router.add_get("/v1/keys", get_keys)
    app.router.add_get("/v1/status", get_status)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
