"""Keeping replies honest across process deaths and restarts.

Every server process sweeps replies whose heartbeat went stale (their process
died) into `interrupted`, once at start and then periodically, and on shutdown
gives its own running replies a short grace period before checkpointing them as
`interrupted`. `ReplySupervisor` wraps the ASGI application to start this in
the server's event loop: on the lifespan startup where the server speaks
lifespan (uvicorn), else on the first connection (daphne), where it also hooks
Twisted's shutdown so SIGTERM waits for it.
"""

import asyncio
import logging
import sys
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings

from chatsite import outages

from .replies import replies_alive, replies_running, reply_broadcast_final
from .services import reply_sweep_stale, upstream_calls_prune

logger = logging.getLogger("conversations.supervision")


async def replies_sweep_once() -> int:
    """Mark stale replies interrupted and tell their open pages."""

    def sweep() -> list[Any]:
        # Which replies live here is read in the database thread, just before the
        # query: under load this call may wait there for seconds behind others.
        swept = reply_sweep_stale(stale_after=settings.CHAT_STALE_AFTER, alive=replies_alive())
        upstream_calls_prune()
        return swept

    swept = await database_sync_to_async(sweep)()
    for turn in swept:
        logger.warning("reply_interrupted turn=%s conversation=%s", turn.pk, turn.conversation_id)
        # Pages that miss it while the layer is down get it when they reconnect.
        await outages.reached(outages.CHANNEL_LAYER, reply_broadcast_final(turn))
    return len(swept)


async def replies_sweep_forever() -> None:
    while True:
        try:
            await replies_sweep_once()
        except outages.DATABASE_ERRORS as exc:  # one line per outage, not a traceback per sweep
            outages.outage_seen(outages.DATABASE, exc)
        except Exception:
            logger.exception("reply sweep failed")
        else:
            outages.outage_over(outages.DATABASE)
        await asyncio.sleep(settings.CHAT_SWEEP_INTERVAL)


async def replies_drain(grace: float) -> None:
    """Let running replies finish within `grace` seconds; interrupt the rest, keeping text."""
    runners = replies_running()
    tasks = [runner.task for runner in runners if runner.task is not None]
    if not tasks:
        return
    logger.info("shutdown: waiting up to %.1fs for %d replies", grace, len(tasks))
    _, pending = await asyncio.wait(tasks, timeout=grace)
    for runner in runners:
        if runner.task in pending:
            runner.interrupt()
    if pending:
        await asyncio.wait(pending, timeout=10)


class ReplySupervisor:
    """ASGI middleware that runs the sweep and the shutdown drain in the server's loop."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._sweeper: asyncio.Task[None] | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        self._start()
        await self.app(scope, receive, send)

    def _start(self) -> None:
        if self._sweeper is not None:
            return
        self._sweeper = asyncio.get_running_loop().create_task(replies_sweep_forever())
        self._hook_twisted_shutdown()

    @staticmethod
    def _hook_twisted_shutdown() -> None:
        if "twisted.internet.reactor" not in sys.modules:
            return
        from twisted.internet import defer, reactor

        def drain() -> defer.Deferred[None]:
            future = asyncio.ensure_future(replies_drain(settings.CHAT_SHUTDOWN_GRACE))
            return defer.Deferred.fromFuture(future)

        reactor.addSystemEventTrigger("before", "shutdown", drain)  # type: ignore[arg-type]

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await replies_drain(settings.CHAT_SHUTDOWN_GRACE)
                if self._sweeper is not None:
                    self._sweeper.cancel()
                await send({"type": "lifespan.shutdown.complete"})
                return
