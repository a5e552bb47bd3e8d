"""The channel layers, made cheap per message and quiet through Redis outages."""

import asyncio
import logging
import time
import uuid
from typing import Any

import redis.exceptions
from channels.layers import InMemoryChannelLayer as BaseInMemoryChannelLayer
from channels_redis import pubsub
from channels_redis.utils import _wrap_close

from chatsite.outages import CHANNEL_LAYER, outage_over, outage_seen

logger = logging.getLogger("chatsite.layers")


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


# Errors that mean Redis is not there (stopped, restarting, unreachable), not a bug.
REDIS_AWAY = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


class PipelinedShardConnection(pubsub.RedisSingleShardConnection):
    """A Redis shard whose PUBLISHes go out in pipelines, and that rides out Redis outages.

    Pipelines: channels_redis sends each PUBLISH under one lock per shard and waits for
    its reply before the next may go: one round trip per message for the whole
    process, so under load the queue of waiting sends grows faster than it drains
    (500 chats on one process: most replies never finished). Here every send that
    arrives while a pipeline is out joins the next one; order is kept, and each
    sender still learns when its message was published.

    Outages: a publish still fails while Redis is away (its sender must know), but a
    subscription asked for then is kept and made once Redis answers, as redis-py
    already does for the ones it had; the outage is logged once when it starts and
    once when it ends (chatsite.outages), not as a traceback a second.
    """

    # While Redis is away, how often the receive loop tries it again.
    reconnect_interval = 0.2
    # After an outage, how long the first publish waits once Redis answers: every
    # process's receive loop has subscribed again by then, so no page misses it.
    resubscribe_grace = 0.5

    def __init__(self, host: Any, channel_layer: Any) -> None:
        super().__init__(host, channel_layer)
        self._outbox: list[tuple[str, bytes, asyncio.Future[None]]] = []
        self._sender: asyncio.Task[None] | None = None
        self._to_subscribe: set[str] = set()  # wanted, but Redis was away when asked
        self._publish_failed = False

    # --- publishing ---------------------------------------------------------

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
                await self._publish_batch(batch)
            except Exception as exc:
                if isinstance(exc, REDIS_AWAY):
                    self._publish_failed = True
                    outage_seen(CHANNEL_LAYER, exc)
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                if self._publish_failed:
                    self._publish_failed = False
                    outage_over(CHANNEL_LAYER)
                for _, _, future in batch:
                    if not future.done():
                        future.set_result(None)

    async def _publish_batch(self, batch: list[tuple[str, bytes, asyncio.Future[None]]]) -> None:
        """One pipeline; once more, on a fresh connection, if the first one was dead.

        After Redis restarts, a pooled connection fails on first use: that is no
        outage, and must not fail the sends. (A PUBLISH that Redis took but whose
        reply was lost would go out twice; after a restart nothing was taken.)
        """
        for attempt in (1, 2):
            try:
                if self._publish_failed:
                    await self._redis.ping()
                    await asyncio.sleep(self.resubscribe_grace)
                async with self._redis.pipeline(transaction=False) as pipe:
                    for channel, message, _ in batch:
                        pipe.publish(channel, message)
                    await pipe.execute()
                return
            except REDIS_AWAY:
                if attempt == 2:
                    raise
                self._publish_failed = True  # Redis may just be back: let subscribers in
                await self._redis.connection_pool.disconnect(inuse_connections=False)

    # --- subscriptions --------------------------------------------------------

    def _away(self, exc: BaseException) -> bool:
        """Whether `exc` means Redis is away. redis-py's PubSub connection is shared
        by the receive loop and (un)subscribes: while one tears it down after a
        failed read, the other may fail on it in other ways."""
        if isinstance(exc, REDIS_AWAY):
            return True
        connection = self._pubsub.connection if self._pubsub is not None else None
        return connection is None or not connection.is_connected

    async def subscribe(self, channel: str) -> None:
        async with self._lock:
            if channel in self._subscribed_to:
                return
            self._ensure_redis()
            self._ensure_receiver()
            try:
                await self._pubsub.subscribe(channel)
            except Exception as exc:
                if not self._away(exc):
                    raise
                outage_seen(CHANNEL_LAYER, exc)
                self._to_subscribe.add(channel)  # the receive loop subscribes it
            self._subscribed_to.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        async with self._lock:
            if channel not in self._subscribed_to:
                return
            self._subscribed_to.discard(channel)
            if channel in self._to_subscribe:
                self._to_subscribe.discard(channel)
                return
            self._ensure_redis()
            self._ensure_receiver()
            try:
                await self._pubsub.unsubscribe(channel)
            except Exception as exc:
                if not self._away(exc):
                    raise
                # The subscription went with the connection; forget it here too, or
                # redis-py would make it again on reconnect, for nobody.
                outage_seen(CHANNEL_LAYER, exc)
                for key in (channel, channel.encode()):
                    self._pubsub.channels.pop(key, None)
                    self._pubsub.pending_unsubscribe_channels.discard(key)

    async def _subscribe_wanted(self) -> None:
        async with self._lock:
            wanted = sorted(self._to_subscribe)
            if wanted:
                await self._pubsub.subscribe(*wanted)
                self._to_subscribe.difference_update(wanted)

    async def _do_receiving(self) -> None:
        """channels_redis' receive loop, quiet while Redis is away.

        Each failed read reconnects at the next turn (redis-py subscribes again to
        everything it had); the outage is logged when it starts and when it ends.
        """
        failing = False
        while True:
            try:
                if self._to_subscribe:
                    await self._subscribe_wanted()
                if self._pubsub is not None and self._pubsub.subscribed:
                    message = await self._pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=0.1
                    )
                    self._receive_message(message)
                else:
                    await asyncio.sleep(0.1)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self._away(exc):
                    logger.exception("channel_layer_receive_failed")
                    await asyncio.sleep(1)
                    continue
                if not failing:
                    failing = True
                    outage_seen(CHANNEL_LAYER, exc)
                await asyncio.sleep(self.reconnect_interval)
                continue
            if failing:
                failing = False
                outage_over(CHANNEL_LAYER)

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
        self._to_subscribe = set()
        self._publish_failed = False


class RedisPubSubLoopLayer(pubsub.RedisPubSubLoopLayer):
    _shards: list[Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._shards = [PipelinedShardConnection(shard.host, self) for shard in self._shards]
        # One channel for health probes, for the life of this loop's layer.
        self._health_channel = f"{self.prefix}health.{uuid.uuid4().hex}"
        self._health_lock = asyncio.Lock()

    async def ping(self) -> None:
        """A message out through Redis and back to this process; raises if Redis is
        away. Callers bound the wait (a lost message would be waited for forever)."""
        async with self._health_lock:
            channel = self._health_channel
            queue = self.channels.setdefault(channel, asyncio.Queue())
            await self._get_shard(channel).subscribe(channel)
            while not queue.empty():  # answers to probes that gave up waiting
                queue.get_nowait()
            nonce = uuid.uuid4().hex
            await self.send(channel, {"type": "health.ping", "nonce": nonce})
            while self.channel_layer.deserialize(await queue.get()).get("nonce") != nonce:
                pass


class RedisPubSubChannelLayer(pubsub.RedisPubSubChannelLayer):
    """channels_redis' pub/sub layer with pipelined publishes and quiet outages (see above)."""

    def _get_layer(self) -> RedisPubSubLoopLayer:
        loop = asyncio.get_running_loop()
        layer = self._layers.get(loop)
        if layer is None:
            layer = RedisPubSubLoopLayer(*self._args, **self._kwargs, channel_layer=self)
            self._layers[loop] = layer
            _wrap_close(self, loop)
        return layer

    async def ping(self) -> None:
        await self._get_layer().ping()


async def channel_layer_ping(layer: Any) -> bool:
    """Whether a message goes through `layer` and comes back (bound the wait).

    The Redis pub/sub layer reuses one channel per process: a new one per probe
    would be a Redis subscription per probe, never released. Other layers' channels
    cost nothing until used, and are emptied by the receive.
    """
    if isinstance(layer, RedisPubSubChannelLayer):
        await layer.ping()
        return True
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "health.ping"})
    message = await layer.receive(channel)
    return bool(message.get("type") == "health.ping")
