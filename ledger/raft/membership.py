"""Who votes: the cluster membership carried by CONFIG entries.

Encoded as the canonical msgpack map {"voters": [ids, ascending]}; decode accepts
exactly those bytes and names the field at fault.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any

from ledger.codec import pack, unpack
from ledger.errors import (
    DuplicateKeyError,
    FieldTypeError,
    FieldValueError,
    MissingFieldError,
    NonCanonicalError,
    OversizeError,
    UnknownFieldError,
)

# The member ids of node/cluster_config.py.
MEMBER_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
MAX_VOTERS = 64


def check_member_id(value: Any, field: str) -> str:
    if type(value) is not str:
        raise FieldTypeError("expected a string", field=field)
    if not MEMBER_ID.fullmatch(value):
        raise FieldValueError(f"{value!r} is not a member id ([a-z0-9][a-z0-9-]{{0,31}})",
                              field=field)
    return value


@dataclass(frozen=True)
class Membership:
    voters: frozenset[str]

    def __post_init__(self) -> None:
        if not self.voters:
            raise FieldValueError("a membership needs at least one voter", field="voters")
        if len(self.voters) > MAX_VOTERS:
            raise OversizeError(f"more than {MAX_VOTERS} voters", field="voters")
        for i, voter in enumerate(sorted(self.voters)):
            check_member_id(voter, f"voters[{i}]")

    @classmethod
    def of(cls, *voters: str) -> Membership:
        return cls(frozenset(voters))

    @property
    def quorum(self) -> int:
        """How many voters make a majority."""
        return len(self.voters) // 2 + 1

    def encode(self) -> bytes:
        return pack({"voters": sorted(self.voters)})

    @classmethod
    def decode(cls, data: bytes) -> Membership:
        value = unpack(data, max_size=4096)
        if type(value) is not list or (value and type(value[0]) is not tuple):
            raise FieldTypeError("expected a map")
        if not value:
            raise MissingFieldError("is required", field="voters")
        for key, _ in value:
            if key != "voters":
                raise UnknownFieldError("unknown field", field=str(key))
        if len(value) != 1:
            raise DuplicateKeyError("duplicate key", field="voters")
        voters = value[0][1]
        if type(voters) is not list:
            raise FieldTypeError("expected an array", field="voters")
        for i, voter in enumerate(voters):
            check_member_id(voter, f"voters[{i}]")
        if any(a >= b for a, b in itertools.pairwise(voters)):
            raise NonCanonicalError("voters must be unique and sorted ascending",
                                    field="voters")
        membership = cls(frozenset(voters))
        if membership.encode() != bytes(data):
            raise NonCanonicalError("not the canonical encoding")
        return membership

    def __repr__(self) -> str:
        return f"Membership({', '.join(sorted(self.voters))})"
