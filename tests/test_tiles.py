"""tlog-tiles: paths, entry bundles, and the hash tiles a MerkleTree serves."""

from __future__ import annotations

import itertools

import merkle_reference as ref
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import merkle
from ledger.errors import DecodeError, MalformedError, OversizeError
from ledger.tiles import (
    TileId,
    encode_entry_bundle,
    entry_tile_for,
    format_tile_path,
    parse_entry_bundle,
    parse_tile_path,
    tiles_for_size,
    tiles_touched,
)
from ledger.tree import MerkleTree

# ---------------------------------------------------------------- paths


@pytest.mark.parametrize(("tile", "path"), [
    (TileId(0, 0), "tile/0/000"),
    (TileId(0, 1234067), "tile/0/x001/x234/067"),
    (TileId(1, 1000, 7), "tile/1/x001/000.p/7"),
    (TileId(63, 999), "tile/63/999"),
    (TileId(2, 0, 255), "tile/2/000.p/255"),
    (TileId("entries", 2345, 10), "tile/entries/x002/345.p/10"),
    (TileId("entries", 0), "tile/entries/000"),
])
def test_paths_match_the_spec(tile: TileId, path: str) -> None:
    assert format_tile_path(tile) == path
    assert parse_tile_path(path) == tile


@settings(max_examples=300)
@given(st.one_of(st.just("entries"), st.integers(0, 63)), st.integers(0, 2**56 - 1),
       st.integers(1, 256))
def test_paths_round_trip(level: int | str, index: int, width: int) -> None:
    tile = TileId(level, index, width)  # type: ignore[arg-type]
    assert parse_tile_path(format_tile_path(tile)) == tile


@pytest.mark.parametrize("path", [
    "", "tile", "tile/", "tile/0", "tile/0/", "tiles/0/000", "/tile/0/000", "tile/0/000/",
    "tile/00/000", "tile/01/000", "tile/64/000", "tile/-1/000", "tile/x/000", "tile/Entries/000",
    "tile/0/0", "tile/0/00", "tile/0/0000", "tile/0/1", "tile/0/x000", "tile/0/001/002",
    "tile/0/x000/001", "tile/0/x001/x002", "tile/0/y001/002", "tile/0/X001/002",
    "tile/0/x01/002", "tile/0/x0001/002", "tile/0/+01", "tile/0/ 01", "tile/0/00a",
    "tile/0/\u0661\u0662\u0663", "tile/0/000\n", "tile/0/000.p", "tile/0/000.p/",
    "tile/0/000.p/0", "tile/0/000.p/256", "tile/0/000.p/07", "tile/0/000.p/1000",
    "tile/0/000.p/x", "tile/0/000.p/5/6", "tile/0/000.q/5", "tile/0/.p/5",
    "tile/0/x001.p/5/002", "tile/0/x072/x057/x594/x037/x927/936",
    "tile/0/x001/x001/x001/x001/x001/x001/001",
    "tile/0/" + "x999/" * 2000 + "999",
])
def test_non_canonical_paths_are_rejected(path: str) -> None:
    with pytest.raises(MalformedError) as info:
        parse_tile_path(path)
    assert info.value.field in {"path", "level", "index", "width"}


def test_tile_ids_are_checked_when_built() -> None:
    for bad in [(0, 0, 0), (0, 0, 257), (64, 0, 1), (-1, 0, 1), ("hashes", 0, 1), (0, -1, 1)]:
        with pytest.raises(ValueError):
            TileId(*bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------- entry bundles


@settings(max_examples=100)
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=256))
def test_bundles_round_trip(entries: list[bytes]) -> None:
    assert parse_entry_bundle(encode_entry_bundle(entries)) == entries


def test_bundle_bytes() -> None:
    assert encode_entry_bundle([b"ab", b""]) == b"\x00\x02ab\x00\x00"
    big = b"x" * 65535
    assert parse_entry_bundle(encode_entry_bundle([big])) == [big]


def test_bundle_rejections() -> None:
    with pytest.raises(OversizeError):
        encode_entry_bundle([b"x" * 65536])
    with pytest.raises(OversizeError):
        encode_entry_bundle([b""] * 257)
    with pytest.raises(OversizeError):
        encode_entry_bundle([])
    good = encode_entry_bundle([b"abc", b"de"])
    for bad in (good[:-1], good + b"\x00", good[:1], b"\x00", b"\x00\x05abc", b""):
        with pytest.raises(MalformedError):
            parse_entry_bundle(bad)
    with pytest.raises(OversizeError):
        parse_entry_bundle(b"\x00\x00" * 257)
    assert parse_entry_bundle(b"\x00\x00" * 256) == [b""] * 256


@settings(max_examples=300)
@given(st.binary(max_size=600))
def test_bundle_parser_only_raises_decode_errors(data: bytes) -> None:
    try:
        entries = parse_entry_bundle(data)
    except DecodeError:
        return
    assert encode_entry_bundle(entries) == data


def test_entry_tile_for() -> None:
    assert entry_tile_for(0, 1) == TileId("entries", 0, 1)
    assert entry_tile_for(255, 1000) == TileId("entries", 0, 256)
    assert entry_tile_for(256, 1000) == TileId("entries", 1, 256)
    assert entry_tile_for(999, 1000) == TileId("entries", 3, 1000 - 768)
    with pytest.raises(ValueError):
        entry_tile_for(5, 5)


# ---------------------------------------------------------------- tile coordinates


def _widths(size: int) -> dict[tuple[int, int], int]:
    """Straight from the spec: at tile level L there are size >> 8L hashes, 256 a tile."""
    out = {}
    level = 0
    while (count := size >> (8 * level)) > 0:
        for n in range(0, (count + 255) // 256):
            out[(level, n)] = min(256, count - 256 * n)
        level += 1
    return out


def test_tiles_for_size() -> None:
    assert tiles_for_size(0) == []
    assert tiles_for_size(1) == [TileId(0, 0, 1)]
    assert tiles_for_size(256) == [TileId(0, 0), TileId(1, 0, 1)]
    assert tiles_for_size(70000) == [
        *[TileId(0, n) for n in range(273)], TileId(0, 273, 70000 - 273 * 256),
        TileId(1, 0, 256), TileId(1, 1, 273 - 256), TileId(2, 0, 1)]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 70_000), min_size=1, max_size=6), st.integers(0, 2**20))
def test_tiles_touched_is_exactly_what_changed(steps: list[int], start: int) -> None:
    sizes = sorted({start + s for s in steps} | {start})
    for old, new in itertools.pairwise(sizes):
        before, after = _widths(old), _widths(new)
        want = {k: w for k, w in after.items() if before.get(k) != w}
        got = tiles_touched(old, new)
        assert {(t.level, t.index): t.width for t in got} == want
        assert len(got) == len(want)
        assert [t.level for t in got] == sorted(t.level for t in got)
    assert tiles_touched(start, start) == []


def test_tiles_touched_at_a_large_size() -> None:
    # One leaf completes a full tile at every level and opens level 5.
    assert tiles_touched(2**40 - 1, 2**40) == [
        TileId(0, 2**32 - 1), TileId(1, 2**24 - 1), TileId(2, 2**16 - 1), TileId(3, 255),
        TileId(4, 0), TileId(5, 0, 1)]


# ---------------------------------------------------------------- tiles from a tree


ENTRIES = [b"tile entry %d" % i for i in range(256 * 256 + 300)]
TREE = MerkleTree.from_leaf_hashes(merkle.leaf_hash(e) for e in ENTRIES)


def test_tile_hashes_are_merkle_nodes() -> None:
    for tile in TREE.tiles_for_size():
        data = TREE.tile_hashes(tile.level, tile.index, tile.width)
        assert len(data) == tile.width * merkle.HASH_SIZE
        for i in (0, tile.width - 1):
            node = TREE.hash_at(8 * tile.level, tile.index * 256 + i)
            assert data[32 * i:32 * i + 32] == node
    # Spot-check against the literal RFC reference on small subtrees.
    small = TREE.tile_hashes(0, 3, 256)
    for i in (0, 17, 255):
        assert small[32 * i:32 * i + 32] == ref.node(ENTRIES, 0, 3 * 256 + i)
    top = TREE.tile_hashes(1, 0, 2)
    assert top[32:64] == ref.node(ENTRIES, 8, 1)


def test_partial_tiles_are_prefixes_of_the_full_tile() -> None:
    full = TREE.tile_hashes(0, 5, 256)
    for width in (1, 100, 255):
        assert TREE.tile_hashes(0, 5, width) == full[:32 * width]


def test_tiles_beyond_the_tree_are_refused() -> None:
    size = TREE.size
    with pytest.raises(IndexError):
        TREE.tile_hashes(0, size // 256, size % 256 + 1)
    with pytest.raises(IndexError):
        TREE.tile_hashes(2, 0, 2)
    with pytest.raises(IndexError):
        TREE.tile_hashes(3, 0, 1)
    with pytest.raises(IndexError):
        TREE.tile_hashes(0, 0, 0)


def test_a_tree_grown_tile_by_tile_stores_exactly_the_touched_tiles() -> None:
    tree, stored = MerkleTree(), {}
    old = 0
    for step in (1, 255, 1, 300, 65000, 1, 2):
        for h in (merkle.leaf_hash(e) for e in ENTRIES[old:old + step]):
            tree.append(h)
        for t in tree.tiles_touched(old):
            stored[(t.level, t.index)] = tree.tile_hashes(t.level, t.index, t.width)
        old = tree.size
    want = {(t.level, t.index): tree.tile_hashes(t.level, t.index, t.width)
            for t in tree.tiles_for_size()}
    assert stored == want
    # Level-0 tiles are enough to rebuild the tree.
    level0 = b"".join(stored[(0, n)] for n in range((tree.size + 255) // 256))
    rebuilt = MerkleTree.from_leaf_hashes(level0[i:i + 32] for i in range(0, len(level0), 32))
    assert rebuilt.root() == tree.root()


def test_tile_width_at_a_size() -> None:
    from ledger.tiles import tile_width

    assert tile_width(0, 0, 300) == 256
    assert tile_width(0, 1, 300) == 44
    assert tile_width(0, 2, 300) <= 0
    assert tile_width(1, 0, 300) == 1  # one complete level-8 node
    assert tile_width("entries", 1, 300) == 44
