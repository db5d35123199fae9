"""Request bodies and leaders' batches decoded in a process of their own.

Strict decoding (canonical form, every field's rules, the event inside each envelope)
is the largest single part of a node's event-loop time per event, while a node on its
own leaves its second core nearly idle. So the node starts one child process (`python
-m node.decode_worker`) and sends it the large bodies over a pipe; the child decodes
each one exactly as the loop would and sends back the envelopes, pickled, which costs
the loop about a quarter of decoding them. A cluster member sends it the batches a
leader replicates too (the entries a follower re-checks before it stores them).

- The loop reads the pipe itself: a thread in between would wait for the GIL behind the
  busy loop on every reply.
- The pipes are widened to 1 MiB: a reply waits there until the loop reads it, and with
  the default 64 KiB the child spent most of its time blocked on a half-read reply.
- The child's replies are trusted as the node's own code: it is the node's child, on
  pipes nobody else holds.
- A body the child refuses comes back as a refusal and the loop decodes it again, so
  every error is raised by the same code whichever way a body went.
- If the child dies (killed, out of memory), the loop decodes everything itself, logs
  why, and starts a new child after a pause: 1 s, doubling up to a minute while new
  children keep dying young, so that a child that cannot live does not take the core in
  a loop of starts. The child exits when the node closes the pipe, or dies, since its
  pipe then ends too.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import pickle
import signal
import struct
import sys
from collections.abc import Callable
from typing import BinaryIO

from client.wire import decode_body
from ledger.codec import Record
from ledger.entry import LogEntry
from ledger.errors import SignatureError
from ledger.signed import SignedEvent
from node.backoff import Backoff
from node.batch_payload import decode_batch

log = logging.getLogger("consent_ledger.decode_worker")

MIN_BODY = 16 * 1024  # smaller bodies decode on the loop sooner than a round trip takes
_PIPE_SIZE = 1 << 20
_READ_LIMIT = 8 << 20  # the loop's pipe reader would otherwise pause at 128 KiB buffered
_REQUEST = struct.Struct(">IIB")  # body length, most envelopes allowed, what it holds
_REPLY = struct.Struct(">IB")  # payload length, kind
_DECODED, _REFUSED = 0, 1
_BODY, _BATCH = 0, 1  # a POST /v1/events body; a Raft batch's payload
_KINDS = {_BODY: "body", _BATCH: "batch"}
RESTART_FIRST_S, RESTART_MAX_S = 1.0, 60.0
_LIVED_S = 60.0  # a child that lived this long died of something passing: back to 1 s

Decoded = list[SignedEvent] | SignedEvent | list[LogEntry]


class DecodeWorker:
    """One child process that decodes bodies and batches in order (a new one if it dies)."""

    def __init__(self, process: asyncio.subprocess.Process,
                 on_decoded: Callable[[str], None] = lambda kind: None,
                 on_restarted: Callable[[], None] = lambda: None,
                 restart_after: tuple[float, float] = (RESTART_FIRST_S, RESTART_MAX_S)) -> None:
        self._on_decoded = on_decoded  # "body" or "batch", for /metrics
        self._on_restarted = on_restarted
        self._backoff = Backoff(*restart_after, settled_s=_LIVED_S)
        self._restarter: asyncio.Task[None] | None = None
        self._closing = False
        self._waiting: collections.deque[tuple[int, asyncio.Future[Decoded | None]]] = \
            collections.deque()
        self._attach(process)

    def _attach(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdin is not None and process.stdout is not None
        self._process = process
        self._requests = process.stdin
        self._backoff.working()
        self._alive = True
        self._reader = asyncio.create_task(self._read_replies(process.stdout),
                                           name="decode-worker")

    @classmethod
    async def start(cls, on_decoded: Callable[[str], None] = lambda kind: None,
                    on_restarted: Callable[[], None] = lambda: None,
                    restart_after: tuple[float, float] = (RESTART_FIRST_S, RESTART_MAX_S)
                    ) -> DecodeWorker:
        return cls(await _spawn(), on_decoded, on_restarted, restart_after)

    @property
    def alive(self) -> bool:
        return self._alive

    @property
    def pid(self) -> int:
        return self._process.pid

    async def decode(self, body: bytes, max_items: int) -> list[SignedEvent] | SignedEvent | None:
        """The body's envelopes, or None: the caller decodes it (refused, or no child)."""
        return await self._ask(_BODY, body, max_items)  # type: ignore[return-value]

    def submit_batch(self, payload: bytes) -> asyncio.Future[list[LogEntry] | None]:
        """A Raft batch's entries to come, or None: the caller decodes it (refused, or no
        child). Sent at once, without waiting for room in the pipe: the caller bounds how
        many batches it has in flight."""
        return self._send(_BATCH, payload, 0)  # type: ignore[return-value]

    async def _ask(self, kind: int, body: bytes, max_items: int) -> Decoded | None:
        future = self._send(kind, body, max_items)
        if not future.done():
            # If the child is gone, the reader answers every waiting body with None.
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self._requests.drain()
        return await future

    def _send(self, kind: int, body: bytes, max_items: int) -> asyncio.Future[Decoded | None]:
        future: asyncio.Future[Decoded | None] = asyncio.get_running_loop().create_future()
        if not self._alive:
            future.set_result(None)
            return future
        self._waiting.append((kind, future))
        self._requests.write(_REQUEST.pack(len(body), max_items, kind))
        self._requests.write(body)
        return future

    async def _read_replies(self, replies: asyncio.StreamReader) -> None:
        error = "its reader stopped"
        try:
            while True:
                length, kind = _REPLY.unpack(await replies.readexactly(_REPLY.size))
                payload = await replies.readexactly(length)
                asked, future = self._waiting.popleft()
                if kind == _DECODED:
                    self._on_decoded(_KINDS[asked])
                if not future.done():
                    future.set_result(pickle.loads(payload) if kind == _DECODED else None)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            error = type(exc).__name__
        finally:
            self._alive = False
            while self._waiting:
                _, future = self._waiting.popleft()
                if not future.done():
                    future.set_result(None)
            if not self._closing and self._restarter is None:
                pause = self._backoff.failed()
                log.warning("the decoding process stopped; bodies are decoded on the event "
                            "loop until a new one starts", extra={
                                "error": error, "exit_code": self._process.returncode,
                                "restart_in_s": pause})
                self._restarter = asyncio.create_task(self._restart(pause),
                                                      name="decode-worker-restart")

    async def _restart(self, pause: float) -> None:
        old = self._process
        with contextlib.suppress(ProcessLookupError):
            old.kill()  # its pipe ended, but it may linger: never two children at once
        await old.wait()
        while not self._closing:
            await asyncio.sleep(pause)  # a back-off timer, not synchronisation
            try:
                process = await _spawn()
            except OSError as exc:
                pause = self._backoff.failed()
                log.warning("the decoding process could not be started", extra={
                    "error": str(exc), "retry_in_s": pause})
                continue
            self._restarter = None
            self._attach(process)
            self._on_restarted()
            log.info("the decoding process started again", extra={"pid": process.pid})
            return

    async def close(self) -> None:
        """Let the child answer what it holds, then end it."""
        self._closing = True
        if self._restarter is not None:
            self._restarter.cancel()
            await asyncio.gather(self._restarter, return_exceptions=True)
        self._alive = False
        self._requests.close()
        try:
            await asyncio.wait_for(self._process.wait(), timeout=5)
        except TimeoutError:
            self._process.kill()
            await self._process.wait()
        await asyncio.gather(self._reader, return_exceptions=True)


async def _spawn() -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "node.decode_worker", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, limit=_READ_LIMIT)


def _serve(requests: BinaryIO, replies: BinaryIO) -> None:
    while True:
        header = requests.read(_REQUEST.size)
        if len(header) < _REQUEST.size:
            return  # the node closed the pipe, or died
        length, max_items, kind = _REQUEST.unpack(header)
        body = requests.read(length)
        try:
            decoded: Decoded
            if kind == _BATCH:
                decoded = entries = decode_batch(body)
                for entry in entries:
                    _ = entry.leaf_hash  # computed here, not on the loop
                    _precompute(entry.signed)  # its own encoding is the entry's: not needed
                _share_equal_values([e.signed for e in entries])
            else:
                decoded = envelopes = decode_body(body, max_items=max_items)
                many = envelopes if isinstance(envelopes, list) else [envelopes]
                for signed in many:
                    _ = signed.encoded  # what the loop splices into the entry it makes
                    _precompute(signed)
                _share_equal_values(many)
            payload = pickle.dumps(decoded, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # refused, whatever the reason: the loop decodes it and says why
            replies.write(_REPLY.pack(0, _REFUSED))
        else:
            replies.write(_REPLY.pack(len(payload), _DECODED))
            replies.write(payload)
        replies.flush()


def _precompute(signed: SignedEvent) -> None:
    _ = signed.id
    with contextlib.suppress(SignatureError):  # the loop finds it, and says so
        _ = signed.message


def _share_equal_values(envelopes: list[SignedEvent]) -> None:
    """Make equal values one object: pickle then sends each once and the loop builds it
    once. A batch's envelopes share their signer, signature, signed message and most of
    their inclusion paths, and events repeat their controller, purposes and notices: a
    fifth fewer bytes, a quarter less unpickling on the loop (100 batch-signed grants),
    and an eighth less again once the notice record itself is sent once."""
    seen: dict[object, object] = {}

    def share(value: object) -> object:
        return seen.setdefault(value, value)

    for signed in envelopes:
        fields = signed.__dict__
        for name in ("signer", "sig", "message"):
            if fields.get(name) is not None:
                fields[name] = share(fields[name])
        if signed.batch is not None:
            object.__setattr__(signed.batch, "path", tuple(map(share, signed.batch.path)))
        body = signed.body.__dict__
        for name, value in body.items():
            # Only text, tuples of text and records of text and bytes: 1 == True would
            # make (1,) and (True,) one value, and bytes never equal text.
            if type(value) is str or (type(value) is tuple
                                      and all(type(v) is str for v in value)) \
                    or _of_text_and_bytes(value):
                body[name] = share(value)


def _of_text_and_bytes(value: object) -> bool:
    """A record (a grant's notice) whose fields are all text, bytes or absent (one
    declared with slots has no __dict__: it is sent as it is)."""
    fields = getattr(value, "__dict__", None) if isinstance(value, Record) else None
    return fields is not None and all(
        v is None or type(v) is str or type(v) is bytes for v in fields.values())


def _widen_pipes() -> None:
    try:
        import fcntl

        for fd in (0, 1):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
    except (ImportError, AttributeError, OSError):
        pass  # not Linux, or a lower limit: the child only waits more often


if __name__ == "__main__":
    # Ctrl-C reaches the whole process group: the node stops and closes the pipe, and
    # the child answers what it holds before it exits.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _widen_pipes()
    _serve(sys.stdin.buffer, sys.stdout.buffer)
