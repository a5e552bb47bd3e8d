"""A reply's text as an API response needs it: in order, without gaps or doubles.

It listens to the conversation's channel-layer group, as every open page of the
conversation does (pieces with their offsets, the final state), and asks the
runner for the whole text when a piece went missing. The runner of an API call
runs in this process, so its task is watched too: a final message lost to a
channel-layer outage does not leave the response waiting.
"""

import asyncio
from collections.abc import AsyncIterator, Callable
from contextvars import Context
from typing import Any, TypeVar

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from chatsite.outages import CHANNEL_LAYER, outage_seen, reached
from conversations.models import Turn
from conversations.replies import ReplyRunner, control_group, conversation_group
from conversations.selectors import turns_with_cost

T = TypeVar("T")

# How often the runner's task is checked while no message arrives.
_WATCH_INTERVAL = 1.0


async def in_database_thread(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`database_sync_to_async`, on the process's one database thread (the chat
    socket's and the runners'), not on a thread of the request's own: Django gives
    each async request a new one, and with it a new database connection."""
    call = database_sync_to_async(function)(*args, **kwargs)
    return await asyncio.get_running_loop().create_task(call, context=Context())


def reply_final(turn_id: int) -> Turn:
    """The reply as stored, with what the ledger billed for it."""
    return turns_with_cost(Turn.objects.filter(pk=turn_id)).get()


class ReplyFeed:
    """Subscribe before the reply starts (`subscribe`), then iterate `pieces()`;
    `final` holds the stored reply once the iteration ends."""

    def __init__(self, *, conversation_id: Any) -> None:
        self.layer = get_channel_layer()
        self.group = conversation_group(conversation_id)
        self.control = control_group(conversation_id)
        self.channel = ""
        self.subscribed = False
        self.delivered = 0
        self.final: Turn | None = None

    async def subscribe(self) -> bool:
        """Listen on the conversation's group; False when the channel layer is down."""
        try:
            self.channel = await self.layer.new_channel()
        except Exception as exc:
            outage_seen(CHANNEL_LAYER, exc)
            return False
        self.subscribed = await reached(
            CHANNEL_LAYER, self.layer.group_add(self.group, self.channel)
        )
        return self.subscribed

    async def unsubscribe(self) -> None:
        if self.channel:
            await reached(CHANNEL_LAYER, self.layer.group_discard(self.group, self.channel))

    async def pieces(self, runner: ReplyRunner) -> AsyncIterator[str]:
        """New text as it arrives, until the reply ends (then `final` is set)."""
        turn_id = runner.turn_id
        catching_up = False
        while True:
            message = await self._next(runner)
            if message is None:  # the runner ended and its final message did not come
                break
            kind = message.get("type")
            if message.get("turn_id") != turn_id:
                continue
            if kind == "reply.delta" and not catching_up:
                offset, text = message["offset"], message["text"]
                end = offset + len(text)
                if end <= self.delivered:
                    continue
                if offset > self.delivered:  # a piece went missing: ask for the whole text
                    catching_up = True
                    snapshot = {"type": "reply.snapshot", "reply_channel": self.channel}
                    await reached(CHANNEL_LAYER, self.layer.group_send(self.control, snapshot))
                    continue
                yield text[self.delivered - offset :]
                self.delivered = end
            elif kind == "reply.catchup":
                catching_up = False
                text = message["text"]
                if len(text) > self.delivered:
                    yield text[self.delivered :]
                    self.delivered = len(text)
            elif kind == "reply.finished":
                break
        self.final = await in_database_thread(reply_final, turn_id)
        rest = self.final.content[self.delivered :]
        if rest:
            self.delivered = len(self.final.content)
            yield rest

    async def _next(self, runner: ReplyRunner) -> dict[str, Any] | None:
        assert runner.task is not None
        if not self.subscribed:
            # The channel layer is down: the whole text comes once the reply has ended.
            await asyncio.wait({runner.task})
            return None
        while True:
            try:
                return await asyncio.wait_for(
                    self.layer.receive(self.channel), timeout=_WATCH_INTERVAL
                )
            except TimeoutError:
                pass
            except Exception:  # the layer went down meanwhile: as above
                await asyncio.wait({runner.task})
                return None
            if runner.task.done():
                return None
