"""The chat socket sends a streaming reply's Markdown rendered: finished blocks once,
in order, the tail again; pages that join late, reload or lose pieces to a channel
layer blink end up with the same blocks, never a gap or a double."""

import json
import re

import pytest
from asgiref.sync import sync_to_async

from conversations.gateway import Finished, ResponseStarted, TextDelta, Usage
from conversations.gateway.fake import Pause
from conversations.models import Turn
from conversations.rendering import render_markdown
from tests.conftest import frames_until, open_chat_socket, signed_in_client, wait_until_async
from tests.emulator import split_tokens
from tests.test_layer_faults import BlinkingLayer
from tests.test_streaming_markdown import SEED_REPLIES, assert_safe_html

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres]

TEXT = SEED_REPLIES["sonnet-4-recursion"]


def script(text: str = TEXT, delay: float = 0.03) -> list:
    steps: list = [ResponseStarted("log")]
    for piece in split_tokens(text):
        steps += [Pause(delay), TextDelta(piece)]
    return [*steps, Usage(10, 300), Finished("end_turn")]


class View:
    """What a page's `#turn-<id>-view` holds after the frames it was sent."""

    def __init__(self, turn_id: int) -> None:
        self.turn_id = turn_id
        self.blocks = ""
        self.tail = ""
        self.history: list[tuple[str, str]] = []

    def apply(self, frame: str) -> None:
        n = self.turn_id
        whole = re.search(
            rf'<div id="turn-{n}-view" class="markdown stream-view" hx-swap-oob="true">'
            rf'<div id="turn-{n}-blocks" class="stream-blocks">(.*)</div>'
            rf'<div id="turn-{n}-tail" class="stream-tail">(.*)</div></div>$',
            frame,
            re.S,
        )
        if whole:
            self.blocks, self.tail = whole.group(1), whole.group(2)
        appended = re.search(
            rf'hx-swap-oob="beforeend:#turn-{n}-blocks">(.*?)</div>'
            rf'(?=<div id="turn-{n}-tail" class="stream-tail" hx-swap-oob="true">|$)',
            frame,
            re.S,
        )
        if appended and not whole:
            self.blocks += appended.group(1)
        tail = re.search(
            rf'<div id="turn-{n}-tail" class="stream-tail" hx-swap-oob="true">(.*)</div>$',
            frame,
            re.S,
        )
        if tail:
            self.tail = tail.group(1)
        if whole or appended or tail:
            self.history.append((self.blocks, self.tail))


def reply_id(frames: list[str]) -> int:
    return int(re.search(r"turn-(\d+)-text", "".join(frames)).group(1))  # type: ignore[union-attr]


def check(view: View, text: str) -> None:
    """Every state: finished blocks are the start of the final rendering, and both
    they and the tail are sanitised, well-formed HTML without raw Markdown."""
    final = render_markdown(text)
    assert view.history, "the page never saw the reply rendered"
    for blocks, tail in view.history:
        assert final.startswith(blocks), blocks[-300:]
        assert_safe_html(blocks)
        assert_safe_html(tail)
        assert "**" not in blocks + tail
    blocks, _ = view.history[-1]
    assert len(blocks) > len(final) // 2  # most of the reply was finished blocks


async def frames_with_view(communicator, view: View, until: str, timeout: float = 10) -> list:
    frames = await frames_until(communicator, until, timeout=timeout)
    for frame in frames:
        if 'data-state="complete"' not in frame:
            view.apply(frame)
    return frames


async def test_a_page_sees_the_reply_rendered_while_it_streams(user, conversation, fake_provider):
    fake_provider.script = script()
    client = await sync_to_async(signed_in_client)(user)
    page = await open_chat_socket(conversation, client)
    await page.send_to(text_data=json.dumps({"message": "Explain recursion"}))
    frames = await frames_until(page, r"beforeend:#turn-\d+-text")
    view = View(reply_id(frames))
    for frame in frames:
        view.apply(frame)
    frames += await frames_with_view(page, view, 'data-state="complete"')
    check(view, TEXT)
    seen = " ".join(blocks + tail for blocks, tail in view.history)
    assert "<h2>" in seen and "<li>" in seen and "<strong>" in seen
    assert '<span class="k">def</span>' in seen  # code highlighted before the reply ended
    reply = await sync_to_async(Turn.objects.get)(conversation=conversation, role="assistant")
    assert reply.state == Turn.State.COMPLETE
    await page.disconnect()


async def test_a_page_that_opens_mid_reply_gets_the_same_blocks(user, conversation, fake_provider):
    fake_provider.script = script()
    client = await sync_to_async(signed_in_client)(user)
    first = await open_chat_socket(conversation, client)
    await first.send_to(text_data=json.dumps({"message": "Explain recursion"}))
    frames = await frames_until(first, r"Key Components")
    turn_id = reply_id(frames)
    early = View(turn_id)
    for frame in frames:
        early.apply(frame)
    late_page = await open_chat_socket(conversation, client)  # a reload, or a second tab
    late = View(turn_id)
    await frames_with_view(late_page, late, 'data-state="complete"')
    await frames_with_view(first, early, 'data-state="complete"')
    check(late, TEXT)
    check(early, TEXT)
    assert late.history[0][0]  # the catch-up brought the blocks finished before it opened
    assert late.history[-1] == early.history[-1]
    await first.disconnect()
    await late_page.disconnect()


async def test_blocks_lost_in_a_layer_blink_come_back_without_a_gap(
    user, conversation, fake_provider, monkeypatch
):
    fake_provider.script = script(delay=0.12)
    blink = BlinkingLayer(monkeypatch)
    client = await sync_to_async(signed_in_client)(user)
    page = await open_chat_socket(conversation, client)
    await page.send_to(text_data=json.dumps({"message": "Explain recursion"}))
    frames = await frames_until(page, r"beforeend:#turn-\d+-text")
    view = View(reply_id(frames))
    for frame in frames:
        view.apply(frame)
    blink.down = True
    await wait_until_async(
        lambda: blink.lost.count("reply.delta") >= 3, what="three pieces lost", timeout=10
    )
    blink.down = False
    await frames_with_view(page, view, 'data-state="complete"', timeout=30)
    check(view, TEXT)
    await page.disconnect()
