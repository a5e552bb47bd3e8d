"""The reply runner and the socket when the channel layer or the database blinks.

In-process (the real consumer and runner, a scripted provider): the layer's sends
or the final database write fail for a while, then work again. Killing real Redis
and PostgreSQL servers is in tests/test_outages.py.
"""

import html
import json
import re

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import OperationalError

from conversations.gateway import Finished, ResponseStarted, TextDelta, Usage
from conversations.gateway.fake import Pause
from conversations.models import Turn
from tests.conftest import (
    frames_until,
    open_chat_socket,
    reply_reaches,
    signed_in_client,
    wait_until_async,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres]

WORDS = [f"word{i} " for i in range(60)]


def slow_script(words=WORDS, delay=0.02):
    steps = [ResponseStarted("log")]
    for word in words:
        steps += [Pause(delay), TextDelta(word)]
    return [*steps, Usage(10, len(words)), Finished("end_turn")]


def page_text(frames: list[str], turn_id: int) -> str:
    """The reply's text as a page shows it after these frames (replace, then append)."""
    text = ""
    pattern = (
        rf'<div id="turn-{turn_id}-text" class="turn-text streaming" '
        rf'hx-swap-oob="(.*?)">(.*?)</div>'
    )
    for frame in frames:
        for swap, piece in re.findall(pattern, frame, re.S):
            text = piece if swap == "true" else text + piece
    return text


class BlinkingLayer:
    """Makes the channel layer's sends fail while `down` is set; `lost` lists the types
    of the messages it refused."""

    def __init__(self, monkeypatch) -> None:
        self.down = False
        self.lost: list[str] = []
        layer = get_channel_layer()
        for name in ("group_send", "send"):
            real = getattr(layer, name)

            async def failing(*args, _real=real, **kwargs):
                if self.down:
                    self.lost.append((args[-1] if args else kwargs["message"])["type"])
                    raise ConnectionError("layer down")
                return await _real(*args, **kwargs)

            monkeypatch.setattr(layer, name, failing)


async def test_a_layer_blink_mid_stream_ends_complete_and_pages_catch_up(
    user, conversation, fake_provider, monkeypatch
):
    # Words further apart than the flush interval: each is published as it comes.
    words = WORDS[:25]
    fake_provider.script = slow_script(words, delay=0.12)
    blink = BlinkingLayer(monkeypatch)
    client = await sync_to_async(signed_in_client)(user)
    communicator = await open_chat_socket(conversation, client)
    await communicator.send_to(text_data=json.dumps({"message": "go"}))
    frames = await frames_until(communicator, r"beforeend:#turn-\d+-text")
    blink.down = True
    await wait_until_async(
        lambda: blink.lost.count("reply.delta") >= 3, what="three pieces lost", timeout=10
    )
    blink.down = False
    frames += await frames_until(communicator, 'data-state="complete"', timeout=10)
    reply = await sync_to_async(Turn.objects.get)(conversation=conversation, role="assistant")
    assert (reply.state, reply.content) == ("complete", "".join(words))
    # What the page showed while streaming had no gap: the missing pieces came back.
    assert page_text(frames, reply.pk) == "".join(words)
    await communicator.disconnect()


async def test_pages_learn_the_end_when_the_final_broadcast_first_fails(
    user, conversation, fake_provider, monkeypatch, settings
):
    fake_provider.script = slow_script(WORDS[:5])
    blink = BlinkingLayer(monkeypatch)
    client = await sync_to_async(signed_in_client)(user)
    communicator = await open_chat_socket(conversation, client)
    await communicator.send_to(text_data=json.dumps({"message": "go"}))
    await frames_until(communicator, r"beforeend:#turn-\d+-text")
    blink.down = True
    await wait_until_async(
        lambda: "reply.finished" in blink.lost, what="the final broadcast lost", timeout=10
    )
    assert (await reply_reaches(conversation, "complete")).content == "".join(WORDS[:5])
    blink.down = False
    frames = await frames_until(communicator, 'data-state="complete"', timeout=10)
    assert "Stop" not in frames[-1]
    await communicator.disconnect()


async def test_a_page_that_reconnects_after_the_end_is_brought_to_it(
    user, conversation, fake_provider
):
    fake_provider.script = slow_script(WORDS[:5])
    client = await sync_to_async(signed_in_client)(user)
    communicator = await open_chat_socket(conversation, client)
    await communicator.send_to(text_data=json.dumps({"message": "go"}))
    frames = await frames_until(communicator, r"beforeend:#turn-\d+-text")
    reply_id = int(re.search(r"turn-(\d+)-text", frames[-1]).group(1))
    await communicator.disconnect()  # the page's socket drops while it shows "streaming"
    await reply_reaches(conversation, "complete")
    again = await open_chat_socket(conversation, client)
    await again.send_to(
        text_data=json.dumps({"action": "sync", "turns": [reply_id], "last": reply_id - 1})
    )
    frames = await frames_until(again, 'data-state="complete"')
    assert f'id="turn-{reply_id}"' in frames[-1] and 'id="reply-controls"' in frames[-1]
    # A page that missed a whole exchange gets those turns too.
    await again.send_to(text_data=json.dumps({"action": "sync", "turns": [], "last": 0}))
    frames = await frames_until(again, 'id="reply-controls"')
    assert "go" in frames[-1] and 'data-role="user"' in frames[-1]
    await again.disconnect()


async def test_the_final_write_is_retried_while_the_database_is_down(
    user, conversation, fake_provider, monkeypatch
):
    from conversations import replies

    fake_provider.script = slow_script(WORDS[:10])
    failures = {"left": 3}
    real = replies.reply_finish

    def flaky(**kwargs):
        if failures["left"]:
            failures["left"] -= 1
            raise OperationalError("the database is not answering")
        return real(**kwargs)

    monkeypatch.setattr(replies, "reply_finish", flaky)
    client = await sync_to_async(signed_in_client)(user)
    communicator = await open_chat_socket(conversation, client)
    await communicator.send_to(text_data=json.dumps({"message": "go"}))
    await frames_until(communicator, 'data-state="complete"', timeout=15)
    reply = await sync_to_async(Turn.objects.get)(conversation=conversation, role="assistant")
    assert (reply.state, reply.content) == ("complete", "".join(WORDS[:10]))
    assert failures["left"] == 0
    await communicator.disconnect()


async def test_a_send_while_the_layer_is_down_still_writes_its_reply(
    user, conversation, fake_provider, monkeypatch
):
    fake_provider.script = slow_script(WORDS[:5], delay=0.01)
    blink = BlinkingLayer(monkeypatch)
    client = await sync_to_async(signed_in_client)(user)
    communicator = await open_chat_socket(conversation, client)
    blink.down = True
    await communicator.send_to(text_data=json.dumps({"message": "during the outage"}))
    frames = await frames_until(communicator, 'data-ack="1"')
    assert "during the outage" in "".join(frames)  # this page sees its own turn
    await reply_reaches(conversation, "complete")
    blink.down = False
    await frames_until(communicator, 'data-state="complete"', timeout=10)
    reply = await sync_to_async(Turn.objects.get)(conversation=conversation, role="assistant")
    assert reply.content == "".join(WORDS[:5])
    await communicator.disconnect()


async def test_a_socket_that_does_not_read_is_closed_and_others_are_not(
    user, conversation, fake_provider, settings
):
    settings.CHAT_SOCKET_UNREAD_LIMIT = 60_000
    pieces = [f"{i:05d}" + "x" * 195 for i in range(1000)]  # 200,000 characters
    fake_provider.script = slow_script(pieces, delay=0.001)
    client = await sync_to_async(signed_in_client)(user)
    silent = await open_chat_socket(conversation, client)
    reader = await open_chat_socket(conversation, client)
    await reader.send_to(text_data=json.dumps({"message": "a long one"}))
    received = 0
    while True:
        output = await reader.receive_output(timeout=10)
        assert output["type"] == "websocket.send"
        received += len(output["text"])
        await reader.send_to(text_data=json.dumps({"action": "ack", "received": received}))
        if 'data-state="complete"' in output["text"]:
            break
    closed = None
    while closed is None:
        output = await silent.receive_output(timeout=10)
        if output["type"] == "websocket.close":
            closed = output["code"]
    assert closed == 4408
    await reader.disconnect()


async def test_a_very_long_reply_is_caught_up_in_frames_under_the_transport_limit(
    user, conversation, fake_provider
):
    long_text = "<&>" * 60_000 + "é" * 200_000  # escaped, about 1.1 million characters
    fake_provider.script = [ResponseStarted("log"), TextDelta("start"), Pause(0.3),
                            TextDelta(long_text), Pause(1.0), TextDelta("end"), Usage(1, 1),
                            Finished("end_turn")]  # fmt: skip
    client = await sync_to_async(signed_in_client)(user)
    communicator = await open_chat_socket(conversation, client)
    await communicator.send_to(text_data=json.dumps({"message": "go"}))
    await frames_until(communicator, "é" * 100)
    late = await open_chat_socket(conversation, client)  # connects mid-reply: catch-up
    frames: list[str] = []
    while True:
        output = await late.receive_output(timeout=10)
        frames.append(output["text"])
        if 'data-state="complete"' in output["text"]:
            break
    reply = await sync_to_async(Turn.objects.get)(conversation=conversation, role="assistant")
    assert max(len(f.encode()) for f in frames) < 1024 * 1024
    assert len(frames) > 3
    assert html.unescape(page_text(frames[:-1], reply.pk)) == "start" + long_text + "end"
    # Its final rendering is too large for a frame: the page loads it over HTTP.
    url = f"/conversations/{conversation.pk}/turns/{reply.pk}/"
    assert f'hx-get="{url}"' in frames[-1] and 'hx-trigger="load"' in frames[-1]
    response = await sync_to_async(client.get)(url)
    assert response.status_code == 200
    assert 'data-state="complete"' in response.content.decode()
    assert html.unescape(response.content.decode()).count("é" * 1000) >= 1
    await communicator.disconnect()
    await late.disconnect()
