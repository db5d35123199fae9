"""The aiohttp application factory: one cleanup context per resource."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from node.api import add_routes
from node.config import NodeConfig
from node.problems import CONTENT_TYPE, ProblemResponse, problem
from node.runtime import RUNTIME, open_runtime
from node.serving import EXIT_REQUEST
from node.verify_page import add_routes as add_verify_page

log = logging.getLogger("consent_ledger.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_CODES = {404: "not-found", 405: "method-not-allowed", 413: "too-large",
          415: "unsupported-media-type"}


@web.middleware
async def problems_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as application/problem+json; no traceback reaches a client."""
    try:
        response = await handler(request)
    except ProblemResponse as exc:
        response = web.Response(status=exc.status, body=exc.body, headers=exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _CODES.get(exc.status, "malformed" if exc.status < 500 else "internal")
        body = problem(code, exc.reason or code)
        body["status"] = exc.status
        headers = {k: v for k, v in exc.headers.items()
                   if k.lower() not in ("content-type", "content-length")}  # keeps Allow
        response = web.Response(status=exc.status, text=json.dumps(body),
                                content_type=CONTENT_TYPE, headers=headers)
    except Exception:
        log.exception("unhandled error", extra={"path": request.path})
        response = web.Response(status=500, content_type=CONTENT_TYPE, text=json.dumps(
            problem("internal", "the node failed to handle this request; it has been logged")))
    if RUNTIME in request.app:
        request.app[RUNTIME].metrics.count_request(response.status)
    return response


def create_app(config: NodeConfig) -> web.Application:
    app = web.Application(client_max_size=config.max_body_bytes,
                          middlewares=[problems_middleware])

    async def runtime_ctx(app: web.Application) -> AsyncIterator[None]:
        async with open_runtime(config) as runtime:
            app[RUNTIME] = runtime
            app[EXIT_REQUEST] = runtime.exit_request
            yield

    app.cleanup_ctx.append(runtime_ctx)
    add_routes(app, intake_bytes=config.intake_bytes)
    add_verify_page(app)
    if config.cluster_file is not None:
        from node.cluster_api import add_cluster_routes

        add_cluster_routes(app)
    return app
