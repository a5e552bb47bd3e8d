"""Versions over the chat socket: `switch` shows another version in every open page,
refuses what it cannot read with nothing changed, and a page that missed a switch
loads the path again when it reconnects."""

import json

import pytest
from asgiref.sync import sync_to_async

from conversations.gateway import Finished, ResponseStarted, TextDelta
from conversations.gateway.fake import Pause
from conversations.models import Turn
from conversations.services import (
    ReplyOutcome,
    conversation_create,
    message_edit,
    message_send,
    path_switch,
    reply_finish,
)
from tests.conftest import SONNET, frames_until, open_chat_socket

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres]

PATH_LOAD = (
    r'id="path-changed" hidden hx-swap-oob="true" data-load="/conversations/[0-9a-f-]+/turns/"'
)


def branched(conversation) -> tuple[Turn, Turn]:
    """Q1 → A1, then Q1 edited → A1 again: (the first question, the edited one)."""
    first, reply = message_send(conversation=conversation, text="Q1")
    reply_finish(turn_id=reply.pk, outcome=ReplyOutcome(state="complete", content="A1"))
    edited = message_edit(conversation=conversation, turn_id=first.pk, text="Q1 again")
    reply_finish(turn_id=edited.reply.pk, outcome=ReplyOutcome(state="complete", content="A2"))
    return first, edited.user_turn


def tree(conversation) -> list[tuple]:
    return list(
        Turn.objects.filter(conversation=conversation)
        .order_by("pk")
        .values_list("pk", "content", "on_path", "chosen")
    )


def on_path(conversation) -> list[str]:
    return list(
        Turn.objects.filter(conversation=conversation, on_path=True)
        .order_by("position")
        .values_list("content", flat=True)
    )


async def test_a_switch_shows_every_open_page_the_new_path(conversation, user, client):
    first, _ = await sync_to_async(branched)(conversation)
    this = await open_chat_socket(conversation, user)
    other = await open_chat_socket(conversation, user)
    await this.send_to(text_data=json.dumps({"action": "switch", "turn": str(first.pk)}))
    for page in (this, other):
        await frames_until(page, PATH_LOAD)
    assert await sync_to_async(on_path)(conversation) == ["Q1", "A1"]
    # What the pages load then: the path, its versions numbered.
    await sync_to_async(client.force_login)(user)
    body = (await sync_to_async(client.get)(f"/conversations/{conversation.pk}/turns/")).content
    assert b"Q1 again" not in body and b"A1" in body
    assert b'<span class="version-count">1 / 2</span>' in body
    assert b"Previous version" in body and b"Next version" in body
    for page in (this, other):
        await page.disconnect()


@pytest.mark.parametrize(
    "frame",
    [
        {"action": "switch"},
        {"action": "switch", "turn": "x"},
        {"action": "switch", "turn": [1]},
        {"action": "switch", "turn": -3},
        {"action": "switch", "turn": "elsewhere"},  # a turn of another conversation
        {"action": "switch", "turn": 10**15},
    ],
)
async def test_a_switch_that_cannot_be_done_says_so_and_changes_nothing(conversation, user, frame):
    await sync_to_async(branched)(conversation)
    other = await sync_to_async(conversation_create)(owner=user, model=SONNET)
    elsewhere, _ = await sync_to_async(message_send)(conversation=other, text="there")
    if frame.get("turn") == "elsewhere":
        frame = {**frame, "turn": elsewhere.pk}
    before = await sync_to_async(tree)(conversation)
    page = await open_chat_socket(conversation, user)
    await page.send_to(text_data=json.dumps(frame))
    answer = await page.receive_from(timeout=5)
    assert 'class="error"' in answer and "path-changed" not in answer
    assert ("could not be read" in answer) or ("not in this conversation" in answer)
    assert await sync_to_async(tree)(conversation) == before
    await page.disconnect()


async def test_a_page_that_missed_a_switch_loads_the_path_when_it_syncs(conversation, user):
    first, edited = await sync_to_async(branched)(conversation)
    newest = await sync_to_async(Turn.objects.get)(parent=edited)
    page = await open_chat_socket(conversation, user)
    # The page still shows the edited branch; another tab switched meanwhile.
    await sync_to_async(path_switch)(conversation=conversation, turn_id=first.pk)
    await page.send_to(text_data=json.dumps({"action": "sync", "turns": [], "last": newest.pk}))
    await frames_until(page, PATH_LOAD)
    # A page on the path gets nothing to reload.
    reply = await sync_to_async(Turn.objects.get)(parent=first)
    await page.send_to(text_data=json.dumps({"action": "sync", "turns": [], "last": reply.pk}))
    await page.send_to(text_data=json.dumps({"action": "probe"}))
    assert "Unknown action." in await page.receive_from(timeout=5)
    await page.disconnect()


async def test_a_send_while_another_version_is_written_is_refused_clearly(
    conversation, user, fake_provider
):
    first, _ = await sync_to_async(branched)(conversation)
    fake_provider.script = [ResponseStarted(), TextDelta("slow"), Pause(30), Finished()]
    page = await open_chat_socket(conversation, user)
    await page.send_to(text_data=json.dumps({"message": "Q2"}))
    await frames_until(page, "slow")
    await page.send_to(text_data=json.dumps({"action": "switch", "turn": first.pk}))
    await frames_until(page, PATH_LOAD)
    before = await sync_to_async(tree)(conversation)
    await page.send_to(text_data=json.dumps({"message": "Q on the first version"}))
    refused = await frames_until(page, 'class="error"')
    assert "another version of this conversation" in refused[-1]
    assert await sync_to_async(tree)(conversation) == before
    # Stop still reaches the reply on the other version.
    await page.send_to(text_data=json.dumps({"action": "stop"}))
    await frames_until(page, 'data-state="cancelled"')
    await page.disconnect()
