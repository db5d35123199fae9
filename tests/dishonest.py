"""A dishonest node for tests: a proxy on loopback in front of real node processes.

The proxy forwards every GET to an honest node and, in honest mode, adds to each
status answer's checkpoint the cosignatures of the test's witnesses, made now: it
stands for a node whose checkpoints a quorum of witnesses cosigns. Set `lie` and it
lies, one way at a time, as a compromised node would:

- about the checkpoint: cosignatures made long ago (STALE), a second history under
  the same origin and log key (FORKED, answered by the fork node), an older answer it
  served before (ROLLED_BACK), a root changed under the signatures (TAMPERED_ROOT), a
  witness's cosignature line with a bad signature (FORGED_COSIGNATURE) or made with
  another key under the witness's name (UNKNOWN_COSIGNER);
- about the proofs: hashes removed (TRUNCATED_*), a consistency proof with a changed
  hash (WRONG_CONSISTENCY);
- about the status: a value rewritten to say ConsentGiven (TAMPERED_VALUE), one byte
  of the root entry flipped (TAMPERED_ENTRY), the valid value and proof of another key
  (OTHER_KEY_PROOF: `decoy`, which must be present in the map), or a valid proof that
  another key is absent, served as this key's (ABSENCE_PROOF).

Since the witnesses' keys live in the proxy, a policy trusting them models witnesses
that colluded with the node or never saw the client's view: what is left to catch a
fork or a rollback is the client's trust store. A lie that cannot be told (nothing
recorded to roll back to, no proof hash to remove) is answered with a 500 problem
rather than an honest answer, so that a test cannot pass for the wrong reason.
"""

from __future__ import annotations

import base64
import copy
import enum
import json
import os
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.checkpoint import parse_checkpoint
from ledger.cosignature import CosignatureSigner, add_cosignatures
from ledger.note import Signature, format_note, split_note
from ledger.smt import MapProof
from ledger.status import PurposeStatus

FAR_FUTURE_MS = 4_102_444_800_000  # 2100-01-01


class Lie(enum.Enum):
    NONE = "honest"
    STALE = "stale"
    FORKED = "forked"
    ROLLED_BACK = "rolled-back"
    TAMPERED_ROOT = "tampered-root"
    FORGED_COSIGNATURE = "forged-cosignature"
    UNKNOWN_COSIGNER = "unknown-cosigner"
    TRUNCATED_INCLUSION = "truncated-inclusion"
    TRUNCATED_MAP_PROOF = "truncated-map-proof"
    TRUNCATED_CONSISTENCY = "truncated-consistency"
    WRONG_CONSISTENCY = "wrong-consistency"
    TAMPERED_VALUE = "tampered-value"
    TAMPERED_ENTRY = "tampered-entry"
    OTHER_KEY_PROOF = "other-key-proof"
    ABSENCE_PROOF = "absence-proof"


class CannotLie(Exception):
    """The lie asked for cannot be told about this answer."""


class DishonestProxy:
    """`async with DishonestProxy(...) as proxy:` serves on proxy.url until the block ends."""

    def __init__(self, honest_url: str, fork_url: str, *,
                 witnesses: Sequence[CosignatureSigner], clock: Callable[[], float],
                 stale_by_s: int) -> None:
        self.honest_url, self.fork_url = honest_url, fork_url
        self.witnesses = tuple(witnesses)
        self.clock = clock
        self.stale_by_s = stale_by_s
        self.lie = Lie.NONE
        self.decoy: tuple[str, bytes, str] | None = None  # (controller, subject, purpose)
        self.url = ""
        self._first: dict[str, dict[str, Any]] = {}  # query -> first answer served
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> DishonestProxy:
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_get("/{path:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    # ---------------------------------------------------------------- forwarding

    async def _handle(self, request: web.Request) -> web.Response:
        upstream = self.fork_url if self.lie is Lie.FORKED else self.honest_url
        try:
            if request.path == "/v1/status":
                return web.json_response(await self._status(upstream, request.query_string))
            if request.path == "/v1/proofs/consistency":
                return web.json_response(await self._consistency(upstream,
                                                                 request.query_string))
        except CannotLie as exc:
            return web.json_response(
                {"type": "about:blank", "title": "the proxy cannot tell this lie",
                 "status": 500, "detail": str(exc)}, status=500,
                content_type="application/problem+json")
        status, body = await self._get(upstream, request.path_qs)
        return web.Response(body=body, status=status, content_type="application/json")

    async def _get(self, upstream: str, path_qs: str) -> tuple[int, bytes]:
        assert self._session is not None
        async with self._session.get(upstream + path_qs) as resp:
            return resp.status, await resp.read()

    async def _get_json(self, upstream: str, path_qs: str) -> dict[str, Any]:
        status, body = await self._get(upstream, path_qs)
        if status != 200:
            raise CannotLie(f"the node answered {status} to {path_qs}: {body[:200]!r}")
        answer = json.loads(body)
        assert isinstance(answer, dict)
        return answer

    # ---------------------------------------------------------------- status answers

    async def _status(self, upstream: str, query: str) -> dict[str, Any]:
        lie = self.lie
        if lie is Lie.ROLLED_BACK:
            first = self._first.get(query)
            if first is None:
                raise CannotLie("no earlier answer to this query to roll back to")
            current = await self._get_json(upstream, "/v1/status?" + query)
            if _size(first) >= _size(current):
                raise CannotLie("the log has not grown since the first answer")
            return copy.deepcopy(first)  # with the cosignatures it was served with
        answer = await self._get_json(upstream, "/v1/status?" + query)
        now = int(self.clock())
        answer["checkpoint"] = self._cosigned(
            answer["checkpoint"], now - self.stale_by_s if lie is Lie.STALE else now)
        if lie is Lie.NONE:
            self._first.setdefault(query, copy.deepcopy(answer))
        elif lie in _STATUS_LIES:
            await _STATUS_LIES[lie](self, upstream, answer)
        return answer

    def _cosigned(self, note: str, timestamp: int) -> str:
        raw = note.encode()
        text = raw[:raw.index(b"\n\n") + 1]
        lines = [Signature(w.name, w.key_id, w.sign(text, timestamp)) for w in self.witnesses]
        if self.lie is Lie.FORGED_COSIGNATURE:
            last = lines[-1]
            lines[-1] = Signature(last.name, last.key_id, _flip_last(last.signature))
        elif self.lie is Lie.UNKNOWN_COSIGNER:
            w = self.witnesses[-1]
            other = CosignatureSigner.from_private_key(w.name, Ed25519PrivateKey.generate())
            lines[-1] = Signature(other.name, other.key_id, other.sign(text, timestamp))
        return add_cosignatures(raw, lines).decode()

    async def _tamper_root(self, upstream: str, answer: dict[str, Any]) -> None:
        text, sigs = split_note(answer["checkpoint"].encode())
        origin, size, root, *rest = text.split("\n")
        flipped = base64.b64encode(_flip_last(base64.b64decode(root))).decode()
        parse_checkpoint("\n".join([origin, size, flipped, *rest]))  # still well formed
        answer["checkpoint"] = format_note("\n".join([origin, size, flipped, *rest]),
                                           sigs).decode()

    async def _truncate_inclusion(self, upstream: str, answer: dict[str, Any]) -> None:
        if not answer["inclusion_proof"]:
            raise CannotLie("the inclusion proof has no hash to remove")
        answer["inclusion_proof"] = answer["inclusion_proof"][:-1]

    async def _truncate_map_proof(self, upstream: str, answer: dict[str, Any]) -> None:
        proof = MapProof.decode(base64.b64decode(answer["map_proof"]))
        if not proof.depths:
            raise CannotLie("the map proof has no hash to remove")
        cut = MapProof(depths=proof.depths[:-1], siblings=proof.siblings[:-1],
                       key=proof.key, value=proof.value)
        answer["map_proof"] = base64.b64encode(cut.encode()).decode()

    async def _tamper_value(self, upstream: str, answer: dict[str, Any]) -> None:
        if answer["value"] is None:  # never granted: claim a grant
            given = PurposeStatus(index=_size(answer) - 2, grant=os.urandom(32),
                                  valid_until=FAR_FUTURE_MS)
        else:  # withdrawn, revoked or expired: claim it still holds
            value = PurposeStatus.decode(base64.b64decode(answer["value"]))
            given = PurposeStatus(index=value.index, grant=value.grant,
                                  valid_until=FAR_FUTURE_MS)
        answer["value"] = base64.b64encode(given.encode()).decode()
        answer["status"] = "ConsentGiven"

    async def _tamper_entry(self, upstream: str, answer: dict[str, Any]) -> None:
        raw = base64.b64decode(answer["root_entry"])
        answer["root_entry"] = base64.b64encode(_flip_last(raw)).decode()

    async def _other_key_proof(self, upstream: str, answer: dict[str, Any]) -> None:
        if self.decoy is None:
            raise CannotLie("no decoy key is set")
        controller, subject, purpose = self.decoy
        other = await self._get_json(upstream, "/v1/status?" + _query(controller, subject,
                                                                      purpose))
        await self._substitute(answer, other, want_present=True)

    async def _absence_proof(self, upstream: str, answer: dict[str, Any]) -> None:
        if answer["value"] is None:
            raise CannotLie("the key is absent: a proof of absence would be the truth")
        other = await self._get_json(upstream, "/v1/status?" + _query(
            "absent.example", os.urandom(32), "dpv:Marketing"))
        await self._substitute(answer, other, want_present=False)

    async def _substitute(self, answer: dict[str, Any], other: dict[str, Any], *,
                          want_present: bool) -> None:
        # Another key's proof is only the lie meant if it holds against the same root.
        if _size(other) != _size(answer) or other["root_entry"] != answer["root_entry"]:
            raise CannotLie("the log grew between the two answers")
        if (other["value"] is not None) != want_present:
            raise CannotLie("the other key is not " + ("present" if want_present else
                                                       "absent"))
        for field in ("status", "value", "map_proof"):
            answer[field] = other[field]

    # ---------------------------------------------------------------- consistency proofs

    async def _consistency(self, upstream: str, query: str) -> dict[str, Any]:
        reply = await self._get_json(upstream, "/v1/proofs/consistency?" + query)
        proof = reply["proof"]
        if self.lie in (Lie.TRUNCATED_CONSISTENCY, Lie.WRONG_CONSISTENCY) and not proof:
            raise CannotLie("the consistency proof has no hash")
        if self.lie is Lie.TRUNCATED_CONSISTENCY:
            reply["proof"] = proof[:-1]
        elif self.lie is Lie.WRONG_CONSISTENCY:
            reply["proof"] = [base64.b64encode(_flip_last(base64.b64decode(proof[0]))
                                               ).decode(), *proof[1:]]
        return reply


_StatusLie = Callable[[DishonestProxy, str, dict[str, Any]], Any]
_STATUS_LIES: dict[Lie, _StatusLie] = {
    Lie.TAMPERED_ROOT: DishonestProxy._tamper_root,
    Lie.TRUNCATED_INCLUSION: DishonestProxy._truncate_inclusion,
    Lie.TRUNCATED_MAP_PROOF: DishonestProxy._truncate_map_proof,
    Lie.TAMPERED_VALUE: DishonestProxy._tamper_value,
    Lie.TAMPERED_ENTRY: DishonestProxy._tamper_entry,
    Lie.OTHER_KEY_PROOF: DishonestProxy._other_key_proof,
    Lie.ABSENCE_PROOF: DishonestProxy._absence_proof,
}


def _size(answer: dict[str, Any]) -> int:
    return int(answer["root_index"]) + 1


def _query(controller: str, subject: bytes, purpose: str) -> str:
    return urllib.parse.urlencode({"controller": controller, "subject": subject.hex(),
                                   "purpose": purpose})


def _flip_last(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])
