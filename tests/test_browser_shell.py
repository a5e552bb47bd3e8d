"""The app shell in Debian's chromium: the sidebar, one-click new chat, pin and archive,
the drawer at phone widths, keyboard shortcuts and icons; as a person uses them."""

import re

import pytest

from tests.conftest import ARTIFACTS
from tests.emulator import Behaviour

pytestmark = pytest.mark.browser

EMOJI = re.compile("[\U0001f300-\U0001faff\u2600-\u27bf]")


def send(page, text: str) -> None:
    box = page.get_by_role("textbox", name="Message")
    box.fill(text)
    box.press("Enter")


def complete_reply(page):
    reply = page.locator('article[data-role="assistant"][data-state="complete"]').last
    reply.wait_for()
    return reply


def sidebar_titles(page) -> list[str]:
    return page.locator("#sidebar-conversations .sidebar-title").all_inner_texts()


def make_conversations(server, titles: list[str], *, days_ago: int = 0) -> None:
    """Conversations of alice's, last active `days_ago` days ago (oldest first)."""
    server.manage(
        "shell", "-c",
        "from datetime import timedelta\n"
        "from django.contrib.auth import get_user_model\n"
        "from django.utils import timezone\n"
        "from conversations.models import Conversation\n"
        "alice = get_user_model().objects.get(username='alice')\n"
        f"for n, title in enumerate({titles!r}):\n"
        "    c = Conversation.objects.create(\n"
        "        owner=alice, model='anthropic/claude-sonnet-4', title=title)\n"
        f"    at = timezone.now() - timedelta(days={days_ago}, minutes=len({titles!r}) - n)\n"
        "    Conversation.objects.filter(pk=c.pk).update(updated_at=at)\n",
    )  # fmt: skip


def test_new_chat_is_one_click_and_stored_with_its_first_message(page, emulator) -> None:
    emulator.enqueue(Behaviour(text="Paris is the capital of France."))
    assert page.get_by_role("heading", level=1).inner_text() == "New chat"
    # Ready to type at once; nothing is stored until the first message.
    assert page.evaluate("document.activeElement.getAttribute('aria-label')") == "Message"
    page.get_by_role("link", name="New chat").first.click()
    page.reload()
    assert sidebar_titles(page) == []
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "new-chat-1280.png"), caret="initial")
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(ARTIFACTS / "new-chat-390.png"), caret="initial")
    page.set_viewport_size({"width": 1280, "height": 900})
    # Model and settings live in the header and apply to the first reply.
    page.get_by_label("Model", exact=True).select_option("anthropic/claude-haiku-4.5")
    page.get_by_text("Settings", exact=True).click()
    page.locator("#id_new_system_prompt").fill("Answer in one sentence.")
    send(page, "What is the capital of France?")
    page.wait_for_url("**/conversations/*/")
    reply = complete_reply(page)
    assert "Paris is the capital of France." in reply.inner_text()
    page.screenshot(path=str(ARTIFACTS / "chat-1280.png"), caret="initial")
    body = emulator.requests[-1].body
    assert body["system"] == "Answer in one sentence."
    assert "claude-haiku-4.5" in emulator.requests[-1].model
    current = page.locator("#sidebar a[aria-current=page]")
    assert current.inner_text().strip() == "What is the capital of France?"
    # Another new chat from the chat page, by the sidebar's control.
    page.get_by_role("link", name="New chat").first.click()
    page.wait_for_url(re.compile(r".*/$"))
    assert page.evaluate("document.activeElement.getAttribute('aria-label')") == "Message"
    assert sidebar_titles(page) == ["What is the capital of France?"]


def test_a_refused_first_message_stores_nothing_and_keeps_the_text(page, chat_server) -> None:
    chat_server.manage(
        "shell", "-c",
        "from decimal import Decimal\nfrom django.contrib.auth import get_user_model\n"
        "from billing.models import UserBudget\n"
        "UserBudget.objects.create(user=get_user_model().objects.get(username='alice'),"
        " monthly_budget_usd=Decimal('0'))",
    )  # fmt: skip
    page.reload()
    send(page, "An expensive question")
    page.get_by_role("alert").wait_for()
    assert "budget" in page.get_by_role("alert").inner_text().lower()
    assert page.get_by_role("textbox", name="Message").input_value() == "An expensive question"
    page.goto("/")
    assert sidebar_titles(page) == []


def test_sidebar_groups_pins_archives_and_loads_more(page, chat_server) -> None:
    make_conversations(chat_server, [f"Old chat {n:02d}" for n in range(35)], days_ago=40)
    make_conversations(chat_server, ["Last week's chat"], days_ago=3)
    make_conversations(chat_server, ["Yesterday's chat"], days_ago=1)
    make_conversations(chat_server, ["Today's chat"])
    page.reload()
    headings = page.locator("#sidebar-conversations .sidebar-heading").all_inner_texts()
    assert headings[:4] == ["Today", "Yesterday", "Previous 7 days", "Older"]
    assert sidebar_titles(page)[:3] == ["Today's chat", "Yesterday's chat", "Last week's chat"]
    assert "Old chat 00" not in sidebar_titles(page)  # the next page, not loaded yet
    # More load as the list scrolls.
    page.locator("#sidebar .sidebar-more").scroll_into_view_if_needed()
    page.locator("#sidebar-conversations .sidebar-title", has_text="Old chat 00").wait_for()
    assert len(sidebar_titles(page)) == 38
    assert page.locator("#sidebar-conversations .sidebar-heading", has_text="Older").count() == 1

    page.get_by_role("button", name="Pin Last week's chat").click()
    page.locator("#sidebar-conversations .sidebar-heading", has_text="Pinned").wait_for()
    assert sidebar_titles(page)[0] == "Last week's chat"
    assert (
        page.get_by_role("button", name="Unpin Last week's chat").get_attribute("aria-pressed")
        == "true"
    )

    page.get_by_role("button", name="Archive Yesterday's chat").click()
    page.get_by_role("button", name="Archive Yesterday's chat").wait_for(state="detached")
    assert "Yesterday's chat" not in sidebar_titles(page)
    page.reload()
    assert "Yesterday's chat" not in sidebar_titles(page)
    assert sidebar_titles(page)[0] == "Last week's chat"  # pinned ones first, still
    # Search still finds an archived conversation.
    search = page.get_by_label("Search conversations").first
    search.fill("Yesterday")
    search.press("Enter")
    page.locator("main .title-link", has_text="Yesterday's chat").wait_for()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "sidebar-1280.png"), caret="initial")


def test_the_drawer_at_phone_width(page, emulator) -> None:
    page.set_viewport_size({"width": 390, "height": 844})
    page.emulate_media(reduced_motion="reduce")  # the drawer opens without sliding
    send(page, "Hello from a phone")
    page.wait_for_url("**/conversations/*/")
    complete_reply(page)
    toggle = page.get_by_role("button", name="Conversations", exact=True)
    assert toggle.is_visible() and toggle.get_attribute("aria-expanded") == "false"
    nav = page.get_by_role("navigation", name="Conversations")
    assert not nav.is_visible()  # off canvas
    toggle.click()
    nav.wait_for(state="visible")
    assert toggle.get_attribute("aria-expanded") == "true"
    link = nav.get_by_role("link", name="Hello from a phone")
    assert link.get_attribute("aria-current") == "page"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "drawer-390.png"), caret="initial")
    page.keyboard.press("Escape")
    nav.wait_for(state="hidden")
    page.screenshot(path=str(ARTIFACTS / "chat-390.png"), caret="initial")
    toggle.click()
    nav.wait_for(state="visible")
    page.keyboard.press("Escape")
    nav.wait_for(state="hidden")
    assert page.evaluate("document.activeElement.id") == "sidebar-toggle"


def test_keyboard_shortcuts(page, emulator) -> None:
    emulator.enqueue(Behaviour(text="First."), Behaviour(tokens=300, token_delay=0.03))
    send(page, "Question one")
    page.wait_for_url("**/conversations/*/")
    complete_reply(page)
    # Ctrl+K: search.
    page.keyboard.press("Control+k")
    assert page.evaluate("document.activeElement.id") == "sidebar-q"
    # ?: the list of shortcuts (not while typing).
    page.get_by_role("textbox", name="Message").click()
    page.keyboard.type("?")
    assert not page.get_by_role("dialog").is_visible()
    page.get_by_role("textbox", name="Message").fill("")
    page.locator("main").click(position={"x": 5, "y": 5})
    page.keyboard.press("?")
    page.get_by_role("dialog", name="Keyboard shortcuts").wait_for()
    page.keyboard.press("Escape")
    page.get_by_role("dialog").wait_for(state="hidden")
    # Escape stops a reply only from the Message box.
    send(page, "Count slowly")
    page.locator('article[data-role="assistant"][data-state="streaming"]').wait_for()
    page.get_by_label("Search conversations").first.focus()
    page.keyboard.press("Escape")
    assert page.get_by_role("button", name="Stop").is_visible()
    page.get_by_role("textbox", name="Message").press("Escape")
    page.locator('article[data-role="assistant"][data-state="cancelled"]').wait_for()
    # ↑ in an empty Message box: edit your last message.
    page.get_by_role("textbox", name="Message").press("ArrowUp")
    editor = page.get_by_label("Edit message").last
    editor.wait_for()
    assert editor.input_value() == "Count slowly"
    assert page.evaluate("document.activeElement.name") == "message"
    # Ctrl+Shift+O: a new chat.
    page.get_by_role("button", name="Cancel").last.click()
    page.keyboard.press("Control+Shift+O")
    page.wait_for_url(re.compile(r"^http://[^/]+/$"))
    assert page.get_by_role("heading", level=1).inner_text() == "New chat"


def test_actions_are_drawn_icons_with_names(page, emulator) -> None:
    send(page, "Show me the icons")
    page.wait_for_url("**/conversations/*/")
    reply = complete_reply(page)
    for name in ("Copy reply", "Regenerate", "Good reply", "Bad reply"):
        button = reply.get_by_role("button", name=name)
        assert button.count() == 1 and button.locator("svg").count() == 1, name
    user = page.locator('article[data-role="user"]')
    assert user.get_by_role("button", name="Edit").locator("svg").count() == 1
    for name in ("Pin Show me the icons", "Archive Show me the icons"):
        assert page.get_by_role("button", name=name).locator("svg").count() == 1
    assert page.locator("summary[aria-label^=Rename] svg").count() == 1
    # No emoji glyphs anywhere on the page: they render as empty boxes without a font.
    assert not EMOJI.search(page.locator("body").inner_text())
    # Actions show on hover and on focus.
    actions = reply.locator(".turn-actions")
    page.locator("#sidebar .new-chat").hover()
    assert actions.evaluate("e => getComputedStyle(e).opacity") == "1"  # the last turn
    first_user_actions = user.locator(".turn-actions")
    assert first_user_actions.evaluate("e => getComputedStyle(e).opacity") == "0"
    user.hover()
    page.wait_for_function(
        "() => getComputedStyle(document.querySelector('.turn-user .turn-actions')).opacity === '1'"
    )
