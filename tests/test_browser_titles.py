"""Titles in Debian's chromium, as a person sees them: once the first reply is complete,
the model's title replaces the first message's words in the header, the window title
and the sidebar, without a reload, and the person's other tab follows."""

import pytest

from tests.conftest import HAIKU, start_chat
from tests.emulator import Behaviour
from tests.test_browser_shell import complete_reply, send

pytestmark = pytest.mark.browser

FIRST = "How do I read a huge JSON file in Python without loading it all?"


def another_tab(page):
    """A second tab of the same person, which tells when its chat socket is open."""
    tab = page.context.new_page()
    tab.add_init_script("document.addEventListener('htmx:wsOpen', () => { window.chatOpen = 1; })")
    return tab


def socket_open(tab) -> None:
    tab.wait_for_function("() => window.chatOpen === 1")


@pytest.fixture
def chat_server(live_server_factory, emulator):
    """The `page` fixture's server, with titles by the model on (as `make run`)."""
    emulator.default = Behaviour(first_token_delay=0.05, token_delay=0.01)
    return live_server_factory(**emulator.env(), CHAT_TITLES="on")


def test_the_models_title_shows_in_the_header_and_every_tab_without_reload(page, emulator):
    emulator.enqueue(
        Behaviour(text="Use ijson: it streams the file.", first_token_delay=0.05),
        Behaviour(text='**"Streaming big JSON in Python."**'),
    )
    start_chat(page)
    other = another_tab(page)
    start_chat(other)  # the person's other tab, on another conversation
    socket_open(other)
    page.bring_to_front()
    assert page.locator("h1#conversation-title").inner_text() == "New chat"
    send(page, FIRST)
    complete_reply(page)
    title = "Streaming big JSON in Python"
    page.locator("h1#conversation-title", has_text=title).wait_for()
    current = page.locator("#sidebar a[aria-current=page] .sidebar-title")
    assert current.inner_text() == title
    page.wait_for_function("t => document.title.startsWith(t + ' · ')", arg=title)
    # Renaming starts from the new title.
    page.locator("summary[aria-label='Rename " + title + "']").click()
    assert page.get_by_label("New title").input_value() == title
    other.locator("#sidebar-conversations .sidebar-title", has_text=title).wait_for()
    assert other.locator("h1#conversation-title").inner_text() == "New chat"
    # The title came from the cheapest configured model, in a few words.
    request = emulator.requests[-1]
    assert HAIKU in request.model and request.body["max_tokens"] == 24
    assert FIRST in request.body["messages"][0]["content"]
    # Stored: a reload shows it too.
    page.reload()
    assert page.locator("h1#conversation-title").inner_text() == title


def test_a_rename_in_one_tab_shows_in_the_other(page):
    start_chat(page)
    other = another_tab(page)
    other.goto(page.url)
    socket_open(other)
    page.bring_to_front()
    page.locator("summary[aria-label^=Rename]").click()
    page.get_by_label("New title").fill("Trip to Lisbon")
    page.get_by_role("button", name="Save title").click()
    page.locator("h1#conversation-title", has_text="Trip to Lisbon").wait_for()
    other.locator("h1#conversation-title", has_text="Trip to Lisbon").wait_for()
    other.locator("#sidebar-conversations .sidebar-title", has_text="Trip to Lisbon").wait_for()
