"""The server-side reply runner: one task per reply, independent of any socket.

It streams the provider's events, sends text to the conversation's channel group
in coalesced pieces (each with its character offset, so a page can catch up
without gaps or doubles) together with the text's Markdown rendering (finished
blocks once, each with its offset in the rendered HTML, and the unfinished tail
again; rendered here, once per piece, for every page in every process),
checkpoints the text to the database a few times a second, listens for stop
and catch-up requests on the channel layer, and records the final state
exactly once.
"""

import asyncio
import contextvars
import logging
import uuid
import weakref
from collections.abc import Iterator
from contextlib import aclosing
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from chatsite.outages import (
    CHANNEL_LAYER,
    DATABASE,
    DATABASE_ERRORS,
    outage_over,
    outage_seen,
    reached,
)

from .fragments import final_fragment, stream_view_fragment, turn_fragment
from .gateway import (
    ChatRequest,
    Finished,
    Provider,
    ReplyError,
    Response,
    TextDelta,
    provider_for,
)
from .models import Turn
from .rendering import MarkdownUpdate, StreamingMarkdown
from .selectors import turns_shown
from .services import (
    INTERRUPTED_MESSAGE,
    ReplyOutcome,
    reply_finish,
    reply_request,
    reply_start,
    turn_checkpoints,
)
from .titles import title_write_later

logger = logging.getLogger("conversations.replies")

_running: dict[int, "ReplyRunner"] = {}
# Final broadcasts still being retried while the channel layer is down.
_pending_broadcasts: set[asyncio.Task[None]] = set()
# How long a streaming reply's text may pause before its tail is rendered with
# whatever little it grew (see ReplyView).
TAIL_REFRESH = 0.5
# Replies this process has started in the database whose runner is not registered
# yet (written from the database thread, read by the sweep there).
_starting: set[int] = set()


def conversation_group(conversation_id: uuid.UUID | str) -> str:
    """Every open socket of a conversation listens here."""
    return f"conversation.{conversation_id}"


def control_group(conversation_id: uuid.UUID | str) -> str:
    """The runner of a conversation's reply listens here for stop and catch-up requests."""
    return f"reply-control.{conversation_id}"


class CheckpointBatcher:
    """Every checkpoint due in this process goes to the database in one visit.

    While one batch is being written, the next collects; so a hundred replies
    streaming at once cost a few transactions a second, not a few hundred.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._due: dict[int, tuple[str | None, asyncio.Future[bool]]] = {}
        self._writer: asyncio.Task[None] | None = None

    def save(self, turn_id: int, content: str | None) -> asyncio.Future[bool]:
        """Resolves to whether the reply was saved (`turn_checkpoints`)."""
        # One checkpoint in flight per reply (`ReplyRunner._start_checkpoint`), so a
        # reply is never due twice.
        future: asyncio.Future[bool] = self._loop.create_future()
        self._due[turn_id] = (content, future)
        if self._writer is None or self._writer.done():
            self._writer = self._loop.create_task(self._write())
        return future

    async def _write(self) -> None:
        while self._due:
            batch, self._due = self._due, {}
            contents = {turn_id: content for turn_id, (content, _) in batch.items()}
            try:
                saved = await database_sync_to_async(turn_checkpoints)(contents=contents)
            except DATABASE_ERRORS as exc:
                outage_seen(DATABASE, exc)
                for _, future in batch.values():
                    if not future.done():
                        future.set_exception(exc)
                continue
            except Exception as exc:
                logger.exception("checkpoint_failed replies=%d", len(batch))
                for _, future in batch.values():
                    if not future.done():
                        future.set_exception(exc)
                continue
            outage_over(DATABASE)
            for turn_id, (_, future) in batch.items():
                if not future.done():
                    future.set_result(turn_id in saved)


_batchers: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, CheckpointBatcher]" = (
    weakref.WeakKeyDictionary()
)


def _checkpoints_for(loop: asyncio.AbstractEventLoop) -> CheckpointBatcher:
    batcher = _batchers.get(loop)
    if batcher is None:
        batcher = _batchers[loop] = CheckpointBatcher(loop)
    return batcher


class ReplyRunner:
    """Runs one reply.

    With `request` the reply is already streaming in the database and its
    upstream request was built by whoever launched it, who then shows the pages the
    new turns and sets `announced`: the runner's first message to the group
    waits for that, so pages always see the turn before its text. Without,
    the runner starts the reply and announces it itself.
    """

    def __init__(
        self, *, turn: Turn, provider: Provider | None = None, request: ChatRequest | None = None
    ) -> None:
        self.turn_id = turn.pk
        self.request = request
        self.announced = asyncio.Event()
        if request is None:
            self.announced.set()
        self.conversation_id = turn.conversation_id
        self.turn = turn
        self.provider = provider or provider_for(turn.model)
        self.layer = get_channel_layer()
        self.group = conversation_group(self.conversation_id)
        self.response = Response()
        self.sent = 0  # characters already sent to the group
        self.view = ReplyView()
        self.stop_requested = False
        self.interrupting = False
        self.finishing = False  # the outcome is decided: nothing may cancel the final write
        self.task: asyncio.Task[None] | None = None
        self._loop = asyncio.get_running_loop()
        self._last_flush = 0.0
        self._flush_timer: asyncio.TimerHandle | None = None
        self._refresh_timer: asyncio.TimerHandle | None = None
        self._last_checkpoint = 0.0
        self._checkpoint: asyncio.Task[bool] | None = None
        self._saved_length = 0
        self._control = ""
        self._flush_lock = asyncio.Lock()
        self._flush_task: asyncio.Task[None] | None = None

    @property
    def text(self) -> str:
        return self.response.text

    @property
    def length(self) -> int:
        return self.response.length

    # --- lifecycle --------------------------------------------------------

    async def start(self) -> asyncio.Task[None]:
        """Listen for control messages, then run the reply in its own task.

        Subscribing first means a page that sees this reply streaming can always
        reach its runner for catch-up. While the channel layer is down the reply
        runs all the same (it needs only the upstream and the database; Stop then
        arrives through the database) and the runner keeps trying to subscribe.
        """
        await self._subscribe()
        # A context of its own: the reply outlives whatever started it, and an HTTP
        # request's context carries a database thread of that request's own (Django's
        # ThreadSensitiveContext), which ends with the response.
        self.task = self._loop.create_task(
            self.run(), name=f"reply-{self.turn_id}", context=contextvars.Context()
        )
        _running[self.turn_id] = self
        _starting.discard(self.turn_id)
        self.task.add_done_callback(lambda _: _running.pop(self.turn_id, None))
        return self.task

    async def run(self) -> None:
        helpers = [
            self._loop.create_task(self._listen()),
            self._loop.create_task(self._heartbeat()),
        ]
        try:
            outcome = await self._stream()
        except asyncio.CancelledError:
            if not (self.stop_requested or self.interrupting):
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            if self.interrupting:
                outcome = self._outcome(Turn.State.INTERRUPTED, error=INTERRUPTED_MESSAGE)
            else:
                outcome = self._outcome(Turn.State.CANCELLED, stop_reason="cancelled")
        except Exception:
            logger.exception("reply_failed turn=%s", self.turn_id)
            outcome = self._outcome(Turn.State.ERROR, error="Something went wrong on the server.")
        finally:
            self.finishing = True
            for helper in helpers:
                helper.cancel()
            self._cancel_flush_timer()
        try:
            await self._finish(outcome)
        finally:
            if self._control:
                await reached(
                    CHANNEL_LAYER,
                    self.layer.group_discard(control_group(self.conversation_id), self._control),
                )

    async def _stream(self) -> ReplyOutcome:
        request = self.request
        if request is None:
            if not await database_sync_to_async(reply_start)(turn_id=self.turn_id):
                return self._outcome(Turn.State.CANCELLED)
            await self._broadcast_state()
            request = await database_sync_to_async(reply_request)(turn=self.turn)
        self._last_checkpoint = self._loop.time()
        async with aclosing(self.provider.stream(request)) as events:
            async for event in events:
                self.response.add(event)
                if isinstance(event, TextDelta):
                    await self._text_arrived()
                elif isinstance(event, Finished):
                    return self._outcome(Turn.State.COMPLETE)
                elif isinstance(event, ReplyError):
                    logger.warning(
                        "reply_error turn=%s kind=%s status=%s code=%s log_id=%s",
                        self.turn_id,
                        event.kind,
                        event.status,
                        event.code,
                        self.response.log_id,
                    )
                    return self._outcome(Turn.State.ERROR, error=event.message)
        return self._outcome(Turn.State.ERROR, error="The reply ended before it was complete.")

    def stop(self) -> None:
        """Stop the reply; the text so far is kept and the reply ends `cancelled`."""
        if self._may_cancel():
            self.stop_requested = True
            self.task.cancel()  # type: ignore[union-attr]

    def interrupt(self) -> None:
        """The server is shutting down: keep the text, end the reply `interrupted`."""
        if self._may_cancel():
            self.interrupting = True
            self.task.cancel()  # type: ignore[union-attr]

    def _may_cancel(self) -> bool:
        # Once, and never after the outcome is decided: a cancel then would land in
        # the final write (a Stop, the shutdown drain, or a checkpoint that found the
        # reply stopped elsewhere) and leave the reply streaming until the sweep.
        return (
            self.task is not None
            and not self.task.done()
            and not (self.stop_requested or self.interrupting or self.finishing)
        )

    def _outcome(self, state: str, *, error: str = "", stop_reason: str = "") -> ReplyOutcome:
        return ReplyOutcome(
            state=state,
            content=self.text,
            error_message=error,
            stop_reason=stop_reason or self.response.stop_reason,
            input_tokens=self.response.usage.input_tokens,
            output_tokens=self.response.usage.output_tokens,
            gateway_log_id=self.response.log_id,
        )

    async def _finish(self, outcome: ReplyOutcome) -> None:
        """Record the final state first, whatever the channel layer does; then tell pages.

        The final write is retried while the database is down (the whole text is
        here, in memory); the pages are told once the channel layer answers again.
        """
        if self._checkpoint is not None:
            await asyncio.gather(self._checkpoint, return_exceptions=True)
        await self._flush()
        turn = await self._write_final(outcome)
        if turn is None:
            return
        await self.announced.wait()
        if not await reached(CHANNEL_LAYER, reply_broadcast_final(turn)):
            broadcast_final_later(turn)
        title_write_later(turn=turn)  # a conversation's first reply: its title

    async def _write_final(self, outcome: ReplyOutcome) -> Turn | None:
        delays = backoff(settings.CHAT_FINAL_WRITE_PATIENCE, longest=4.0)
        while True:
            try:
                turn = await database_sync_to_async(reply_finish)(
                    turn_id=self.turn_id, outcome=outcome
                )
                if turn is None:
                    # Someone else ended it (another process, or a sweep): show what is stored.
                    turn = await database_sync_to_async(
                        turns_shown(Turn.objects.filter(pk=self.turn_id)).get
                    )()
            except DATABASE_ERRORS as exc:
                outage_seen(DATABASE, exc)
                delay = next(delays, None)
                if delay is None:
                    logger.error(
                        "final_write_failed turn=%s state=%s chars=%d",
                        self.turn_id,
                        outcome.state,
                        len(outcome.content),
                    )
                    return None
                await asyncio.sleep(delay)
                continue
            outage_over(DATABASE)
            return turn

    async def _broadcast_state(self) -> None:
        self.turn.state = Turn.State.STREAMING
        html = turn_fragment(self.turn, oob=True)
        await self._publish({"type": "reply.state", "turn_id": self.turn_id, "html": html})

    async def _publish(self, message: dict[str, Any]) -> bool:
        """Send to the conversation's pages; False (never an exception) when the layer
        is down: the database holds the text, and pages catch up from it."""
        return await reached(CHANNEL_LAYER, self.layer.group_send(self.group, message))

    # --- text: coalesced sends and batched checkpoints ---------------------

    async def _text_arrived(self) -> None:
        now = self._loop.time()
        interval = flush_interval()
        if now - self._last_flush >= interval:
            await self._flush()
        elif self._flush_timer is None:
            delay = self._last_flush + interval - now
            self._flush_timer = self._loop.call_later(delay, self._flush_soon)
        if now - self._last_checkpoint >= settings.CHAT_CHECKPOINT_INTERVAL:
            self._start_checkpoint()

    def _start_checkpoint(self) -> None:
        """At most one checkpoint write in flight; the text goes only when it grew."""
        if self._checkpoint is not None and not self._checkpoint.done():
            return
        self._last_checkpoint = self._loop.time()
        content = None
        if self.length != self._saved_length:
            content, self._saved_length = self.text, self.length
        self._checkpoint = self._loop.create_task(self._save_checkpoint(content))

    async def _save_checkpoint(self, content: str | None) -> bool:
        try:
            saved = await _checkpoints_for(self._loop).save(self.turn_id, content)
        except Exception:
            # The database is down (logged once by the batcher): the reply goes on,
            # its text in memory; the next checkpoint writes all of it.
            self._saved_length = -1
            return True
        if not saved:
            # Stop was pressed in a page of another process, or the reply was ended
            # elsewhere: either way this runner stops, keeping its text.
            self.stop()
        return saved

    async def _heartbeat(self) -> None:
        """Checkpoints even while no text arrives, so a live reply never looks stale."""
        interval = settings.CHAT_HEARTBEAT_INTERVAL
        while True:
            await asyncio.sleep(interval)
            if self._loop.time() - self._last_checkpoint >= interval:
                self._start_checkpoint()

    def _cancel_flush_timer(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self._refresh_timer is not None and self.finishing:
            self._refresh_timer.cancel()
            self._refresh_timer = None

    def _flush_soon(self) -> None:
        self._flush_timer = None
        self._flush_task = self._loop.create_task(self._flush())

    def _refresh_soon(self) -> None:
        self._refresh_timer = None
        if not self.finishing:
            self._flush_task = self._loop.create_task(self._flush(refresh=True))

    async def _flush(self, *, refresh: bool = False) -> None:
        # Serialised, so pieces reach the group in offset order.
        async with self._flush_lock:
            self._cancel_flush_timer()
            self._last_flush = self._loop.time()
            if self.sent >= self.length and not (refresh and self.view.refresh()):
                return
            if not self.announced.is_set():
                await self.announced.wait()
            start, end = self.sent, self.length
            text = self.text
            piece = text[start:end]
            self.view.render(text, end)
            if self.view.markdown.behind and self._refresh_timer is None:
                # The tail was not rendered again (it grew too little for its length):
                # if no text follows soon, show what it has then.
                self._refresh_timer = self._loop.call_later(TAIL_REFRESH, self._refresh_soon)
            # `sent` moves only once the piece is out: after a failed publish the
            # next piece starts where pages stopped (they skip what they have); so
            # do the rendered blocks.
            message = {"type": "reply.delta", "turn_id": self.turn_id, "offset": start,
                       "text": piece, **self.view.unsent(self.turn_id)}  # fmt: skip
            if await self._publish(message):
                self.sent = end
                self.view.sent(message)

    # --- control: stop and catch-up from any process ------------------------

    async def _subscribe(self) -> bool:
        """Listen on the reply's control group; False while the layer is down."""
        try:
            if not self._control:
                self._control = await self.layer.new_channel()
            await self.layer.group_add(control_group(self.conversation_id), self._control)
        except Exception as exc:
            outage_seen(CHANNEL_LAYER, exc)
            self._control = ""  # a channel half made is not reused
            return False
        return True

    async def _listen(self) -> None:
        subscribed = bool(self._control)
        while not subscribed:  # the layer was down at start: keep trying
            await asyncio.sleep(1.0)
            subscribed = await self._subscribe()
        while True:
            message: dict[str, Any] = await self.layer.receive(self._control)
            kind = message.get("type")
            if kind == "reply.stop":
                self.stop()
            elif kind == "reply.snapshot" and message.get("reply_channel"):
                # Everything sent to the group so far is covered by this text.
                await self._flush()
                self.view.refresh()  # the page that asks sees all the text rendered
                catchup = {
                    "type": "reply.catchup",
                    "turn_id": self.turn_id,
                    "text": self.text,
                    "blocks": list(self.view.blocks),
                    "tail": self.view.tail,
                }
                # If the layer is down, the page asks again at its next gap.
                await reached(CHANNEL_LAYER, self.layer.send(message["reply_channel"], catchup))


class ReplyView:
    """A streaming reply's Markdown as pages show it: the finished blocks (each
    rendered once) and the unfinished tail, and how much of it the group was sent."""

    # A prebuilt fragment for pages in step is sent along when below this size;
    # larger ones each page splits itself (consumers.VIEW_CHARS).
    PREBUILT_CHARS = 200_000

    def __init__(self) -> None:
        self.markdown = StreamingMarkdown()
        self.rendered = 0  # characters of text given to `markdown`
        self.blocks: list[str] = []
        self.tail = ""
        self._blocks_sent = 0
        self._html_sent = 0  # characters of block HTML the group was sent
        self._tail_sent = True

    def render(self, text: str, end: int) -> None:
        if end <= self.rendered:
            return
        update = self.markdown.feed(text[self.rendered : end])
        self.rendered = end
        self._take(update)

    def refresh(self) -> bool:
        """Show all the text in the tail (the text paused); False if it already does."""
        if not self.markdown.behind:
            return False
        self._take(self.markdown.refresh())
        return True

    def _take(self, update: MarkdownUpdate) -> None:
        self.blocks += update.blocks
        if update.tail is not None:
            self.tail = update.tail
            self._tail_sent = False

    def unsent(self, turn_id: int) -> dict[str, Any]:
        """The part of a group message that carries what pages have not been sent."""
        blocks = self.blocks[self._blocks_sent :]
        tail = None if self._tail_sent else self.tail
        part: dict[str, Any] = {"html_offset": self._html_sent, "blocks": blocks, "tail": tail}
        if (blocks or tail is not None) and (
            sum(map(len, blocks)) + len(tail or "") < self.PREBUILT_CHARS
        ):
            part["view"] = stream_view_fragment(turn_id, "".join(blocks), tail, whole=False)
        return part

    def sent(self, message: dict[str, Any]) -> None:
        self._blocks_sent += len(message["blocks"])
        self._html_sent += sum(map(len, message["blocks"]))
        if message["tail"] is not None:
            self._tail_sent = True


async def reply_broadcast_final(turn: Turn) -> None:
    """Show every open page of the conversation the reply's final state."""
    html = final_fragment(turn)
    await get_channel_layer().group_send(
        conversation_group(turn.conversation_id),
        {"type": "reply.finished", "turn_id": turn.pk, "state": turn.state, "html": html},
    )


def backoff(patience: float, *, longest: float) -> Iterator[float]:
    """The waits of a retry loop while a dependency is down: 0.25 s, doubling up to
    `longest`, until `patience` seconds are spent."""
    delay, waited = 0.25, 0.0
    while waited < patience:
        yield delay
        waited += delay
        delay = min(delay * 2, longest)


def broadcast_final_later(turn: Turn) -> None:
    """Keep trying to show pages a reply's final state while the channel layer is
    down (pages that reconnect meanwhile get it from the database)."""

    async def retry() -> None:
        for delay in backoff(settings.CHAT_FINAL_BROADCAST_PATIENCE, longest=2.0):
            await asyncio.sleep(delay)
            if await reached(CHANNEL_LAYER, reply_broadcast_final(turn)):
                return
        logger.warning("final_broadcast_gave_up turn=%s", turn.pk)

    task = asyncio.get_running_loop().create_task(retry(), name=f"final-{turn.pk}")
    _pending_broadcasts.add(task)
    task.add_done_callback(_pending_broadcasts.discard)


def flush_interval() -> float:
    """How long a reply gathers text before sending a piece to its pages.

    CHAT_FLUSH_INTERVAL, stretched so that all of this process's replies together
    send at most CHAT_PIECES_PER_SECOND pieces. Without the stretch an overloaded
    process makes every reply slower, so each sends more and smaller pieces, which
    costs more: at 500 chats on one process that spiral doubled the CPU per reply.
    """
    return max(settings.CHAT_FLUSH_INTERVAL, len(_running) / settings.CHAT_PIECES_PER_SECOND)


def replies_running() -> list[ReplyRunner]:
    return list(_running.values())


def reply_starting(turn_id: int) -> None:
    """This process is about to run the reply (call in the database-thread visit that
    starts it): no sweep here takes it for a dead process's reply while its runner
    is being launched."""
    _starting.add(turn_id)


def reply_not_starting(turn_id: int) -> None:
    """The launch did not happen after all."""
    _starting.discard(turn_id)


def replies_alive() -> set[int]:
    """Every reply this process is running or launching; safe from any thread."""
    return set(_running) | set(_starting)


async def reply_launch(
    *, turn: Turn, provider: Provider | None = None, request: ChatRequest | None = None
) -> ReplyRunner:
    """Start writing a reply in its own task on the running loop (see `ReplyRunner`)."""
    runner = ReplyRunner(turn=turn, provider=provider, request=request)
    await runner.start()
    return runner
