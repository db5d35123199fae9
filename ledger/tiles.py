"""C2SP tlog-tiles (v0.1.0) coordinates, paths and entry bundles; no storage here.

Tile height is 8: hash i of tile N at tile level L is Merkle node (8·L, N·256 + i), the
root of leaves [(N·256 + i)·256^L, (N·256 + i + 1)·256^L). A tile of W < 256 hashes is
the partial right edge of some tree size; its first W hashes never change.

Paths, with N in 3-digit groups, all but the last prefixed with x:

    tile/0/x001/x234/067        level 0, N = 1234067, full (256 hashes)
    tile/2/000.p/7              level 2, N = 0, the first 7 hashes only
    tile/entries/x002/345.p/10  entry bundle 2345, the first 10 entries

An entry bundle is the entries of one data tile, each a big-endian uint16 length then
the bytes. parse_* functions take attacker input: they accept only the canonical form
and raise MalformedError (a DecodeError) or OversizeError saying what is wrong.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ledger.errors import MalformedError, OversizeError

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT
MAX_LEVEL = 63
MAX_ENTRY_SIZE = 0xFFFF
MAX_BUNDLE_SIZE = TILE_WIDTH * (2 + MAX_ENTRY_SIZE)  # a full bundle of the largest entries
# N·256 leaves must fit a 64-bit tree size, so N has at most 56 bits.
MAX_INDEX = (1 << 56) - 1
ENTRIES: Literal["entries"] = "entries"

Level = int | Literal["entries"]

_MAX_GROUPS = 6  # MAX_INDEX has 17 digits
_LEVEL = re.compile(r"0|[1-9][0-9]?")
_WIDTH = re.compile(r"[1-9][0-9]{0,2}")
_GROUP = re.compile(r"x[0-9]{3}")
_LAST = re.compile(r"[0-9]{3}")


@dataclass(frozen=True, slots=True)
class TileId:
    """A hash tile (level 0..63) or an entry bundle (level "entries"), width 1..256."""

    level: Level
    index: int
    width: int = TILE_WIDTH

    def __post_init__(self) -> None:
        # Constructed by code, not from the wire (parse_tile_path checks that first),
        # so a bad value here is a programming error.
        if self.level != ENTRIES and not (
                isinstance(self.level, int) and 0 <= self.level <= MAX_LEVEL):
            raise ValueError(f"tile level {self.level!r} is not 0..{MAX_LEVEL} or 'entries'")
        if not 0 <= self.index <= MAX_INDEX:
            raise ValueError(f"tile index {self.index} is out of range")
        if not 1 <= self.width <= TILE_WIDTH:
            raise ValueError(f"tile width {self.width} is not 1..{TILE_WIDTH}")

    @property
    def full(self) -> bool:
        return self.width == TILE_WIDTH


def format_tile_path(tile: TileId) -> str:
    """The tlog-tiles path of `tile`, without a leading slash."""
    digits = f"{tile.index:03d}"
    digits = "0" * (-len(digits) % 3) + digits
    groups = [digits[i:i + 3] for i in range(0, len(digits), 3)]
    path = "tile/" + str(tile.level) + "/" + "/".join(["x" + g for g in groups[:-1]]
                                                         + [groups[-1]])
    if tile.width < TILE_WIDTH:
        path += f".p/{tile.width}"
    return path


def parse_tile_path(path: str) -> TileId:
    """Parse a canonical tile path such as "tile/0/x001/x234/067.p/12"."""
    parts = path.split("/")
    if len(parts) < 3 or parts[0] != "tile":
        raise MalformedError("a tile path is tile/<L>/<N>[.p/<W>]", field="path")
    level: Level
    if parts[1] == ENTRIES:
        level = ENTRIES
    elif _LEVEL.fullmatch(parts[1]) and int(parts[1]) <= MAX_LEVEL:
        level = int(parts[1])
    else:
        raise MalformedError(f"level {parts[1]!r} is not 'entries' or 0..{MAX_LEVEL} "
                             "without leading zeros", field="level")
    rest = parts[2:]
    width = TILE_WIDTH
    if len(rest) >= 2 and rest[-2].endswith(".p"):
        w = rest[-1]
        if not _WIDTH.fullmatch(w) or int(w) >= TILE_WIDTH:
            raise MalformedError(f"partial width {w!r} is not 1..255 without leading zeros",
                                 field="width")
        width = int(w)
        rest = [*rest[:-2], rest[-2][:-2]]
    if len(rest) > _MAX_GROUPS:
        raise MalformedError(f"index has more than {_MAX_GROUPS} groups", field="index")
    *groups, last = rest
    for g in groups:
        if not _GROUP.fullmatch(g):
            raise MalformedError(f"index group {g!r} is not x and three digits", field="index")
    if not _LAST.fullmatch(last):
        raise MalformedError(f"last index group {last!r} is not three digits", field="index")
    if groups and groups[0] == "x000":
        raise MalformedError("index has a leading zero group", field="index")
    index = int("".join(g[1:] for g in groups) + last)
    if index > MAX_INDEX:
        raise MalformedError(f"index {index} is beyond any 64-bit tree", field="index")
    return TileId(level, index, width)


def encode_entry_bundle(entries: Sequence[bytes]) -> bytes:
    """The bytes of an entry bundle: each entry as uint16 length ‖ bytes."""
    if not 1 <= len(entries) <= TILE_WIDTH:
        raise OversizeError(f"a bundle holds 1 to {TILE_WIDTH} entries, not {len(entries)}",
                            field="bundle")
    out = bytearray()
    for i, e in enumerate(entries):
        if len(e) > MAX_ENTRY_SIZE:
            raise OversizeError(f"entry {i} is {len(e)} bytes, over {MAX_ENTRY_SIZE}",
                                field="entry")
        out += len(e).to_bytes(2, "big")
        out += e
    return bytes(out)


def parse_entry_bundle(data: bytes) -> list[bytes]:
    """The entries of a bundle; truncation, trailing bytes or > 256 entries are errors."""
    entries: list[bytes] = []
    pos, end = 0, len(data)
    while pos < end:
        if len(entries) == TILE_WIDTH:
            raise OversizeError(f"bundle holds more than {TILE_WIDTH} entries", field="bundle")
        if end - pos < 2:
            raise MalformedError(f"truncated length at byte {pos}", field="bundle")
        n = int.from_bytes(data[pos:pos + 2], "big")
        pos += 2
        if end - pos < n:
            raise MalformedError(f"entry {len(entries)} needs {n} bytes, {end - pos} remain",
                                 field="bundle")
        entries.append(bytes(data[pos:pos + n]))
        pos += n
    if not entries:
        raise MalformedError("an entry bundle holds at least one entry", field="bundle")
    return entries


def entry_tile_for(index: int, size: int) -> TileId:
    """The entry bundle holding entry `index`, as a tree of `size` serves it."""
    if not 0 <= index < size:
        raise ValueError(f"entry {index} is not in a tree of size {size}")
    n = index // TILE_WIDTH
    return TileId(ENTRIES, n, min(TILE_WIDTH, size - n * TILE_WIDTH))


def tile_width(level: int | str, index: int, size: int) -> int:
    """How many hashes (or entries, for level "entries") tile `index` holds at `size`;
    zero or less when the tile does not exist yet."""
    count = size if level == ENTRIES else size >> (TILE_HEIGHT * int(level))
    return min(TILE_WIDTH, count - index * TILE_WIDTH)


def tiles_for_size(size: int) -> list[TileId]:
    """Every hash tile of the tree of `size`, lowest level first (partials included)."""
    return tiles_touched(0, size)


def tiles_touched(old_size: int, new_size: int) -> list[TileId]:
    """The hash tiles that are new or grew from old_size to new_size, lowest level first.

    Exactly what a storage layer must write to serve new_size; full tiles and the
    right-edge partial tile of each level. Entry bundles follow level 0 (same index,
    same width).
    """
    if not 0 <= old_size <= new_size:
        raise ValueError(f"sizes must grow: {old_size} to {new_size}")
    out: list[TileId] = []
    level = 0
    # At tile level L there are (size >> 8L) hashes; a tile changes iff its count does.
    while True:
        shift = TILE_HEIGHT * level
        old_n, new_n = old_size >> shift, new_size >> shift
        if new_n == old_n:
            return out
        for n in range(old_n // TILE_WIDTH, (new_n - 1) // TILE_WIDTH + 1):
            out.append(TileId(level, n, min(TILE_WIDTH, new_n - n * TILE_WIDTH)))
        level += 1
