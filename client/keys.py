"""Ed25519 private keys in PKCS#8 PEM files, the form `openssl genpkey` reads and writes."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from client.errors import KeyFileError

MAX_KEY_FILE = 64 * 1024  # a PEM Ed25519 key is ~120 bytes; anything huge is not one


def generate_key_file(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Create a new key at `path` (mode 0600); never overwrites an existing file."""
    target = Path(path)
    if target.exists():
        raise KeyFileError(f"{target}: a file already exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        # 0600 from creation: chmod after writing would leave a window where others can read.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        # A crash leaves either no key or the whole key, never a truncated one.
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise KeyFileError(f"{target}: cannot write the key: {exc.strerror or exc}") from None
    return key


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Read an unencrypted PKCS#8 PEM Ed25519 key, or raise KeyFileError saying why not."""
    target = Path(path)
    try:
        with open(target, "rb") as f:
            data = f.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise KeyFileError(f"{target}: cannot read the key: {exc.strerror or exc}") from None
    if len(data) > MAX_KEY_FILE:
        raise KeyFileError(f"{target}: too large to be a key file")
    try:
        key = load_pem_private_key(data, password=None)
    except TypeError:
        raise KeyFileError(f"{target}: the key is encrypted; give an unencrypted key") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise KeyFileError(f"{target}: not a PEM private key ({reason})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{target}: holds a {type(key).__name__.removeprefix('_')}, "
                           "not an Ed25519 key")
    return key


def _fsync_dir(directory: Path) -> None:
    # Makes the rename durable; some platforms cannot open a directory, which is harmless.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
