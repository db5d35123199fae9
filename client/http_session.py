"""HTTP plumbing of the clients: a session borrowed or owned, and bounded reads."""

from __future__ import annotations

from types import TracebackType
from typing import Self

import aiohttp

from client.errors import ReplyError


class SessionOwner:
    """Base of the clients: `async with`, close(), and a session made on first use."""

    _timeout_s: float = 60.0

    def __init__(self, session: aiohttp.ClientSession | None) -> None:
        self._session = session
        self._own_session = session is None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout_s))
        return self._session


async def read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, or ReplyError as soon as it exceeds `limit` bytes.

    A server could stream without end (or lie in Content-Length): stop reading early."""
    if resp.content_length is not None and resp.content_length > limit:
        raise ReplyError(f"{resp.url.path}: reply of {resp.content_length} bytes is too large")
    chunks: list[bytes] = []
    total = 0
    while chunk := await resp.content.read(64 * 1024):
        total += len(chunk)
        if total > limit:
            raise ReplyError(f"{resp.url.path}: reply is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)



async def get_capped(session: aiohttp.ClientSession, url: str, limit: int, *,
                     timeout: float | None = None) -> bytes:
    """The body of a 200 answer to GET url, read as read_capped does; anything else
    (another status, no answer, a body over the limit) is a ReplyError naming the URL."""
    request = (session.get(url) if timeout is None
               else session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)))
    try:
        async with request as resp:
            if resp.status != 200:
                raise ReplyError(f"GET {url} answered {resp.status}")
            try:
                return await read_capped(resp, limit)
            except ReplyError as exc:
                raise ReplyError(f"GET {url}: {exc}") from None
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ReplyError(f"GET {url}: {exc or type(exc).__name__}") from None
