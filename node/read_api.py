"""The tlog-tiles read API (checkpoint, hash tiles, entry bundles) over any served copy.

Whoever serves a log (the node that writes it, a mirror that copies it) gives these
handlers a TileSource: the size it may serve, the checkpoint note that commits to that
size, the tree and the stored entry bytes. Nothing here knows how the copy was made.
"""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

from ledger.errors import DecodeError
from ledger.tiles import ENTRIES, TILE_WIDTH, encode_entry_bundle, parse_tile_path, tile_width
from node.problems import raise_problem

IMMUTABLE = "public, max-age=31536000, immutable"


class ServedLog(Protocol):
    @property
    def served_size(self) -> int:
        """How many entries the checkpoint below commits to; never more are served."""

    @property
    def served_checkpoint(self) -> bytes | None:
        """The signed checkpoint note for served_size (None: nothing to serve yet)."""

    def tile_hashes(self, level: int, index: int, width: int) -> bytes: ...

    async def entry_data(self, start: int, end: int) -> list[bytes]: ...


SERVED_LOG: web.AppKey[ServedLog] = web.AppKey("served_log", ServedLog)


async def checkpoint_response(log: ServedLog) -> web.Response:
    note = log.served_checkpoint
    if note is None:
        raise_problem("unavailable", "there is no checkpoint to serve yet")
    return web.Response(body=note, content_type="text/plain",
                        charset="utf-8", headers={"Cache-Control": "no-cache"})


async def tile_response(log: ServedLog, path: str) -> web.Response:
    """A hash tile or entry bundle; `path` is what follows /tile/."""
    try:
        tile = parse_tile_path("tile/" + path)
    except DecodeError as exc:
        raise_problem("not-found", f"not a tile path: {exc}")
    size = log.served_size
    if tile.width > tile_width(tile.level, tile.index, size):
        raise_problem("not-found", f"tile {path} is beyond the log's size {size}")
    if tile.level == ENTRIES:
        start = tile.index * TILE_WIDTH
        body = encode_entry_bundle(await log.entry_data(start, start + tile.width))
    else:
        body = log.tile_hashes(int(tile.level), tile.index, tile.width)
    # A tile's first W hashes (or entries) never change, so partial tiles are as
    # cacheable as full ones: a client asks for the width its checkpoint implies.
    return web.Response(body=body, content_type="application/octet-stream",
                        headers={"Cache-Control": IMMUTABLE})


async def get_checkpoint(request: web.Request) -> web.Response:
    return await checkpoint_response(request.app[SERVED_LOG])


async def get_tile(request: web.Request) -> web.Response:
    return await tile_response(request.app[SERVED_LOG], request.match_info["path"])


def add_read_routes(app: web.Application) -> None:
    """The routes, for an app whose SERVED_LOG is set (the node binds its own)."""
    app.router.add_get("/checkpoint", get_checkpoint)
    app.router.add_get("/tile/{path:.+}", get_tile)
