"""The last verified checkpoint of each log, kept on disk, advanced only by proof.

A TrustStore is a directory holding one file per log origin, named by the SHA-256 of
the origin, holding the signed checkpoint note exactly as the log served it (so the
file is evidence anyone can re-verify, and `cat` shows its origin on the first line).
Files are 0600 and replaced atomically (temp file, fsync, rename, fsync directory).

The store checks consistency, not signatures: its caller verifies each note (for
instance with TrustPolicy.check_checkpoint) before offering it. A newer checkpoint
replaces the stored one only with a consistency proof from the stored size, so the
store never holds a checkpoint that was not proven to extend the one before it; a
refusal leaves the file untouched and raises an error holding both notes and the
proof. The store fetches nothing: `needs_proof` says which proof to fetch.

Advancing holds an exclusive lock on the directory and re-reads the stored note, so
processes sharing a store cannot each extend an older state in different ways.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import stat
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from client.errors import ClientError, LogVerificationError
from ledger.checkpoint import Checkpoint, parse_checkpoint
from ledger.errors import LedgerError
from ledger.merkle import EMPTY_ROOT, verify_consistency
from ledger.note import MAX_NOTE_SIZE, split_note

_LOCK = ".lock"
_SUFFIX = ".checkpoint"


class TrustStoreError(ClientError):
    """The store cannot be read or written."""


class TrustStoreCorrupt(TrustStoreError):
    """A stored file is not a checkpoint note of the origin it is filed under.

    Never repaired silently: forgetting the stored checkpoint would trust the next
    one on first use, which is what a rollback attack needs.
    """

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        super().__init__(f"trust store file {path} is corrupt: {reason}; inspect it, and "
                         "delete it only if you accept trusting the log anew")


class TrustStoreChanged(TrustStoreError):
    """Another writer advanced the store after the proof was chosen: fetch it again."""


class LogInconsistent(LogVerificationError):
    """A new checkpoint that does not extend the stored one.

    `stored_note` and `new_note` are the two signed notes and `proof` the proof
    offered; `checkpoint` holds the larger tree and `other_checkpoint` the other, as
    in every LogVerificationError.
    """

    def __init__(self, message: str, *, stored_note: bytes, new_note: bytes,
                 stored_size: int, new_size: int, proof: Sequence[bytes]) -> None:
        larger, other = (new_note, stored_note) if new_size >= stored_size else \
            (stored_note, new_note)
        super().__init__(message, checkpoint=larger, other_checkpoint=other, proof=proof,
                         size=max(new_size, stored_size))
        self.stored_note = stored_note
        self.new_note = new_note


class RollbackDetected(LogInconsistent):
    """The new checkpoint is smaller than one already verified."""


class ForkDetected(LogInconsistent):
    """Same size with another root, or a consistency proof that does not verify."""


class TrustStore:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._dir = Path(path)
        try:
            self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise TrustStoreError(f"cannot create the trust store {self._dir}: {exc}") from None
        if not self._dir.is_dir():
            raise TrustStoreError(f"the trust store {self._dir} is not a directory")

    def path_for(self, origin: str) -> Path:
        return self._dir / (hashlib.sha256(origin.encode("utf-8")).hexdigest() + _SUFFIX)

    def latest(self, origin: str) -> tuple[bytes, Checkpoint] | None:
        """The stored note of `origin` and its checkpoint, or None before first use."""
        path = self.path_for(origin)
        try:
            with open(path, "rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    raise TrustStoreCorrupt(path, "not a regular file")
                note = f.read(MAX_NOTE_SIZE + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise TrustStoreError(f"cannot read {path}: {exc}") from None
        if len(note) > MAX_NOTE_SIZE:
            raise TrustStoreCorrupt(path, f"larger than {MAX_NOTE_SIZE} bytes")
        try:
            checkpoint = _checkpoint_of(note)
        except LedgerError as exc:
            raise TrustStoreCorrupt(path, str(exc)) from None
        if checkpoint.origin != origin:
            raise TrustStoreCorrupt(path, f"it holds a checkpoint of {checkpoint.origin!r}, "
                                    f"not of {origin!r}")
        return note, checkpoint

    def needs_proof(self, origin: str, new_size: int) -> tuple[int, int] | None:
        """The consistency proof (from, to) to fetch before advance, or None.

        None when nothing is stored, the sizes are equal, or the stored tree is empty
        (every tree extends it), and also when new_size is smaller: no proof can help,
        advance refuses it.
        """
        stored = self.latest(origin)
        if stored is None:
            return None
        size = stored[1].size
        if size == 0 or new_size <= size:
            return None
        return size, new_size

    def advance(self, new_note: bytes, new_checkpoint: Checkpoint,
                consistency_proof: Sequence[bytes], *, proof_from: int | None = None) -> None:
        """Store `new_note` if it extends the stored checkpoint of its origin.

        `new_note` must already be verified; `new_checkpoint` must be what it says.
        `proof_from` is the size the proof starts at (needs_proof's first number):
        given, a store that another writer advanced in the meantime raises
        TrustStoreChanged instead of mistaking the mismatch for a fork.
        """
        try:
            parsed = _checkpoint_of(new_note)
        except LedgerError as exc:
            raise ValueError(f"new_note is not a checkpoint note: {exc}") from None
        if parsed != new_checkpoint:
            raise ValueError("new_checkpoint is not the checkpoint new_note holds")
        proof = list(consistency_proof)
        origin = new_checkpoint.origin
        with self._locked():
            stored = self.latest(origin)
            if stored is not None:
                old_note, old = stored
                if proof_from is not None and proof_from != old.size:
                    raise TrustStoreChanged(
                        f"the stored checkpoint of {origin} is now at size {old.size}, "
                        f"not {proof_from}; fetch the proof again")
                if old_note == new_note:
                    return
                _check_extends(old_note, old, new_note, new_checkpoint, proof)
            elif proof:
                raise ValueError("a first checkpoint needs no consistency proof")
            self._write(self.path_for(origin), new_note)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            fd = os.open(self._dir / _LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise TrustStoreError(f"cannot lock the trust store {self._dir}: {exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _write(self, path: Path, data: bytes) -> None:
        try:
            fd, tmp = tempfile.mkstemp(dir=self._dir, prefix=".tmp-", suffix=_SUFFIX)
        except OSError as exc:
            raise TrustStoreError(f"cannot write to the trust store {self._dir}: {exc}"
                                  ) from None
        try:
            try:
                os.fchmod(fd, 0o600)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise TrustStoreError(f"cannot write {path}: {exc}") from None
        # The rename is durable only once the directory entry is.
        dir_fd = os.open(self._dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _checkpoint_of(note: bytes) -> Checkpoint:
    text, _ = split_note(note)
    return parse_checkpoint(text)


def _check_extends(old_note: bytes, old: Checkpoint, new_note: bytes, new: Checkpoint,
                   proof: list[bytes]) -> None:
    def fail(cls: type[LogInconsistent], reason: str) -> LogInconsistent:
        return cls(f"checkpoint of {new.origin} at size {new.size} {reason}",
                   stored_note=old_note, new_note=new_note, stored_size=old.size,
                   new_size=new.size, proof=proof)

    if new.size < old.size:
        raise fail(RollbackDetected, f"is smaller than the verified size {old.size}")
    if old.size == 0 and new.size > 0:
        # Every tree extends the empty one, whose root is fixed: no proof to check.
        if old.root != EMPTY_ROOT:
            raise fail(ForkDetected, "follows a stored size 0 whose root is not the empty "
                       "tree's")
        if proof:
            raise ValueError("a proof from size 0 proves nothing; pass an empty one")
        return
    if old.size == new.size and proof:
        raise ValueError("equal sizes need no consistency proof; pass an empty one")
    try:
        verify_consistency(old.size, new.size, proof, old.root, new.root)
    except LedgerError as exc:
        raise fail(ForkDetected, f"is not consistent with the verified size {old.size}: "
                   f"{exc}") from None
