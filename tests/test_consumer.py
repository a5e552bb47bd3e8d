"""The chat socket end to end: the real ASGI application, a scripted provider."""

import json
import re

import pytest

from conversations.gateway import Finished, ReplyError, ResponseStarted, TextDelta, Usage
from conversations.gateway.fake import Pause
from conversations.models import Turn
from tests.conftest import (
    chat_socket_accepted,
    frames_until,
    get_turns,
    open_chat_socket,
    reply_reaches,
)

pytestmark = pytest.mark.django_db(transaction=True)


def streamed_text(frames: list[str], turn_id: int) -> str:
    pieces = re.findall(
        rf'<div id="turn-{turn_id}-text" class="turn-text streaming" '
        rf'hx-swap-oob="beforeend:#turn-{turn_id}-text">(.*?)</div>',
        "".join(frames),
        re.S,
    )
    return "".join(pieces)


async def test_send_streams_reply_to_the_socket_and_stores_it(conversation, user, fake_provider):
    fake_provider.script = fake_provider.reply("Hello <b>world</b> & friends", pieces=4)
    communicator = await open_chat_socket(conversation, user)
    await communicator.send_to(text_data=json.dumps({"message": "Hi!", "HEADERS": {}}))
    frames = await frames_until(communicator, r'data-state="complete"')
    turns = await get_turns(conversation)
    user_turn, reply = turns
    assert (user_turn.role, user_turn.content) == ("user", "Hi!")
    assert (reply.state, reply.content) == ("complete", "Hello <b>world</b> & friends")
    assert (reply.input_tokens, reply.output_tokens, reply.gateway_log_id) == (10, 4, "log-fake")
    joined = "".join(frames)
    assert 'data-ack="1"' in joined
    assert 'data-role="user"' in joined and "Hi!" in joined
    assert streamed_text(frames, reply.pk) == "Hello &lt;b&gt;world&lt;/b&gt; &amp; friends"
    assert "<b>world</b>" not in joined  # the model's markup never reaches the page
    assert 'id="reply-controls"' in frames[-1] and "Stop" not in frames[-1]
    assert fake_provider.requests[0].messages == [{"role": "user", "content": "Hi!"}]
    await communicator.disconnect()


async def test_every_socket_of_the_conversation_sees_the_reply(conversation, user, fake_provider):
    fake_provider.script = fake_provider.reply("shared text", pieces=3, delay=0.01)
    first = await open_chat_socket(conversation, user)
    second = await open_chat_socket(conversation, user)
    await first.send_to(text_data=json.dumps({"message": "to all tabs"}))
    frames = await frames_until(second, r'data-state="complete"')
    assert "to all tabs" in "".join(frames)
    assert "shared text" in frames[-1]
    await frames_until(first, r'data-state="complete"')
    await first.disconnect()
    await second.disconnect()


async def test_closing_the_socket_does_not_stop_the_reply(conversation, user, fake_provider):
    fake_provider.script = fake_provider.reply("goes on without a socket", pieces=5, delay=0.05)
    communicator = await open_chat_socket(conversation, user)
    await communicator.send_to(text_data=json.dumps({"message": "go"}))
    await frames_until(communicator, r'data-state="streaming"')
    await communicator.disconnect()
    reply = await reply_reaches(conversation, "complete")
    assert (reply.state, reply.content) == ("complete", "goes on without a socket")


async def test_stop_ends_the_reply_cancelled_keeping_its_text(conversation, user, fake_provider):
    fake_provider.script = [
        ResponseStarted("log-1"),
        TextDelta("partial "),
        Pause(30),
        TextDelta("never"),
        Finished(),
    ]
    communicator = await open_chat_socket(conversation, user)
    await communicator.send_to(text_data=json.dumps({"message": "long one"}))
    await frames_until(communicator, r"partial")
    await communicator.send_to(text_data=json.dumps({"action": "stop", "HEADERS": {}}))
    await frames_until(communicator, r'data-state="cancelled"')
    reply = (await get_turns(conversation))[1]
    assert (reply.state, reply.content) == ("cancelled", "partial ")
    await communicator.disconnect()


async def test_upstream_error_ends_reply_in_error_with_plain_message(
    conversation, user, fake_provider
):
    fake_provider.script = [
        ResponseStarted(),
        TextDelta("Half a rep"),
        ReplyError("The model service is overloaded or failing.", status=529),
    ]
    communicator = await open_chat_socket(conversation, user)
    await communicator.send_to(text_data=json.dumps({"message": "q"}))
    frames = await frames_until(communicator, r'data-state="error"')
    assert "The model service is overloaded or failing." in frames[-1]
    reply = (await get_turns(conversation))[1]
    assert (reply.state, reply.content) == ("error", "Half a rep")
    await communicator.disconnect()


async def test_second_send_while_streaming_is_refused_and_nothing_is_lost(
    conversation, user, fake_provider
):
    fake_provider.script = [
        ResponseStarted(),
        TextDelta("a"),
        Pause(0.3),
        TextDelta("b"),
        Usage(1, 2),
        Finished(),
    ]
    communicator = await open_chat_socket(conversation, user)
    await communicator.send_to(text_data=json.dumps({"message": "first"}))
    await frames_until(communicator, r'data-state="streaming"')
    await communicator.send_to(text_data=json.dumps({"message": "second"}))
    frames = await frames_until(communicator, r"still being written")
    assert 'class="error"' in frames[-1]
    await frames_until(communicator, r'data-state="complete"')
    assert [t.content for t in await get_turns(conversation)] == ["first", "ab"]
    await communicator.disconnect()


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        ("not json", "could not be read"),
        ("[1, 2]", "could not be read"),
        ('{"action": "dance"}', "Unknown action"),
        ('{"message": ""}', "Type a message first"),
        ('{"message": 42}', "Type a message first"),
        ('{"message": "' + "x" * 1_100_000 + '"}', "too large"),
    ],
)
async def test_bad_frames_get_an_error_and_change_nothing(
    conversation, user, fake_provider, frame, message
):
    communicator = await open_chat_socket(conversation, user)
    await communicator.send_to(text_data=frame)
    response = await communicator.receive_from(timeout=5)
    assert message in response
    await communicator.send_to(bytes_data=b"\x00\x01")
    assert "Only text frames" in await communicator.receive_from(timeout=5)
    assert await get_turns(conversation) == []
    # The socket is still usable.
    fake_provider.script = fake_provider.reply("still here")
    await communicator.send_to(text_data=json.dumps({"message": "ok?"}))
    await frames_until(communicator, r'data-state="complete"')
    await communicator.disconnect()


async def test_someone_elses_conversation_is_refused(conversation, other_user):
    assert not await chat_socket_accepted(conversation, other_user)


async def test_foreign_origin_is_refused(conversation, user):
    evil = (b"origin", b"http://evil.example")
    assert not await chat_socket_accepted(conversation, user, origin=evil)


async def test_page_that_connects_mid_reply_catches_up_without_gaps(
    conversation, user, fake_provider
):
    fake_provider.script = [
        ResponseStarted(),
        TextDelta("one "),
        TextDelta("two "),
        Pause(0.3),
        TextDelta("three "),
        Pause(0.2),
        TextDelta("four"),
        Finished(),
    ]
    first = await open_chat_socket(conversation, user)
    await first.send_to(text_data=json.dumps({"message": "count"}))
    await frames_until(first, r"two")
    late = await open_chat_socket(conversation, user)
    frames = await frames_until(late, r'data-state="complete"')
    reply = (await get_turns(conversation))[1]
    catchup = f'<div id="turn-{reply.pk}-text" class="turn-text streaming" hx-swap-oob="true">'
    joined = "".join(frames)
    assert catchup + "one two </div>" in joined
    assert streamed_text(frames, reply.pk) == "three four"
    await first.disconnect()
    await late.disconnect()
    assert reply.state == Turn.State.COMPLETE
