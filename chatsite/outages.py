"""One log line when a dependency (the database, the channel layer) stops answering,
one when it answers again: not a traceback per failed call while it is down."""

import logging
import threading

logger = logging.getLogger("chatsite.outages")

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


def dependencies_down() -> set[str]:
    return set(_down)
