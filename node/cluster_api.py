"""The cluster's HTTP surface: peer messages, cosign requests, forwarding to the leader."""

from __future__ import annotations

import base64
import binascii
import json
import time

import aiohttp
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ledger.errors import DecodeError
from ledger.raft.wire import decode_messages
from node.config import ConfigError
from node.cosigning import CosignError
from node.peer_auth import PeerAuthError, check_request
from node.peers import COSIGN_PATH, RAFT_PATH
from node.problems import raise_problem
from node.replica import Replica
from node.runtime import RUNTIME
from node.sequencer import UnavailableError

MAX_PEER_BODY = 64 * 1024 * 1024
_FORWARDED = "Consent-Ledger-Forwarded-By"
_HOP_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})


def _replica(request: web.Request) -> Replica:
    replica = request.app[RUNTIME].replica
    if replica is None:
        raise_problem("not-found", "this node is not a cluster member")
    assert replica is not None
    return replica


async def _authenticated_body(request: web.Request, replica: Replica) -> tuple[str, bytes]:
    if request.content_length is not None and request.content_length > MAX_PEER_BODY:
        raise_problem("too-large", "peer message too large")
    # Not request.read(): it caps bodies at the clients' max_body_bytes, and one Raft
    # entry (a batch of up to CLUSTER_MAX_BATCH events) may be larger than that.
    received = bytearray()
    async for chunk in request.content.iter_chunked(1 << 16):
        received += chunk
        if len(received) > MAX_PEER_BODY:
            raise_problem("too-large", "peer message too large")
    body = bytes(received)
    try:
        src = check_request(replica.peer_keys, me=replica.member, path=request.path,
                            headers=request.headers, body=body)
    except PeerAuthError as exc:
        raise_problem("unauthorized-peer", str(exc))
    return src, body


async def post_raft(request: web.Request) -> web.Response:
    replica = _replica(request)
    src, body = await _authenticated_body(request, replica)
    try:
        messages = decode_messages(body)
    except DecodeError as exc:
        raise_problem("malformed", f"peer messages: {exc}")
    replica.receive(src, messages)
    return web.Response(status=204)


async def post_cosign(request: web.Request) -> web.Response:
    replica = _replica(request)
    src, body = await _authenticated_body(request, replica)
    if src != replica.raft.leader_id:
        raise_problem("not-leader", f"{src} is not the leader this member follows")
    try:
        line = await replica.cosigner.handle(body)
    except CosignError as exc:
        raise_problem("cosign-refused", str(exc))
    if not line:
        return web.Response(status=204)
    return web.Response(body=line, content_type="text/plain", charset="utf-8")


async def get_cluster(request: web.Request) -> web.Response:
    replica = _replica(request)
    raft = replica.raft
    # The leader's view of every other voter's log: how much of the leader's it holds
    # (match) and how far behind it is (lag, in Raft entries), so an operator sees a new
    # voter caught up before removing an old one. Only the leader knows; others: null.
    replication = [{"member": member, "match": match, "lag": raft.last_index - match}
                   for member, match in raft.voter_match_indexes().items()]
    return web.json_response({
        "member": replica.member, "role": raft.role, "term": raft.term,
        "leader": raft.leader_id, "raft_commit": raft.commit_index,
        "voters": sorted(raft.membership.voters),
        "replication": replication if raft.role == "leader" else None,
        "raft_first": raft.log.first_index, "raft_last": raft.last_index,
        "committed_size": replica.committed_size,
        "published_size": replica.published_size,
        "checkpoint_size": request.app[RUNTIME].sequencer.committed_size,
        "members": [{"id": m.id, "url": m.url, "key": m.key} for m in replica.cluster.members],
    })


async def forward_to_leader(request: web.Request, replica: Replica,
                            body: bytes | None, *, handed_over: bool = False) -> web.Response:
    """Relay a client's request to the leader, so that any member takes writes.

    A request relays at most once, so that members never bounce it between them; one
    that this member took as leader and then handed over (handed_over) relays once more."""
    leader = replica.leader_url()
    if leader is None or (request.headers.get(_FORWARDED) and not handed_over):
        raise_problem("no-leader", "the cluster has no leader right now (an election is "
                      "under way); retry shortly", headers={"Retry-After": "1"})
    assert leader is not None
    headers = {k: v for k, v in request.headers.items()
               if k.lower() not in _HOP_HEADERS and k.lower() != _FORWARDED.lower()}
    headers[_FORWARDED] = replica.member
    session = replica.session
    try:
        async with session.request(request.method, leader + request.path_qs, data=body,
                                   headers=headers,
                                   timeout=aiohttp.ClientTimeout(total=30)) as resp:
            data = await resp.read()
            out = {k: v for k, v in resp.headers.items()
                   if k.lower() not in _HOP_HEADERS and k.lower() != "content-encoding"}
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise_problem("no-leader", f"the leader at {leader} did not answer ({exc}); retry",
                      headers={"Retry-After": "1"})
    # The client will likely read back through this member what the leader's checkpoint
    # covers (proofs, tiles): serve nothing older than what it was just told.
    size = _checkpoint_size(data) if resp.status == 200 else None
    if size is not None:
        await request.app[RUNTIME].sequencer.wait_for_size(size, timeout=2.0)
    return web.Response(status=resp.status, body=data, headers=out)


def _checkpoint_size(body: bytes) -> int | None:
    try:
        note = json.loads(body).get("checkpoint")
        return int(note.split("\n")[1]) if isinstance(note, str) else None
    except (ValueError, AttributeError, IndexError):
        return None


MEMBERSHIP_PATH = "/v1/cluster/membership"
OPERATOR_SIGNATURE = "Consent-Ledger-Operator-Signature"
MEMBERSHIP_DOMAIN = b"consent-ledger/membership/v1\x00"
MEMBERSHIP_MAX_AGE_MS = 5 * 60 * 1000


def membership_message(origin: str, body: bytes) -> bytes:
    """What the operator signs to change the cluster's voters."""
    return MEMBERSHIP_DOMAIN + origin.encode() + b"\n" + body


async def post_membership(request: web.Request) -> web.Response:
    """Add or remove one voter, on the operator's signed word (JSON {"add"|"remove", "at"})."""
    rt = request.app[RUNTIME]
    replica = _replica(request)
    body = await request.read()
    if not replica.is_leader:
        return await forward_to_leader(request, replica, body)
    operator_id = rt.state.operator_key_id
    if operator_id is None:
        raise_problem("no-genesis", "the log has no operator key yet")
    try:
        sig = base64.b64decode(request.headers.get(OPERATOR_SIGNATURE, ""), validate=True)
        Ed25519PublicKey.from_public_bytes(rt.state.keys[operator_id].public_key).verify(
            sig, membership_message(rt.origin, body))
    except (binascii.Error, ValueError, InvalidSignature):
        raise_problem("not-operator", f"a membership change needs the {OPERATOR_SIGNATURE} "
                      "header: the operator key's signature over the request")
    try:
        change = json.loads(body)
        at = change["at"]
        add, remove = change.get("add"), change.get("remove")
        if not isinstance(at, int) or (add is None) == (remove is None) \
                or not isinstance(add or remove, str) or set(change) - {"at", "add", "remove"}:
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise_problem("malformed", 'give {"add": "<member>"} or {"remove": "<member>"} '
                      'and "at": the time in ms')
    if abs(time.time_ns() // 1_000_000 - at) > MEMBERSHIP_MAX_AGE_MS:
        raise_problem("clock-skew", "the signed request is too old (or from the future): "
                      "sign it anew")
    voters_now = replica.raft.membership.voters
    if remove == replica.member and remove in voters_now and len(voters_now) > 1:
        # A leader that removed itself would lead, unable to vote, until the change
        # commits; instead the next leader, chosen now, removes it.
        try:
            await replica.hand_over_leadership()
        except UnavailableError as exc:
            raise_problem("no-leader", str(exc), headers={"Retry-After": "1"})
        return await forward_to_leader(request, replica, body, handed_over=True)
    try:
        voters = await replica.change_membership(add=add, remove=remove)
    except ConfigError as exc:
        raise_problem("not-found", str(exc))
    except ValueError as exc:
        raise_problem("membership-change", str(exc))
    except UnavailableError as exc:
        raise_problem("no-leader", str(exc), headers={"Retry-After": "1"})
    return web.json_response({"voters": sorted(voters), "committed_by": replica.member})


def add_cluster_routes(app: web.Application) -> None:
    app.router.add_post(MEMBERSHIP_PATH, post_membership)
    app.router.add_post(RAFT_PATH, post_raft)
    app.router.add_post(COSIGN_PATH, post_cosign)
    app.router.add_get("/v1/cluster", get_cluster)
