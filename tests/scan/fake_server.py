"""A loopback TCP server for the scanner clients' fakes (tests/scan/test_clamd.py,
test_rspamd.py): each fake owns its protocol; this owns the listening socket and
makes sure every connection's handler has finished before the test goes on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def loopback_server(handle: Handler) -> AsyncIterator[int]:
    """Serve `handle` on 127.0.0.1 at a free port, which is yielded; on exit stop
    listening and wait for every handler (the client has closed its end by then, so
    each sees EOF and finishes)."""
    handlers: list[asyncio.Task[None]] = []

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.append(task)
        await handle(reader, writer)

    server = await asyncio.start_server(tracked, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()
        await asyncio.gather(*handlers)
