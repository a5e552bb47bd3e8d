"""The chat in a real browser: Debian's chromium driven by Playwright, a real daphne."""

import pytest

from tests.conftest import ARTIFACTS, start_chat
from tests.emulator import Behaviour

pytestmark = pytest.mark.browser
SYSTEM = "You are a helpful coding assistant specializing in Python."
QUESTION = "How do I read a JSON file in Python?"
HOSTILE = (
    'Look: <script>window.pwned = 1</script> and <img src=x onerror="window.pwned = 2"> '
    "and [a link](javascript:window.pwned=3) and [a good one](https://example.com)."
)


def test_send_streams_and_renders_the_reply(page, emulator) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    start_chat(page, system=SYSTEM, temperature="0.3")
    box = page.get_by_role("textbox", name="Message")
    box.fill(QUESTION)
    box.press("Enter")

    user_turn = page.locator('article[data-role="user"]')
    user_turn.wait_for()
    assert QUESTION in user_turn.inner_text()
    assert page.locator("#conversation-title").inner_text() == QUESTION  # titled from it
    streaming = page.locator('article[data-role="assistant"][data-state="streaming"]')
    streaming.wait_for()
    assert page.get_by_role("button", name="Stop").is_visible()
    page.screenshot(path=str(ARTIFACTS / "chat-streaming-desktop.png"), caret="initial")

    done = page.locator('article[data-role="assistant"][data-state="complete"]')
    done.wait_for()
    assert box.input_value() == ""  # cleared once the server acknowledged it
    assert done.locator("h2", has_text="Basic Method").count() == 1
    assert done.locator(".code-block pre .highlight, .code-block code.highlight").count() >= 1
    assert done.get_by_role("button", name="Copy code").count() >= 1
    assert page.get_by_role("button", name="Stop").count() == 0
    assert emulator.requests[-1].body["system"] == SYSTEM
    assert emulator.requests[-1].body["temperature"] == 0.3
    page.screenshot(
        path=str(ARTIFACTS / "chat-complete-desktop.png"), full_page=True, caret="initial"
    )
    page.set_viewport_size({"width": 360, "height": 780})
    page.screenshot(path=str(ARTIFACTS / "chat-complete-360.png"), full_page=True, caret="initial")
    page.reload()
    page.locator('article[data-role="assistant"][data-state="complete"]').wait_for()


def test_stop_keeps_the_partial_reply(page, emulator) -> None:
    emulator.enqueue(Behaviour(tokens=400, token_delay=0.05))
    start_chat(page)
    box = page.get_by_role("textbox", name="Message")
    box.fill("Tell me a long story")
    box.press("Enter")
    page.locator('article[data-role="assistant"][data-state="streaming"]').wait_for()
    page.wait_for_function(
        "() => document.querySelector('article[data-role=assistant] .turn-text')"
        ".textContent.length > 20"
    )
    page.get_by_role("button", name="Stop").click()
    cancelled = page.locator('article[data-role="assistant"][data-state="cancelled"]')
    cancelled.wait_for()
    assert "tok" in cancelled.inner_text()


def test_hostile_model_output_is_inert_text(page, emulator) -> None:
    emulator.enqueue(Behaviour(text=HOSTILE))
    start_chat(page)
    box = page.get_by_role("textbox", name="Message")
    box.fill("<b>bold?</b>")
    box.press("Enter")
    done = page.locator('article[data-role="assistant"][data-state="complete"]')
    done.wait_for()
    assert page.evaluate("window.pwned") is None
    assert "<script>window.pwned = 1</script>" in done.inner_text()
    assert done.locator("img, script").count() == 0
    assert done.locator('a[href^="javascript"]').count() == 0
    good = done.locator('a[href="https://example.com"]')
    assert good.get_attribute("rel") == "noopener noreferrer nofollow"
    assert page.locator('article[data-role="user"] .user-text').inner_text() == "<b>bold?</b>"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(
        path=str(ARTIFACTS / "chat-hostile-desktop.png"), full_page=True, caret="initial"
    )


@pytest.mark.local_model
def test_zero_setup_chat_with_the_bundled_model(browser, live_server_factory) -> None:
    server = live_server_factory()  # no Cloudflare variables: the bundled model is the default
    page = browser.new_page(base_url=server.url)
    page.set_default_timeout(30_000)
    page.goto("/accounts/login/")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("a-Long-test-password-42")
    page.get_by_role("button", name="Sign in").click()
    # The home page is an empty chat, ready to type in, that says who will answer.
    assert "(not configured)" in page.get_by_label("Model", exact=True).inner_text()
    assert "SmolLM2" in page.locator(".empty-chat").inner_text()
    box = page.get_by_role("textbox", name="Message")
    assert page.evaluate("document.activeElement.getAttribute('aria-label')") == "Message"
    box.fill("What is the capital of France?")
    box.press("Enter")
    page.wait_for_url("**/conversations/*/")
    done = page.locator('article[data-role="assistant"][data-state="complete"]')
    done.wait_for()
    assert "SmolLM2" in done.inner_text()
    assert len(done.locator(".turn-text").inner_text().strip()) > 0
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(
        path=str(ARTIFACTS / "chat-local-model-desktop.png"), full_page=True, caret="initial"
    )
    page.close()


def streamed_is_consecutive(text: str) -> bool:
    words = text.split()
    return bool(words) and words == [f"tok{i}" for i in range(len(words))]


def test_reload_mid_reply_shows_partial_text_and_continues(page, emulator) -> None:
    emulator.enqueue(Behaviour(tokens=150, token_delay=0.03))
    start_chat(page)
    box = page.get_by_role("textbox", name="Message")
    box.fill("count for me")
    box.press("Enter")
    text = page.locator('article[data-role="assistant"] .turn-text')
    page.wait_for_function(
        "() => (document.querySelector('article[data-role=assistant] .turn-text')"
        "?.textContent || '').split(' ').length > 20"
    )
    page.reload()
    streaming = page.locator('article[data-role="assistant"][data-state="streaming"]')
    streaming.wait_for()
    assert text.inner_text().startswith("tok0 tok1")  # the text so far, from the server
    page.wait_for_function(
        "() => document.querySelector('article[data-role=assistant] .turn-text')"
        ".textContent.trim().split(/\\s+/).length > 40"
    )
    shown = text.inner_text()
    assert streamed_is_consecutive(shown), shown  # caught up: no gap, no double
    assert len(shown.split()) > 40
    page.locator('article[data-role="assistant"][data-state="complete"]').wait_for()
    assert len(text.inner_text().split()) == 150


def test_double_click_on_send_creates_one_turn(page, emulator) -> None:
    emulator.enqueue(Behaviour(tokens=30, token_delay=0.02))
    start_chat(page)
    page.get_by_role("textbox", name="Message").fill("only once, please")
    page.get_by_role("button", name="Send").dblclick()
    page.locator('article[data-role="assistant"][data-state="complete"]').wait_for()
    # The second click reached the server and was refused, not queued: the page says so.
    page.locator("#composer-status .error", has_text="A reply is still being written").wait_for()
    assert page.locator('article[data-role="user"]').count() == 1
    assert page.locator('article[data-role="assistant"]').count() == 1
    page.reload()
    assert page.locator('article[data-role="user"]').count() == 1
    assert len(emulator.requests) == 1
