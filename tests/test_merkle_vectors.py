"""Known answers: every RFC 6962 vector in shared/testdata gives the verdict it states.

The vectors (from transparency-dev/merkle) live beside the repository, never in it.
Outside CI a missing folder leaves the set empty; in CI it is an error, so that the
matrix cannot silently shrink to nothing.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest

from ledger import merkle
from ledger.errors import ConsistencyProofError, InclusionProofError

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "rfc6962-vectors"


def _files(kind: str) -> list[Path]:
    folder = VECTORS / kind
    if not folder.is_dir():
        if os.environ.get("CI"):
            raise RuntimeError(f"CI is set but the RFC 6962 vectors are missing: {folder}")
        return []
    return sorted(folder.rglob("*.json"))


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(VECTORS)) for p in paths]


def _b64(s: str) -> bytes:
    return base64.b64decode(s, validate=True)


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    # Go writes an empty (nil) proof as null.
    data["proof"] = data["proof"] or []
    return data


INCLUSION = _files("inclusion")
CONSISTENCY = _files("consistency")


def test_the_vectors_are_all_there_when_present() -> None:
    if VECTORS.is_dir():
        # 196 files at the time of writing; a shrinking matrix is a bug, not a pass.
        assert len(INCLUSION) + len(CONSISTENCY) >= 190


@pytest.mark.parametrize("path", INCLUSION, ids=_ids(INCLUSION))
def test_inclusion_vector(path: Path) -> None:
    v = _load(path)
    args = (_b64(v["leafHash"]), v["leafIdx"], v["treeSize"],
            [_b64(h) for h in v["proof"]], _b64(v["root"]))
    if v["wantErr"]:
        with pytest.raises(InclusionProofError):
            merkle.verify_inclusion(*args)
    else:
        merkle.verify_inclusion(*args)


@pytest.mark.parametrize("path", CONSISTENCY, ids=_ids(CONSISTENCY))
def test_consistency_vector(path: Path) -> None:
    v = _load(path)
    args = (v["size1"], v["size2"], [_b64(h) for h in v["proof"]],
            _b64(v["root1"]), _b64(v["root2"]))
    if v["wantErr"]:
        with pytest.raises(ConsistencyProofError):
            merkle.verify_consistency(*args)
    else:
        merkle.verify_consistency(*args)
