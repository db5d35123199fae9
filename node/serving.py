"""Serve an aiohttp app on one address until SIGINT or SIGTERM, then clean up."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

from aiohttp import web

from ledger.heap import tune_collector

# Set by the app's resources during start-up to a future they may resolve with an exit
# status: the server then stops as on SIGTERM and the process exits with it.
EXIT_REQUEST = web.AppKey("exit_request", asyncio.Future[int])


async def serve_until_signalled(app: web.Application, host: str, port: int, *, name: str,
                                announce: Callable[[str], None] | None = None) -> int:
    """Print `<name> listening on URL` (tests and operators read it), then serve until
    a signal (exit status 0) or the app's EXIT_REQUEST (its status)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    tune_collector()  # before the ledger is loaded (runner.setup)
    await runner.setup()  # opens the app's resources: a failure here leaves nothing behind
    requested: asyncio.Future[int] | None = None
    try:
        site = web.TCPSite(runner, host, port, backlog=1024)
        await site.start()
        url = f"http://{host}:{runner.addresses[0][1]}"
        print(f"{name} listening on {url}", flush=True)
        if announce is not None:
            announce(url)
        requested = app.get(EXIT_REQUEST)
        if requested is not None:
            requested.add_done_callback(lambda _: stop.set())
        await stop.wait()
        print(f"{name}: shutting down after the work in flight", flush=True)
    finally:
        await runner.cleanup()
    return requested.result() if requested is not None and requested.done() else 0
