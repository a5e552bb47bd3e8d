"""The chat socket: authenticate, parse a frame, call a service, send fragments."""

import asyncio
import html
import json
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.core.exceptions import ValidationError
from django.template.loader import render_to_string

from .budgets import budget_warnings, membership_of
from .gateway import ChatRequest
from .models import Conversation, Turn
from .replies import (
    control_group,
    conversation_group,
    render_reply_controls,
    render_turn,
    reply_launch,
    reply_not_starting,
    reply_starting,
)
from .selectors import conversation_get_for, turn_active
from .services import (
    SendRefused,
    message_edit,
    message_send,
    reply_prepare,
    reply_retry,
    reply_stop_request,
)


def error_fragment(message: str) -> str:
    return render_to_string("conversations/partials/composer_status.html", {"error": message})


def ack_fragment(warnings: list[str]) -> str:
    return render_to_string(
        "conversations/partials/composer_status.html", {"ack": True, "warnings": warnings}
    )


def text_fragment(turn_id: int, text: str, *, replace: bool) -> str:
    """Escaped text for a streaming reply: appended, or replacing what the page has."""
    swap = "true" if replace else f"beforeend:#turn-{turn_id}-text"
    return (
        f'<div id="turn-{turn_id}-text" class="turn-text streaming" hx-swap-oob="{swap}">'
        f"{html.escape(text, quote=False)}</div>"
    )


@dataclass(frozen=True, slots=True)
class Begun:
    result: Any  # what the service returned
    reply: Turn  # started: streaming, unless it was ended elsewhere first
    request: ChatRequest | None
    warnings: list[str]


def _begin_reply(
    service: Callable[..., Any], reply_of: Callable[[Any], Turn], owner_id: int, kwargs: Any
) -> Begun:
    """In one visit to the database thread: store, start the reply, build its
    upstream request, read the owner's budget warnings."""
    membership = membership_of(owner_id)  # read once for the checks, the hold and the warnings
    result = service(membership=membership, **kwargs)
    reply = reply_of(result)
    reply_starting(reply.pk)
    try:
        request = reply_prepare(turn=reply)
        warnings = budget_warnings(user_id=owner_id, membership=membership)
    except BaseException:
        reply_not_starting(reply.pk)
        raise
    return Begun(result, reply, request, warnings)


def _is_id(value: Any) -> bool:
    return isinstance(value, int | str) and str(value).isdigit() and len(str(value)) < 19


class ChatConsumer(AsyncWebsocketConsumer):
    conversation: Conversation
    group: str

    # Messages whose handlers touch the database only through `database_sync_to_async`
    # (which closes stale connections itself), or not at all: skip Channels' extra
    # per-message hop to the database thread. It showed in profiles once per piece
    # per open socket, and under a burst of sends it doubled each send's wait there.
    NO_DATABASE = frozenset(
        {
            "reply.delta",
            "reply.state",
            "reply.finished",
            "reply.catchup",
            "turn.created",
            "websocket.receive",
        }
    )

    async def dispatch(self, message: dict[str, Any]) -> None:
        if message["type"] in self.NO_DATABASE:
            await getattr(self, message["type"].replace(".", "_"))(message)
        else:
            await super().dispatch(message)

    async def connect(self) -> None:
        user = self.scope.get("user")
        conversation_id = self.scope["url_route"]["kwargs"]["conversation_id"]
        conversation = None
        if user is not None and user.is_authenticated:
            conversation = await database_sync_to_async(conversation_get_for)(
                user=user, conversation_id=conversation_id
            )
        if conversation is None:
            # Not signed in, or not theirs: closed, never told which.
            await self.close()
            return
        self.conversation = conversation
        self.group = conversation_group(conversation.pk)
        self.delivered: dict[int, int] = {}
        self.awaiting_catchup: set[int] = set()
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        active = await database_sync_to_async(turn_active)(conversation_id=conversation.pk)
        if active is not None and active.state == Turn.State.STREAMING:
            await self._request_catchup(active.pk)

    async def disconnect(self, code: int) -> None:
        # The reply goes on without this socket.
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data is None:
            await self.send(text_data=error_fragment("Only text frames are understood."))
            return
        if len(text_data.encode()) > settings.CHAT_MAX_FRAME_BYTES:
            await self.send(text_data=error_fragment("That message is too large."))
            return
        try:
            frame = json.loads(text_data)
        except ValueError:
            frame = None
        if not isinstance(frame, dict):
            await self.send(text_data=error_fragment("That message could not be read."))
            return
        action = frame.get("action") or "send"
        if action == "stop":
            await self._stop()
        elif action == "send":
            await self._send_message(frame.get("message"))
        elif action == "retry":
            await self._retry(frame.get("turn"))
        elif action == "edit":
            await self._edit(frame.get("turn"), frame.get("message"))
        else:
            await self.send(text_data=error_fragment("Unknown action."))

    async def _begin(
        self, service: Callable[..., Any], reply_of: Callable[[Any], Turn], **kwargs: Any
    ) -> Begun | None:
        """Run a service that makes a reply; a refusal becomes an error fragment for
        this socket only."""
        try:
            return await database_sync_to_async(_begin_reply)(
                service, reply_of, self.conversation.owner_id, kwargs
            )
        except SendRefused as exc:
            await self.send(text_data=error_fragment(exc.message))
        except ValidationError as exc:
            await self.send(text_data=error_fragment(" ".join(exc.messages)))
        return None

    async def _broadcast_start(self, html: str, begun: Begun) -> None:
        """Start the reply, show every open page the new turns, acknowledge this one.

        The upstream request goes out first; the reply's first text waits until
        the pages have been sent its turn (`announced`).
        """
        try:
            runner = await reply_launch(turn=begun.reply, request=begun.request)
        finally:
            reply_not_starting(begun.reply.pk)
        try:
            await asyncio.sleep(0)  # let the runner send the upstream request now
            await self.channel_layer.group_send(
                self.group,
                {
                    "type": "turn.created",
                    "html": html + render_reply_controls(active_turn=begun.reply),
                },
            )
        finally:
            runner.announced.set()
        await self.send(text_data=ack_fragment(begun.warnings))

    async def _send_message(self, text: Any) -> None:
        if not isinstance(text, str):
            await self.send(text_data=error_fragment("Type a message first."))
            return
        begun = await self._begin(
            message_send,
            operator.itemgetter(1),
            conversation=self.conversation,
            text=text,
            start=True,
        )
        if begun is None:
            return
        html = render_to_string(
            "conversations/partials/turns_append.html",
            {"turns": list(begun.result), "conversation": self.conversation},
        )
        await self._broadcast_start(html, begun)

    async def _retry(self, turn_id: Any) -> None:
        if not _is_id(turn_id):
            await self.send(text_data=error_fragment("That message could not be read."))
            return
        begun = await self._begin(
            reply_retry, lambda reply: reply, conversation=self.conversation, turn_id=int(turn_id)
        )
        if begun is not None:
            await self._broadcast_start(render_turn(begun.reply, oob=True), begun)

    async def _edit(self, turn_id: Any, text: Any) -> None:
        if not _is_id(turn_id) or not isinstance(text, str):
            await self.send(text_data=error_fragment("That message could not be read."))
            return
        begun = await self._begin(
            message_edit,
            operator.attrgetter("reply"),
            conversation=self.conversation,
            turn_id=int(turn_id),
            text=text,
        )
        if begun is None:
            return
        edited = begun.result
        removed = "".join(
            f'<article id="turn-{pk}" hx-swap-oob="delete"></article>' for pk in edited.removed
        )
        html = (
            removed
            + render_turn(edited.user_turn, oob=True)
            + render_to_string(
                "conversations/partials/turns_append.html",
                {"turns": [edited.reply], "conversation": self.conversation},
            )
        )
        await self._broadcast_start(html, begun)

    async def _stop(self) -> None:
        # Both paths, so Stop works whichever process runs the reply: the channel
        # layer reaches the runner at once, the database flag at its next heartbeat.
        active = await database_sync_to_async(reply_stop_request)(
            conversation_id=self.conversation.pk
        )
        if active is not None:
            await self.channel_layer.group_send(
                control_group(self.conversation.pk), {"type": "reply.stop"}
            )

    async def _request_catchup(self, turn_id: int) -> None:
        self.awaiting_catchup.add(turn_id)
        await self.channel_layer.group_send(
            control_group(self.conversation.pk),
            {"type": "reply.snapshot", "reply_channel": self.channel_name},
        )

    # --- group messages ----------------------------------------------------

    async def turn_created(self, event: dict[str, Any]) -> None:
        await self.send(text_data=event["html"])

    async def reply_state(self, event: dict[str, Any]) -> None:
        self.delivered[event["turn_id"]] = 0
        await self.send(text_data=event["html"])

    async def reply_delta(self, event: dict[str, Any]) -> None:
        turn_id, offset, text = event["turn_id"], event["offset"], event["text"]
        if turn_id in self.awaiting_catchup:
            return  # the catch-up text will cover this piece
        have = self.delivered.get(turn_id, 0)
        end = offset + len(text)
        if end <= have:
            return
        if offset > have:
            # A piece went missing (a full channel): fetch the whole text again.
            await self._request_catchup(turn_id)
            return
        self.delivered[turn_id] = end
        await self.send(text_data=text_fragment(turn_id, text[have - offset :], replace=False))

    async def reply_catchup(self, event: dict[str, Any]) -> None:
        turn_id, text = event["turn_id"], event["text"]
        self.awaiting_catchup.discard(turn_id)
        self.delivered[turn_id] = len(text)
        await self.send(text_data=text_fragment(turn_id, text, replace=True))

    async def reply_finished(self, event: dict[str, Any]) -> None:
        self.delivered.pop(event["turn_id"], None)
        self.awaiting_catchup.discard(event["turn_id"])
        await self.send(text_data=event["html"])
