"""The single-process channel layer, made cheap per message."""

import time

from channels.layers import InMemoryChannelLayer as BaseInMemoryChannelLayer


class InMemoryChannelLayer(BaseInMemoryChannelLayer):
    """Channels' in-memory layer, with its expiry sweep at most once a second.

    Upstream sweeps every channel and group on every send and receive, which costs
    O(open sockets) per streamed piece: at 100 chats it was the top leaf in profiles.
    Expired messages and memberships still go, just up to a second later.
    """

    sweep_interval = 1.0
    _swept_at = 0.0

    def _clean_expired(self) -> None:
        now = time.monotonic()
        if now - self._swept_at < self.sweep_interval:
            return
        self._swept_at = now
        super()._clean_expired()
