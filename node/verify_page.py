"""GET /verify: the page on which a person checks a receipt in their own browser.

The page and its scripts are static files (node/static/); all checking happens in the
browser (WebCrypto), so the node serves bytes and nothing it says is believed. The
Content-Security-Policy keeps the page to this origin: no script, style or request
may go anywhere else, and no inline script can run, so a receipt's text cannot
become code.
"""

from __future__ import annotations

import functools
from importlib import resources

from aiohttp import web

PAGE = "verify.html"
ASSETS = {
    PAGE: "text/html",
    "verify.js": "text/javascript",
    "receipt.js": "text/javascript",
    "tlog.js": "text/javascript",
    "msgpack.js": "text/javascript",
    "verify.css": "text/css",
}
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@functools.cache
def _asset(name: str) -> bytes:
    return (resources.files("node") / "static" / name).read_bytes()


async def get_page(request: web.Request) -> web.Response:
    name = request.match_info.get("asset", PAGE)
    content_type = ASSETS.get(name)
    if content_type is None:
        raise web.HTTPNotFound(reason=f"no such file of the verification page: {name}")
    return web.Response(body=_asset(name), content_type=content_type, charset="utf-8",
                        headers=HEADERS)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/verify", get_page)
    app.router.add_get("/verify/{asset}", get_page)
