"""Every control of the chat in Debian's chromium: settings, presets, turn actions,
the conversation list; screenshots at desktop size and at 360 px."""

import re

import pytest

from tests.conftest import ARTIFACTS, start_chat
from tests.emulator import Behaviour

pytestmark = pytest.mark.browser


def send(page, text: str) -> None:
    box = page.get_by_role("textbox", name="Message")
    box.fill(text)
    box.press("Enter")


def last_reply(page, state: str = "complete"):
    reply = page.locator(f'article[data-role="assistant"][data-state="{state}"]').last
    reply.wait_for()
    return reply


def shoot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    size = page.viewport_size
    page.screenshot(path=str(ARTIFACTS / f"{name}-desktop.png"), full_page=True, caret="initial")
    page.set_viewport_size({"width": 360, "height": 780})
    page.screenshot(path=str(ARTIFACTS / f"{name}-360.png"), full_page=True, caret="initial")
    page.set_viewport_size(size)


def test_regenerate_and_edit(page, emulator) -> None:
    start_chat(page)
    emulator.enqueue(Behaviour(text="First answer."), Behaviour(text="Second answer."))
    send(page, "Question one")
    last_reply(page)
    send(page, "Question two")
    second = page.locator('article[data-role="assistant"][data-state="complete"]').nth(1)
    assert "Second answer." in second.inner_text()

    emulator.enqueue(Behaviour(text="A regenerated answer."))
    last_reply(page).get_by_role("button", name="Regenerate").click()
    page.locator("article.turn-assistant .markdown", has_text="A regenerated answer.").wait_for()
    assert page.get_by_text("Second answer.").count() == 0
    # Only the last reply offers Regenerate.
    assert page.get_by_role("button", name="Regenerate").count() == 1

    first_user = page.locator('article[data-role="user"]').first
    first_user.get_by_role("button", name="Edit").click()
    editor = first_user.get_by_label("Edit message")
    assert first_user.get_by_text("Sending makes a new version; this one is kept").is_visible()
    editor.fill("Question one, edited")
    emulator.enqueue(Behaviour(text="Answer to the edited question."))
    first_user.get_by_role("button", name="Save and resend").click()
    edited = "Answer to the edited question."
    page.locator("article.turn-assistant .markdown", has_text=edited).wait_for()
    last_reply(page)
    assert page.locator('article[data-role="user"]').count() == 1
    assert page.locator('article[data-role="assistant"]').count() == 1
    assert "Question one, edited" in page.locator('article[data-role="user"]').inner_text()
    assert emulator.requests[-1].body["messages"] == [
        {"role": "user", "content": "Question one, edited"}
    ]
    shoot(page, "chat-after-edit")

    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    copy = last_reply(page).get_by_role("button", name="Copy reply")
    copy.click()
    copy.locator("xpath=following-sibling::*[@role='status']", has_text="Copied").wait_for()
    assert page.evaluate("navigator.clipboard.readText()") == "Answer to the edited question."


def test_settings_errors_are_shown_and_valid_settings_apply(page, emulator) -> None:
    start_chat(page)
    page.get_by_text("Settings", exact=True).click()
    page.get_by_label("Temperature", exact=True).check()  # chosen, but no value given
    page.locator("#id_settings_max_tokens").fill("100000")  # over the model's limit
    page.get_by_role("button", name="Save settings").click()
    page.locator("#settings-form .error").first.wait_for()
    errors = page.locator("#settings-form .error").all_inner_texts()
    assert any("Enter a temperature from 0 to 1." in e for e in errors), errors
    shoot(page, "settings-error")
    page.locator("#id_settings_max_tokens").fill("100000")
    page.locator("#id_settings_temperature").fill("0.5")
    page.get_by_role("button", name="Save settings").click()
    page.get_by_text("Claude Sonnet 4 writes at most 64000 tokens.").wait_for()

    page.locator("#id_settings_temperature").fill("0.2")
    page.locator("#id_settings_top_p").fill("0.9")  # ignored: temperature is the choice
    page.locator("#id_settings_system_prompt").fill("Answer like a pirate.")
    page.locator("#id_settings_max_tokens").fill("200")
    page.get_by_role("button", name="Save settings").click()
    page.get_by_text("Saved: applies to the next reply.").wait_for()
    send(page, "Hello")
    reply = last_reply(page)
    body = emulator.requests[-1].body
    assert body["temperature"] == 0.2 and "top_p" not in body
    assert body["system"] == "Answer like a pirate." and body["max_tokens"] == 200
    assert "temperature 0.2" in reply.inner_text()


def test_presets_start_new_chats(page, emulator) -> None:
    start_chat(page, system="You review Python code.", temperature="0.1")
    page.get_by_text("Settings", exact=True).click()
    page.get_by_label("Save these settings as a preset").fill("Code review")
    page.get_by_role("button", name="Save preset").click()
    page.get_by_text("Saved as preset").wait_for()
    page.goto("/presets/")
    page.get_by_role("link", name="Start a chat from preset Code review").click()
    assert page.locator("#id_new_system_prompt").input_value() == "You review Python code."
    send(page, "def f(): pass")
    page.wait_for_url("**/conversations/*/")
    last_reply(page)
    body = emulator.requests[-1].body
    assert body["system"] == "You review Python code." and body["temperature"] == 0.1


def test_rename_search_and_delete(page, emulator) -> None:
    start_chat(page)
    emulator.enqueue(Behaviour(text="Energy is conserved."))
    send(page, "Tell me about thermodynamics")
    last_reply(page)
    start_chat(page)
    send(page, "Something else entirely")
    last_reply(page)

    page.goto("/?q=")
    item = page.locator(".conversation-list li", has_text="Something else entirely")
    item.locator("summary[aria-label^=Rename]").click()
    item.get_by_label("New title").fill("Renamed chat")
    item.get_by_role("button", name="Save title").click()
    page.get_by_role("link", name="Renamed chat").wait_for()

    page.locator("#id_q").fill("conserved")
    page.locator("#id_q").press("Enter")
    page.wait_for_url(re.compile(r".*\?q=conserved"))
    titles = page.locator(".conversation-list .title-link").all_inner_texts()
    assert titles == ["Tell me about thermodynamics"]
    shoot(page, "conversation-list-search")

    page.goto("/?q=")
    page.get_by_role("link", name="Delete Renamed chat").click()
    page.get_by_text("This cannot be undone.").wait_for()
    page.get_by_role("button", name="Delete conversation").click()
    page.wait_for_url(re.compile(r".*/$"))
    assert page.get_by_role("link", name="Renamed chat", exact=True).count() == 0
    assert page.get_by_role("link", name="Tell me about thermodynamics", exact=True).count() == 1


def test_keyboard_reaches_every_control_with_visible_focus(page, emulator) -> None:
    start_chat(page)
    send(page, "Hello")
    last_reply(page)
    names = set()
    for _ in range(80):
        page.keyboard.press("Tab")
        focused = page.evaluate(
            "(() => { const e = document.activeElement;"
            " const s = getComputedStyle(e);"
            " return [e.tagName, (e.innerText || e.getAttribute('aria-label') || e.name || ''),"
            " s.outlineStyle !== 'none' && s.outlineWidth !== '0px']; })()"
        )
        tag, name, outlined = focused
        if tag in ("BUTTON", "A", "TEXTAREA", "INPUT", "SELECT", "SUMMARY"):
            assert outlined, f"{tag} {name} has no visible focus"
            names.add(name.strip())
    for expected in ("Settings", "Copy", "Regenerate", "Edit", "Send", "Message"):
        assert any(expected in name for name in names), (expected, names)
