"""The channel layers, made cheap per message."""

import asyncio
import time
from typing import Any

from channels.layers import InMemoryChannelLayer as BaseInMemoryChannelLayer
from channels_redis import pubsub
from channels_redis.utils import _wrap_close


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


class PipelinedShardConnection(pubsub.RedisSingleShardConnection):
    """A Redis shard whose PUBLISHes go out in pipelines.

    channels_redis sends each PUBLISH under one lock per shard and waits for its
    reply before the next may go: one round trip per message for the whole
    process, so under load the queue of waiting sends grows faster than it
    drains (500 chats on one process: most replies never finished). Here every
    send that arrives while a pipeline is out joins the next one; order is kept,
    and each sender still learns when its message was published.
    """

    def __init__(self, host: Any, channel_layer: Any) -> None:
        super().__init__(host, channel_layer)
        self._outbox: list[tuple[str, bytes, asyncio.Future[None]]] = []
        self._sender: asyncio.Task[None] | None = None

    async def publish(self, channel: str, message: bytes) -> None:
        self._ensure_redis()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._outbox.append((channel, message, future))
        if self._sender is None or self._sender.done():
            self._sender = loop.create_task(self._send_outbox())
        await future

    async def _send_outbox(self) -> None:
        while self._outbox:
            batch, self._outbox = self._outbox, []
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for channel, message, _ in batch:
                        pipe.publish(channel, message)
                    await pipe.execute()
            except Exception as exc:
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                for _, _, future in batch:
                    if not future.done():
                        future.set_result(None)

    async def flush(self) -> None:
        sender, self._sender = self._sender, None
        if sender is not None:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        outbox, self._outbox = self._outbox, []
        for _, _, future in outbox:
            if not future.done():
                future.set_exception(ConnectionError("The channel layer was flushed."))
        await super().flush()


class RedisPubSubLoopLayer(pubsub.RedisPubSubLoopLayer):
    _shards: list[Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._shards = [PipelinedShardConnection(shard.host, self) for shard in self._shards]


class RedisPubSubChannelLayer(pubsub.RedisPubSubChannelLayer):
    """channels_redis' pub/sub layer with pipelined publishes (see above)."""

    def _get_layer(self) -> RedisPubSubLoopLayer:
        loop = asyncio.get_running_loop()
        layer = self._layers.get(loop)
        if layer is None:
            layer = RedisPubSubLoopLayer(*self._args, **self._kwargs, channel_layer=self)
            self._layers[loop] = layer
            _wrap_close(self, loop)
        return layer
