"""The chat socket: authenticate, parse a frame, call a service, send fragments."""

import asyncio
import json
import logging
import re
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.core.exceptions import ValidationError

from accounts.services import user_group
from chatsite.outages import CHANNEL_LAYER, reached

from .actors import Actor, SocketCredentials, actor_for_socket
from .fragments import (
    ack_fragment,
    deferred_turn_fragment,
    error_fragment,
    frame_too_large_fragment,
    path_fragment,
    stream_view_fragment,
    text_fragment,
    title_fragment,
    turns_fragment,
)
from .models import Conversation, Turn
from .replies import (
    control_group,
    conversation_group,
    reply_launch,
    reply_not_starting,
    reply_starting,
)
from .selectors import conversation_get_for, sidebar_page_for, turn_active, turns_shown
from .services import (
    Edit,
    ReplyAction,
    ReplyBegun,
    Retry,
    Send,
    SendRefused,
    path_switch,
    reply_begin,
    reply_stop_request,
)

logger = logging.getLogger("conversations.consumers")

# Text of one frame at most (a catch-up of a long reply goes in several): escaped,
# and as UTF-8, it stays well below daphne's 1 MiB frame limit.
CATCHUP_CHARS = 100_000
# The largest frame daphne sends (its limit is 1 MiB), and a character count below
# which no frame can reach it, so most frames are never measured.
FRAME_BYTES = 1_000_000
FRAME_CHARS_SURELY_SMALL = FRAME_BYTES // 4
# Turns a reconnecting page may ask to be brought up to date.
SYNC_TURNS = 50
# Rendered HTML of one frame at most, in whole blocks; a block or tail larger than a
# frame may carry waits for the final rendering.
VIEW_CHARS = 200_000
TOO_LARGE_BLOCK = '<p class="stream-pending">This part is shown when the reply is complete.</p>'


class SocketRevoked(Exception):
    """The person behind the socket signed out, changed password or was deactivated."""


class ConversationGone(Exception):
    """The conversation was deleted (in another tab) while the socket was open."""


def _frame_context(
    credentials: SocketCredentials, conversation_id: Any
) -> tuple[Actor, Conversation]:
    """The person and the conversation as they are now, or the frame is refused."""
    actor, conversation = actor_for_socket(credentials=credentials, conversation_id=conversation_id)
    if actor is None:
        raise SocketRevoked
    if conversation is None:
        raise ConversationGone
    return actor, conversation


def _begin(credentials: SocketCredentials, conversation_id: Any, action: ReplyAction) -> ReplyBegun:
    """One visit to the database thread: check, store, start. The reply is this
    process's from here on (no sweep takes it) until its runner is launched."""
    actor, conversation = _frame_context(credentials, conversation_id)
    begun = reply_begin(actor=actor, conversation=conversation, action=action)
    reply_starting(begun.reply.pk)
    return begun


def _stop_reply(credentials: SocketCredentials, conversation_id: Any) -> Turn | None:
    _frame_context(credentials, conversation_id)
    return reply_stop_request(conversation_id=conversation_id)


def _switch(credentials: SocketCredentials, conversation_id: Any, turn_id: int) -> None:
    _, conversation = _frame_context(credentials, conversation_id)
    path_switch(conversation=conversation, turn_id=turn_id)


def _turns_to_sync(
    credentials: SocketCredentials, conversation_id: Any, shown: list[int], last: int | None
) -> tuple[list[Turn], list[Turn] | None, Turn | None]:
    """For a page that (re)connected: the stored truth of the turns it shows as
    still being written, the turns of the active path it has not seen (None when its
    newest turn left the path: another tab showed another version meanwhile), and
    the active reply. A page that shows no turn (`last` None or 0) gets the path's
    latest ones."""
    _frame_context(credentials, conversation_id)
    turns = turns_shown(Turn.objects.filter(conversation_id=conversation_id))
    stale = list(turns.filter(pk__in=shown).exclude(state__in=Turn.ACTIVE_STATES))
    newer: list[Turn] | None
    if not last:
        latest = turns.filter(on_path=True).order_by("-position")
        newer = list(reversed(latest[: settings.CHAT_VISIBLE_TURNS]))
    else:
        # The path's turns newer than the page's newest follow it (they descend from
        # it): the page's newest comes first, when it is still on the path.
        path = turns.filter(on_path=True, pk__gte=last).order_by("position")
        newer = list(path[: settings.CHAT_VISIBLE_TURNS + 1])
        newer = newer[1:] if newer and newer[0].pk == last else None
    return stale, newer, turns.filter(state__in=Turn.ACTIVE_STATES).first()


_TURN_ID = re.compile(r"[0-9]{1,18}", re.ASCII)


def _turn_id(value: Any) -> int | None:
    """A turn id from a frame: a non-negative int, or its plain ASCII digits."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and 0 <= value < 10**18:
        return value
    if isinstance(value, str) and _TURN_ID.fullmatch(value):
        return int(value)
    return None


ACTIONS = ("send", "retry", "edit", "switch")


def action_of(frame: dict[str, Any]) -> ReplyAction | None:
    """The reply a send, retry or edit frame asks for; None when it cannot be read."""
    kind, text, turn_id = frame.get("action") or "send", frame.get("message"), frame.get("turn")
    if kind == "send" and isinstance(text, str):
        return Send(text)
    if kind == "retry" and (turn := _turn_id(turn_id)) is not None:
        return Retry(turn)
    if kind == "edit" and isinstance(text, str) and (turn := _turn_id(turn_id)) is not None:
        return Edit(turn, text)
    return None


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
            "path.switched",
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
        self.credentials = SocketCredentials.from_scope(self.scope)
        self.group = conversation_group(conversation.pk)
        self.delivered: dict[int, int] = {}
        self.html_delivered: dict[int, int] = {}  # characters of rendered blocks
        self.awaiting_catchup: dict[int, float] = {}  # turn id: when it was asked for
        self.sent_chars = 0  # written to this socket; the page acknowledges what it read
        self.read_chars = 0
        self.closing = False
        if not await reached(
            CHANNEL_LAYER, self.channel_layer.group_add(self.group, self.channel_name)
        ):
            # The channel layer is down: refuse the handshake (the page retries with
            # backoff) rather than open a socket that would never hear a reply.
            await self.close()
            return
        # "Sign out everywhere" closes every socket of the person at once.
        await reached(
            CHANNEL_LAYER, self.channel_layer.group_add(user_group(user.pk), self.channel_name)
        )
        await self.accept()
        active = await database_sync_to_async(turn_active)(conversation_id=conversation.pk)
        if active is not None and active.state == Turn.State.STREAMING:
            await self._request_catchup(active.pk)

    async def disconnect(self, code: int) -> None:
        # The reply goes on without this socket.
        if hasattr(self, "group"):
            await reached(
                CHANNEL_LAYER, self.channel_layer.group_discard(self.group, self.channel_name)
            )
            await reached(
                CHANNEL_LAYER,
                self.channel_layer.group_discard(
                    user_group(self.credentials.user_id), self.channel_name
                ),
            )

    def _fits(self, html: str) -> bool:
        return len(html) < FRAME_CHARS_SURELY_SMALL or len(html.encode()) <= FRAME_BYTES

    async def send(
        self, text_data: str | None = None, bytes_data: bytes | None = None, close: bool = False
    ) -> None:
        """Every frame to the page; once more than CHAT_SOCKET_UNREAD_LIMIT characters
        wait unacknowledged, the socket is closed instead of buffering more (the
        page reconnects and catches up from the database)."""
        if text_data is not None:
            # Checked before adding this frame: one large frame (a long reply's final
            # rendering) always goes to a page that keeps up.
            if self.sent_chars - self.read_chars > settings.CHAT_SOCKET_UNREAD_LIMIT:
                if not self.closing:
                    self.closing = True
                    logger.warning(
                        "socket_unread_limit conversation=%s unread=%d",
                        self.conversation.pk,
                        self.sent_chars - self.read_chars,
                    )
                    await self.close(code=4408)
                return
            self.sent_chars += len(text_data)
            if not self._fits(text_data):
                logger.error("frame_too_large conversation=%s chars=%d", self.conversation.pk,
                             len(text_data))  # fmt: skip
                text_data = frame_too_large_fragment()
        await super().send(text_data=text_data, bytes_data=bytes_data, close=close)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Any frame at all gets an answer; none closes the socket except a revoked
        sign-in or a deleted conversation."""
        try:
            await self._receive(text_data)
        except SocketRevoked:
            await self.send(
                text_data=error_fragment("You were signed out. Reload the page to sign in again.")
            )
            await self.close(code=4401)
        except ConversationGone:
            await self.send(text_data=error_fragment("This conversation was deleted."))
            await self.close(code=4404)
        except Exception:
            logger.exception("frame_failed conversation=%s", self.conversation.pk)
            await self.send(
                text_data=error_fragment("Something went wrong on the server. Please try again.")
            )

    async def _receive(self, text_data: str | None) -> None:
        if text_data is None:
            await self.send(text_data=error_fragment("Only text frames are understood."))
            return
        if len(text_data.encode("utf-8", "surrogatepass")) > settings.CHAT_MAX_FRAME_BYTES:
            await self.send(text_data=error_fragment("That message is too large."))
            return
        try:
            frame = json.loads(text_data)
        except (ValueError, RecursionError):
            frame = None
        if not isinstance(frame, dict):
            await self.send(text_data=error_fragment("That message could not be read."))
            return
        kind = frame.get("action") or "send"
        if kind == "ack":
            self._ack(frame.get("received"))
        elif kind == "sync":
            await self._catch_up_page(frame.get("turns"), frame.get("last"))
        elif kind == "stop":
            await self._stop()
        elif kind not in ACTIONS:
            await self.send(text_data=error_fragment("Unknown action."))
        elif kind == "switch":
            turn_id = _turn_id(frame.get("turn"))
            if turn_id is None:
                await self.send(text_data=error_fragment("That message could not be read."))
            else:
                await self._switch(turn_id)
        elif (action := action_of(frame)) is not None:
            await self._start(action)
        elif kind == "send":
            await self.send(text_data=error_fragment("Type a message first."))
        else:
            await self.send(text_data=error_fragment("That message could not be read."))

    async def _start(self, action: ReplyAction) -> None:
        """Begin a reply; show every open page the turns, acknowledge this one.

        A refusal becomes an error fragment for this socket only. The runner is
        launched before anything else can fail, and the upstream request goes out
        first; the reply's first text waits until the pages have been sent its turn
        (`announced`), which happens even if rendering fails.
        """
        try:
            begun = await database_sync_to_async(_begin)(
                self.credentials, self.conversation.pk, action
            )
        except SendRefused as exc:
            await self.send(text_data=error_fragment(exc.message))
            return
        except ValidationError as exc:
            await self.send(text_data=error_fragment(" ".join(exc.messages)))
            return
        self.conversation = begun.conversation
        try:
            runner = await reply_launch(turn=begun.reply, request=begun.request)
        finally:
            reply_not_starting(begun.reply.pk)
        try:
            await asyncio.sleep(0)  # let the runner send the upstream request now
            html = turns_fragment(
                conversation=begun.conversation,
                added=begun.added,
                changed=begun.changed,
                removed=begun.removed,
                active_turn=begun.reply,
            )
            created = {"type": "turn.created", "html": html}
            if not await reached(CHANNEL_LAYER, self.channel_layer.group_send(self.group, created)):
                # The layer is down: this page at least sees its turns; the others
                # when they reconnect. The reply is written all the same.
                await self.send(text_data=html)
        finally:
            runner.announced.set()
        await self.send(text_data=ack_fragment(begun.warnings))

    async def _switch(self, turn_id: int) -> None:
        """Show another version: every page of the conversation loads the new path."""
        try:
            await database_sync_to_async(_switch)(self.credentials, self.conversation.pk, turn_id)
        except SendRefused as exc:
            await self.send(text_data=error_fragment(exc.message))
            return
        switched = {"type": "path.switched", "html": path_fragment(self.conversation.pk)}
        if not await reached(CHANNEL_LAYER, self.channel_layer.group_send(self.group, switched)):
            # The layer is down: this page follows now, the others when they reconnect.
            await self.send(text_data=switched["html"])

    async def _stop(self) -> None:
        # Both paths, so Stop works whichever process runs the reply: the channel
        # layer reaches the runner at once, the database flag at its next heartbeat.
        active = await database_sync_to_async(_stop_reply)(self.credentials, self.conversation.pk)
        if active is not None:  # if the layer is down, the database flag still stops it
            await reached(
                CHANNEL_LAYER,
                self.channel_layer.group_send(
                    control_group(self.conversation.pk), {"type": "reply.stop"}
                ),
            )

    def _ack(self, received: Any) -> None:
        if isinstance(received, int) and not isinstance(received, bool):
            self.read_chars = max(self.read_chars, min(received, self.sent_chars))

    async def _catch_up_page(self, shown: Any, last: Any) -> None:
        """A page that (re)connected names the turns it shows as still being written
        and its newest turn: it gets their stored truth and the turns it missed."""
        ids = [i for i in map(_turn_id, shown if isinstance(shown, list) else []) if i is not None]
        stale, newer, active = await database_sync_to_async(_turns_to_sync)(
            self.credentials, self.conversation.pk, ids[:SYNC_TURNS], _turn_id(last)
        )
        if newer is None:
            # The page shows a version no longer on the path: it loads the path again
            # (and then syncs again).
            await self.send(text_data=path_fragment(self.conversation.pk))
            return
        if stale or newer:
            await self.send(
                text_data=turns_fragment(
                    conversation=self.conversation, added=newer, changed=stale, active_turn=active
                )
            )
        streaming = active is not None and active.state == Turn.State.STREAMING
        if streaming and active.pk not in self.awaiting_catchup:
            await self._request_catchup(active.pk)

    async def _request_catchup(self, turn_id: int) -> None:
        self.awaiting_catchup[turn_id] = asyncio.get_running_loop().time()
        snapshot = {"type": "reply.snapshot", "reply_channel": self.channel_name}
        if not await reached(
            CHANNEL_LAYER,
            self.channel_layer.group_send(control_group(self.conversation.pk), snapshot),
        ):
            self.awaiting_catchup.pop(turn_id, None)  # ask again at the next gap

    # --- group messages ----------------------------------------------------

    async def user_revoked(self, event: dict[str, Any]) -> None:
        await self.send(
            text_data=error_fragment("You were signed out. Reload the page to sign in again.")
        )
        await self.close(code=4401)

    async def conversation_titled(self, event: dict[str, Any]) -> None:
        """One of the person's conversations has a new title (written by the model, or
        renamed in another tab): this page's header if it shows it, and its sidebar."""
        current = event["conversation_id"] == str(self.conversation.pk)
        if current:
            self.conversation.title = event["title"]
        sidebar = await database_sync_to_async(sidebar_page_for)(user=self.scope["user"])
        await self.send(
            text_data=title_fragment(
                title=event["title"],
                current=current,
                sidebar=sidebar,
                sidebar_current=str(self.conversation.pk),
            )
        )

    async def turn_created(self, event: dict[str, Any]) -> None:
        await self.send(text_data=event["html"])

    async def path_switched(self, event: dict[str, Any]) -> None:
        await self.send(text_data=event["html"])

    async def reply_state(self, event: dict[str, Any]) -> None:
        self.delivered[event["turn_id"]] = 0
        self.html_delivered[event["turn_id"]] = 0
        await self.send(text_data=event["html"])

    async def reply_delta(self, event: dict[str, Any]) -> None:
        turn_id, offset, text = event["turn_id"], event["offset"], event["text"]
        asked = self.awaiting_catchup.get(turn_id)
        if asked is not None:
            if asyncio.get_running_loop().time() - asked < 2.0:
                return  # the catch-up text will cover this piece
            # No answer: the request (or its answer) was lost in a layer outage.
            await self._request_catchup(turn_id)
            return
        have = self.delivered.get(turn_id, 0)
        end = offset + len(text)
        if end < have or (end == have and (text or event.get("tail") is None)):
            return  # already shown (a piece without text only renders the tail again)
        if offset > have:
            # A piece went missing (a full channel): fetch the whole text again.
            await self._request_catchup(turn_id)
            return
        if event.get("html_offset", 0) > self.html_delivered.get(turn_id, 0):
            await self._request_catchup(turn_id)  # rendered blocks went missing
            return
        self.delivered[turn_id] = end
        text = text[have - offset :]
        view = self._view_frames(turn_id, event)
        if len(text) < CATCHUP_CHARS and len(view) == 1 and len(view[0]) < VIEW_CHARS:
            # The usual case: the piece of text and its rendering in one frame.
            piece = text_fragment(turn_id, text, replace=False) if text else ""
            await self.send(text_data=piece + view[0])
            return
        for start in range(0, len(text), CATCHUP_CHARS):  # one frame, but for huge pieces
            piece = text[start : start + CATCHUP_CHARS]
            await self.send(text_data=text_fragment(turn_id, piece, replace=False))
        for frame in view:
            await self.send(text_data=frame)

    def _view_frames(self, turn_id: int, event: dict[str, Any]) -> list[str]:
        """The rendered Markdown of a piece this page has not shown yet: the blocks it
        lacks (appended) and the new tail, in frames below the size limit."""
        blocks, tail = event.get("blocks") or [], event.get("tail")
        have = self.html_delivered.get(turn_id, 0)
        at = event.get("html_offset", 0)
        self.html_delivered[turn_id] = at + sum(map(len, blocks))
        if at == have and event.get("view") is not None:
            return [event["view"]]  # rendered once by the runner for every page in step
        while blocks and at < have:  # a piece sent again after a failed publish
            at += len(blocks[0])
            blocks = blocks[1:]
        return self._view_split(turn_id, blocks, tail, whole=False)

    def _view_split(
        self, turn_id: int, blocks: list[str], tail: str | None, *, whole: bool
    ) -> list[str]:
        """Rendered blocks and tail as frames: `whole` replaces the page's view with the
        first, the others append; none needs more than VIEW_CHARS characters."""
        frames: list[str] = []
        group: list[str] = []
        size = 0
        for block in [*blocks, None]:
            if block is not None and len(block) >= VIEW_CHARS and not self._fits(block + " " * 500):
                block = TOO_LARGE_BLOCK
            if block is None or (group and size + len(block) > VIEW_CHARS):
                if group or (whole and not frames):
                    first = whole and not frames
                    frames.append(stream_view_fragment(turn_id, "".join(group), None, whole=first))
                group, size = [], 0
            if block is not None:
                group.append(block)
                size += len(block)
        if tail is not None:
            if len(tail) >= VIEW_CHARS and not self._fits(tail + " " * 500):
                tail = TOO_LARGE_BLOCK
            frames.append(stream_view_fragment(turn_id, "", tail, whole=False))
        return frames

    async def reply_catchup(self, event: dict[str, Any]) -> None:
        turn_id, text = event["turn_id"], event["text"]
        self.awaiting_catchup.pop(turn_id, None)
        self.delivered[turn_id] = len(text)
        # A long reply's text goes in several frames: one frame stays below daphne's limit.
        for start in range(0, max(len(text), 1), CATCHUP_CHARS):
            piece = text[start : start + CATCHUP_CHARS]
            await self.send(text_data=text_fragment(turn_id, piece, replace=start == 0))
        blocks = event.get("blocks") or []
        self.html_delivered[turn_id] = sum(map(len, blocks))
        for frame in self._view_split(turn_id, blocks, event.get("tail") or "", whole=True):
            await self.send(text_data=frame)

    async def reply_finished(self, event: dict[str, Any]) -> None:
        turn_id = event["turn_id"]
        self.delivered.pop(turn_id, None)
        self.html_delivered.pop(turn_id, None)
        self.awaiting_catchup.pop(turn_id, None)
        html = event["html"]
        if not self._fits(html):
            # A very long reply's rendering is more than one frame may carry: the
            # page shows its state at once and loads the rendering over HTTP.
            html = deferred_turn_fragment(
                conversation_id=self.conversation.pk, turn_id=turn_id, state=event.get("state", "")
            )
        await self.send(text_data=html)
