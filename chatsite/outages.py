"""One log line when a dependency (the database, the channel layer) stops answering,
one when it answers again: not a traceback per failed call while it is down."""

import logging
import threading
from collections.abc import Awaitable
from typing import Any

from django.db import DatabaseError, InterfaceError

logger = logging.getLogger("chatsite.outages")

# The dependencies whose outages are logged, by the names the log lines use.
CHANNEL_LAYER = "channel_layer"
DATABASE = "database"
# Database errors that mean it is down (or blinking), as opposed to a bug.
DATABASE_ERRORS = (DatabaseError, InterfaceError)

_down: dict[str, str] = {}
_lock = threading.Lock()


def outage_seen(dependency: str, exc: BaseException) -> None:
    """A call to `dependency` failed; logged only if it was thought up."""
    with _lock:
        if dependency in _down:
            return
        _down[dependency] = type(exc).__name__
    logger.warning("dependency_unavailable dependency=%s error=%s", dependency, type(exc).__name__)


def outage_over(dependency: str) -> None:
    """A call to `dependency` succeeded; logged only if it was thought down."""
    if dependency not in _down:  # the common case, without the lock
        return
    with _lock:
        if _down.pop(dependency, None) is None:
            return
    logger.warning("dependency_restored dependency=%s", dependency)


async def reached(dependency: str, call: Awaitable[Any]) -> bool:
    """Await `call` to `dependency`: True once it answered, False (the outage noted,
    never raised) when it failed."""
    try:
        await call
    except Exception as exc:
        outage_seen(dependency, exc)
        return False
    outage_over(dependency)
    return True
