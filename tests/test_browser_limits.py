"""The page refuses, itself, a frame the server would refuse (finding: frames past
the transport's limit dropped the connection with no word to the person)."""

import pytest

from tests.conftest import ARTIFACTS, PASSWORD, start_chat
from tests.emulator import Behaviour

pytestmark = [pytest.mark.browser, pytest.mark.postgres]


@pytest.fixture
def small_frames_page(browser, live_server_factory, emulator):
    emulator.default = Behaviour(first_token_delay=0.01, token_delay=0.0)
    server = live_server_factory(**emulator.env(), CHAT_MAX_FRAME_BYTES="20000")
    context = browser.new_context(base_url=server.url, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.goto("/accounts/login/")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(server.url + "/")
    yield page, server
    context.close()


def test_an_oversized_message_is_refused_on_the_page_and_the_socket_stays(
    small_frames_page,
) -> None:
    page, _ = small_frames_page
    start_chat(page)
    sent: list[str] = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: sent.append(payload)))
    page.reload()
    page.wait_for_function("() => document.querySelector('[ws-connect]') && window.htmx")
    box = page.get_by_role("textbox", name="Message")
    # 10,000 characters (far under the character limit), 30,000 bytes as UTF-8.
    box.fill("€" * 10_000)
    box.press("Enter")
    error = page.locator("#composer-status .error")
    error.wait_for()
    assert "too large to send" in error.inner_text()
    assert box.input_value() == "€" * 10_000  # kept, to shorten
    assert not [frame for frame in sent if "€" in frame]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "frame-too-large-desktop.png"))
    # The socket is still open: a normal message goes through.
    box.fill("A short one")
    box.press("Enter")
    page.locator('article[data-role="assistant"][data-state="complete"]').wait_for()
    assert page.locator('article[data-role="user"]').count() == 1
