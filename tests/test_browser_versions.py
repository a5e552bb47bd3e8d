"""Versions in Debian's chromium: an edited question and a regenerated reply keep what
came before; Previous version / Next version step between them, a reload keeps the
path shown, and a second tab follows a switch."""

import pytest
from playwright.sync_api import expect

from tests.conftest import ARTIFACTS, start_chat
from tests.emulator import Behaviour

pytestmark = pytest.mark.browser


def send(page, text: str) -> None:
    box = page.get_by_role("textbox", name="Message")
    box.fill(text)
    box.press("Enter")


def settled(page, replies: int) -> None:
    """`replies` replies shown, all complete."""
    expect(page.locator('article[data-role="assistant"][data-state="complete"]')).to_have_count(
        replies
    )
    expect(page.locator("#reply-controls .stop")).to_have_count(0)


def texts(page) -> list[str]:
    return [text.strip() for text in page.locator("#turns article .turn-text").all_inner_texts()]


def three_exchanges(page, emulator) -> None:
    start_chat(page)
    for n in (1, 2, 3):
        emulator.enqueue(Behaviour(text=f"Answer {n}."))
        send(page, f"Question {n}")
        settled(page, n)


def test_edit_the_first_message_step_back_and_reload(page, emulator) -> None:
    three_exchanges(page, emulator)
    original = texts(page)
    assert original == [
        "Question 1", "Answer 1.", "Question 2", "Answer 2.", "Question 3", "Answer 3.",
    ]  # fmt: skip
    first = page.locator('article[data-role="user"]').first
    first.get_by_role("button", name="Edit").click()
    first.get_by_label("Edit message").fill("Question 1, another angle")
    emulator.enqueue(Behaviour(text="An answer from another angle."))
    first.get_by_role("button", name="Save and resend").click()
    expect(page.locator("#turns article .turn-text").nth(1)).to_have_text(
        "An answer from another angle."
    )
    settled(page, 1)
    assert texts(page) == ["Question 1, another angle", "An answer from another angle."]
    edited = page.locator('article[data-role="user"]').first
    expect(edited.locator(".version-count")).to_have_text("2 / 2")
    expect(edited.get_by_role("button", name="Next version")).to_be_disabled()
    save_screenshots(page)

    edited.get_by_role("button", name="Previous version").click()
    expect(page.locator('article[data-role="assistant"]')).to_have_count(3)
    assert texts(page) == original  # the first question and every answer, intact
    first = page.locator('article[data-role="user"]').first
    expect(first.locator(".version-count")).to_have_text("1 / 2")
    # Focus stays on the versions of the message (the pressed button is disabled now).
    expect(first.get_by_role("button", name="Next version")).to_be_focused()

    page.reload()
    page.wait_for_function("() => document.querySelector('[ws-connect]') && window.htmx")
    assert texts(page) == original
    expect(page.locator('article[data-role="user"]').first.locator(".version-count")).to_have_text(
        "1 / 2"
    )
    # The next question goes on from the path shown, which is the one the model reads.
    emulator.enqueue(Behaviour(text="Answer 4."))
    send(page, "Question 4")
    settled(page, 4)
    messages = emulator.requests[-1].body["messages"]
    assert [m["content"] for m in messages] == [*original, "Question 4"]


def test_regenerate_twice_and_step_through_three_replies(page, emulator) -> None:
    start_chat(page)
    emulator.enqueue(Behaviour(text="Reply one."))
    send(page, "Tell me something")
    settled(page, 1)
    reply = page.locator('article[data-role="assistant"]')
    for text in ("Reply two.", "Reply three."):
        emulator.enqueue(Behaviour(text=text))
        reply.get_by_role("button", name="Regenerate").click()
        expect(reply.locator(".turn-text")).to_have_text(text)
        settled(page, 1)
    expect(reply.locator(".version-count")).to_have_text("3 / 3")
    for text, count in (("Reply two.", "2 / 3"), ("Reply one.", "1 / 3")):
        reply.get_by_role("button", name="Previous version").click()
        expect(reply.locator(".turn-text")).to_have_text(text)
        expect(reply.locator(".version-count")).to_have_text(count)
    expect(reply.get_by_role("button", name="Previous version")).to_be_disabled()
    reply.get_by_role("button", name="Next version").click()
    expect(reply.locator(".turn-text")).to_have_text("Reply two.")
    assert texts(page) == ["Tell me something", "Reply two."]


def test_a_second_tab_follows_a_switch(page, emulator) -> None:
    three_exchanges(page, emulator)
    other = page.context.new_page()
    other.goto(page.url)
    other.wait_for_function("() => document.querySelector('[ws-connect]') && window.htmx")
    # Both sockets are open (each page's sync was answered or needed nothing).
    expect(other.locator("#connection-status")).to_be_hidden()
    last_question = page.locator('article[data-role="user"]').last
    last_question.get_by_role("button", name="Edit").click()
    last_question.get_by_label("Edit message").fill("Question 3, rephrased")
    emulator.enqueue(Behaviour(text="Answer 3, rephrased."))
    last_question.get_by_role("button", name="Save and resend").click()
    for tab in (page, other):
        expect(tab.locator("#turns article .turn-text").last).to_have_text("Answer 3, rephrased.")
        settled(tab, 3)
    page.locator('article[data-role="user"]').last.get_by_role(
        "button", name="Previous version"
    ).click()
    for tab in (page, other):
        expect(tab.locator("#turns article .turn-text").last).to_have_text("Answer 3.")
        expect(
            tab.locator('article[data-role="user"]').last.locator(".version-count")
        ).to_have_text("1 / 2")
    # And back, from the second tab.
    other.locator('article[data-role="user"]').last.get_by_role(
        "button", name="Next version"
    ).click()
    expect(page.locator("#turns article .turn-text").last).to_have_text("Answer 3, rephrased.")
    other.close()


def save_screenshots(page) -> None:
    """A chat with a branch point showing 2 / 2, at 1280 and 390 px (in artifacts/; the
    ones looked at are kept in docs/screenshots/)."""
    ARTIFACTS.mkdir(exist_ok=True)
    size = page.viewport_size
    for width, height in ((1280, 800), (390, 844)):
        page.set_viewport_size({"width": width, "height": height})
        page.screenshot(path=str(ARTIFACTS / f"versions-{width}.png"), caret="initial")
    page.set_viewport_size(size)
