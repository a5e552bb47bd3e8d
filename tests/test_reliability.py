"""Reliability inside one process: retry, stop through the database, sweeps, drains,
rate limits and bounded database writes (the live fault tests are in test_faults.py)."""

import asyncio
import json
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from django.db import connection
from django.utils import timezone

from conversations.gateway import Finished, ReplyError, ResponseStarted, TextDelta, Usage
from conversations.gateway.fake import Pause
from conversations.models import Turn
from conversations.replies import reply_launch, reply_not_starting, reply_starting
from conversations.services import message_send, reply_start, reply_stop_request
from conversations.supervision import replies_drain, replies_sweep_once
from tests.conftest import frames_until, get_turns, open_chat_socket, wait_until_async

pytestmark = pytest.mark.django_db(transaction=True)


async def wait_state(turn_id: int, states: set[str], timeout: float = 5) -> Turn:
    async def reached() -> Turn | None:
        turn = await database_sync_to_async(Turn.objects.get)(pk=turn_id)
        return turn if turn.state in states else None

    return await wait_until_async(reached, timeout, what=f"turn {turn_id} {states}")


async def test_retry_writes_the_reply_again_and_keeps_the_failed_text(
    conversation, user, fake_provider
):
    fake_provider.script = [ResponseStarted(), TextDelta("half"), ReplyError("Overloaded.")]
    communicator = await open_chat_socket(conversation, user)
    await communicator.send_to(text_data=json.dumps({"message": "q"}))
    frames = await frames_until(communicator, r'data-state="error"')
    assert ">Retry</span></button>" in frames[-1]
    failed = (await get_turns(conversation))[1]
    fake_provider.script = fake_provider.reply("whole answer")
    await communicator.send_to(text_data=json.dumps({"action": "retry", "turn": str(failed.pk)}))
    await frames_until(communicator, r'data-state="complete"')
    turns = await get_turns(conversation)
    assert [(t.state, t.content, t.on_path) for t in turns] == [
        ("complete", "q", True),
        ("error", "half", False),  # what it wrote stays, as the first version
        ("complete", "whole answer", True),
    ]
    assert turns[1].pk == failed.pk and turns[2].error_message == ""
    # Only the last reply can be written again.
    await communicator.send_to(text_data=json.dumps({"action": "retry", "turn": str(turns[0].pk)}))
    assert "Only the last reply" in await communicator.receive_from(timeout=5)
    await communicator.send_to(text_data=json.dumps({"action": "retry", "turn": "x"}))
    assert "could not be read" in await communicator.receive_from(timeout=5)
    await communicator.disconnect()


async def test_stop_through_the_database_reaches_the_runner(
    conversation, user, fake_provider, settings
):
    # As when Stop is pressed in a page served by another process whose channel
    # message is lost: the flag in the database is enough.
    settings.CHAT_HEARTBEAT_INTERVAL = 0.05
    fake_provider.script = [ResponseStarted(), TextDelta("kept"), Pause(30), Finished()]
    page = await open_chat_socket(conversation, user)
    _, reply = await database_sync_to_async(message_send)(conversation=conversation, text="go")
    await reply_launch(turn=reply)
    await frames_until(page, "kept")  # the reply is under way (and then waits upstream)
    await database_sync_to_async(reply_stop_request)(conversation_id=conversation.pk)
    turn = await wait_state(reply.pk, {"cancelled"}, timeout=3)
    assert turn.content == "kept"
    await page.disconnect()


async def test_shutdown_drain_interrupts_long_replies_keeping_text(
    conversation, user, fake_provider
):
    fake_provider.script = [ResponseStarted(), TextDelta("so far"), Pause(30), Finished()]
    page = await open_chat_socket(conversation, user)
    _, reply = await database_sync_to_async(message_send)(conversation=conversation, text="go")
    await reply_launch(turn=reply)
    await frames_until(page, "so far")  # the reply is under way (and then waits upstream)
    await replies_drain(grace=0.1)
    turn = await wait_state(reply.pk, {"interrupted"})
    assert turn.content == "so far"
    assert "server stopped" in turn.error_message
    await page.disconnect()


async def test_shutdown_drain_lets_short_replies_finish(conversation, fake_provider):
    fake_provider.script = [
        ResponseStarted(),
        TextDelta("done "),
        Pause(0.2),
        TextDelta("soon"),
        Usage(1, 2),
        Finished(),
    ]
    _, reply = await database_sync_to_async(message_send)(conversation=conversation, text="go")
    await reply_launch(turn=reply)
    await replies_drain(grace=5)
    turn = await wait_state(reply.pk, {"complete"})
    assert turn.content == "done soon"


def make_stale(turn_id: int, seconds: float) -> None:
    Turn.objects.filter(pk=turn_id).update(
        heartbeat_at=timezone.now() - timedelta(seconds=seconds),
        created_at=timezone.now() - timedelta(seconds=seconds),
    )


async def test_sweep_marks_replies_of_dead_processes_interrupted(conversation, user, settings):
    settings.CHAT_STALE_AFTER = 15
    _, dead = await database_sync_to_async(message_send)(conversation=conversation, text="a")
    await database_sync_to_async(reply_start)(turn_id=dead.pk)
    await database_sync_to_async(Turn.objects.filter(pk=dead.pk).update)(content="partial")
    await database_sync_to_async(make_stale)(dead.pk, 60)
    communicator = await open_chat_socket(conversation, user)
    assert await replies_sweep_once() == 1
    frames = await frames_until(communicator, r'data-state="interrupted"')
    assert ">Retry</span></button>" in frames[-1]
    turn = await database_sync_to_async(Turn.objects.get)(pk=dead.pk)
    assert (turn.state, turn.content) == ("interrupted", "partial")
    assert [t.content for t in await get_turns(conversation)] == ["a", "partial"]
    await communicator.disconnect()


async def test_sweep_leaves_live_replies_alone(conversation):
    _, live = await database_sync_to_async(message_send)(conversation=conversation, text="a")
    await database_sync_to_async(reply_start)(turn_id=live.pk)
    assert await replies_sweep_once() == 0
    assert (await database_sync_to_async(Turn.objects.get)(pk=live.pk)).state == "streaming"


async def test_sends_over_the_rate_limit_are_refused(conversation, user, fake_provider, settings):
    settings.CHAT_SEND_RATE_LIMIT = 2
    fake_provider.script = fake_provider.reply("ok")
    communicator = await open_chat_socket(conversation, user)
    for text in ("one", "two"):
        await communicator.send_to(text_data=json.dumps({"message": text}))
        await frames_until(communicator, r'data-state="complete"')
    await communicator.send_to(text_data=json.dumps({"message": "three"}))
    assert "too quickly" in (await frames_until(communicator, "too quickly"))[-1]
    assert [t.content for t in await get_turns(conversation)] == ["one", "ok", "two", "ok"]
    await communicator.disconnect()


CHECKPOINT_HEARTBEAT = (
    'UPDATE "conversations_turn" SET "heartbeat_at" = %s WHERE "conversations_turn"."id" IN'
)
CHECKPOINT_TEXTS = 'UPDATE "conversations_turn" SET "content" = CASE WHEN'


class WriteCounter:
    def __init__(self) -> None:
        self.writes: list[str] = []

    def __call__(self, execute, sql, params, many, context):
        if sql.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE")):
            self.writes.append(sql)
        return execute(sql, params, many, context)


@pytest.mark.parametrize("tokens", [200, 4000])
async def test_database_writes_are_bounded_by_duration_not_tokens(
    conversation, user, fake_provider, settings, tokens
):
    settings.CHAT_CHECKPOINT_INTERVAL = 0.25
    duration = 1.5
    script: list = [ResponseStarted()]
    for n in range(tokens):
        script.append(TextDelta(f"t{n} "))
        if n % (tokens // 30) == 0:
            script.append(Pause(duration / 30))
    fake_provider.script = [*script, Usage(1, tokens), Finished()]
    communicator = await open_chat_socket(conversation, user)
    counter = WriteCounter()
    # Every ORM call of the consumer and the runner runs on this one database thread.
    await database_sync_to_async(lambda: connection.execute_wrappers.append(counter))()
    try:
        started = asyncio.get_running_loop().time()
        await communicator.send_to(text_data=json.dumps({"message": "long"}))
        await frames_until(communicator, r'data-state="complete"', timeout=10)
        elapsed = asyncio.get_running_loop().time() - started
    finally:
        await database_sync_to_async(lambda: connection.execute_wrappers.remove(counter))()
    # A checkpoint: one UPDATE, of the text when it grew, else of the heartbeat.
    heartbeats = [w for w in counter.writes if w.startswith(CHECKPOINT_HEARTBEAT)]
    texts = [w for w in counter.writes if w.startswith(CHECKPOINT_TEXTS)]
    assert texts
    assert len(texts) + len(heartbeats) <= elapsed / 0.25 + 2
    # The send (2 inserts, 1 conversation update), start, finish: a constant.
    assert len(counter.writes) - len(heartbeats) - len(texts) <= 8
    reply = (await get_turns(conversation))[1]
    assert reply.content.count(" ") == tokens
    await communicator.disconnect()


async def test_sweep_spares_replies_this_process_is_still_running(conversation, fake_provider):
    # Under heavy load a live reply's heartbeat can be late; it is not dead.
    fake_provider.script = [ResponseStarted(), TextDelta("alive"), Pause(30), Finished()]
    _, reply = await database_sync_to_async(message_send)(conversation=conversation, text="go")
    runner = await reply_launch(turn=reply)
    await wait_state(reply.pk, {"streaming"})
    await database_sync_to_async(make_stale)(reply.pk, 60)
    assert await replies_sweep_once() == 0
    runner.stop()
    assert (await wait_state(reply.pk, {"cancelled"})).content == "alive"


async def test_sweep_spares_replies_this_process_is_launching(conversation):
    # Started in the database, its runner not launched yet (the event loop is busy).
    _, reply = await database_sync_to_async(message_send)(conversation=conversation, text="go")
    reply_starting(reply.pk)
    try:
        await database_sync_to_async(reply_start)(turn_id=reply.pk)
        await database_sync_to_async(make_stale)(reply.pk, 60)
        assert await replies_sweep_once() == 0
    finally:
        reply_not_starting(reply.pk)
    assert await replies_sweep_once() == 1  # nobody runs it: now it is a dead one


def test_pieces_come_less_often_when_one_process_runs_many_replies(monkeypatch, settings):
    from conversations import replies

    settings.CHAT_FLUSH_INTERVAL = 0.1
    settings.CHAT_PIECES_PER_SECOND = 1000
    monkeypatch.setattr(replies, "_running", dict.fromkeys(range(50)))
    assert replies.flush_interval() == 0.1
    monkeypatch.setattr(replies, "_running", dict.fromkeys(range(500)))
    assert replies.flush_interval() == 0.5
