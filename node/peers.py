"""Carrying messages to the other members: one sender task per peer, batching as it goes.

Each peer has a queue; its sender takes everything queued, attaches the batch payloads
that the Raft core leaves out of its AppendEntries (it never holds them), signs the
request with this member's key and POSTs it. While one request is in flight the next
batch fills, so a busy link sends few large requests, of at most about FRAME_BYTES each
(a follower catching up is sent up to 64 batches at once: one request of tens of
megabytes would outlast its timeout on a slow link). A failed request is dropped:
Raft retries by itself, and the sender backs off briefly so a dead peer costs little.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.raft.messages import AppendEntries, Entry, EntryKind, Message
from ledger.raft.wire import encode_messages, frames
from node.peer_auth import sign_request

log = logging.getLogger("consent_ledger.peers")

RAFT_PATH = "/v1/cluster/raft"
COSIGN_PATH = "/v1/cluster/cosign"
FRAME_BYTES = 4 * 1024 * 1024

# Loads the payloads of BATCH entries (Raft index → payload) from storage.
PayloadLoader = Callable[[list[int]], Awaitable[dict[int, bytes]]]


class PeerLink:
    def __init__(self, *, me: str, peer: str, url: str, key: Ed25519PrivateKey,
                 session: aiohttp.ClientSession, load_payloads: PayloadLoader) -> None:
        self.peer = peer
        self.url = url
        self._me = me
        self._key = key
        self._session = session
        self._load = load_payloads
        self._queue: list[Message] = []
        self._wake = asyncio.Event()
        self.sent = 0
        self.failures = 0

    def send(self, message: Message) -> None:
        self._queue.append(message)
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._queue = self._queue, []
            if not batch:
                continue
            try:
                for frame in frames(await self._with_payloads(batch), FRAME_BYTES):
                    await self.post(RAFT_PATH, encode_messages(frame))
                    self.sent += len(frame)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                self.failures += 1
                log.debug("peer unreachable", extra={"peer": self.peer, "error": str(exc)})
                await asyncio.sleep(0.05)  # a back-off timer, not synchronisation

    async def post(self, path: str, body: bytes, timeout: float = 2.0) -> bytes:
        headers = sign_request(self._key, src=self._me, dst=self.peer, path=path, body=body)
        headers["Content-Type"] = "application/msgpack"
        async with self._session.post(self.url + path, data=body, headers=headers,
                                      timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            data = await resp.read()
            if resp.status >= 300:
                raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status,
                                                  message=data[:200].decode("utf-8", "replace"))
            return data

    async def _with_payloads(self, batch: list[Message]) -> list[Message]:
        missing = [e.index for m in batch if isinstance(m, AppendEntries)
                   for e in m.entries if e.kind == EntryKind.BATCH and e.data is None]
        if not missing:
            return batch
        payloads = await self._load(missing)
        out: list[Message] = []
        for m in batch:
            if isinstance(m, AppendEntries) and any(e.data is None for e in m.entries):
                if any(e.data is None and e.index not in payloads for e in m.entries):
                    continue  # truncated meanwhile: Raft sends what replaced it
                entries: tuple[Entry, ...] = tuple(
                    e.with_data(payloads[e.index]) if e.data is None else e for e in m.entries)
                m = AppendEntries(m.term, m.src, m.dst, m.prev_index, m.prev_term, entries,
                                  m.commit)
            out.append(m)
        return out
