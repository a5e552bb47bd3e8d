"""A streaming reply in a real browser: Markdown rendered as it arrives, and a view
that follows the text unless the reader scrolled up."""

import pytest

from conversations.rendering import render_markdown
from tests.conftest import ARTIFACTS, start_chat
from tests.emulator import Behaviour

pytestmark = pytest.mark.browser
SCREENSHOTS = ARTIFACTS  # docs/screenshots/ holds the ones looked at and kept

CODE = """\
import json

with open("data.json") as file:
    data = json.load(file)
    for key, value in data.items():
        print(f"{key}: {value}")
"""
REPLY = f"""\
## Reading a JSON file

Python reads JSON with **the standard library**; see [the json docs](https://docs.python.org/3/library/json.html).

- open the file with `open()`
- parse it with `json.load()`
- close it (the `with` block does)

```python
{CODE}```

That is all you need. The *same* module writes JSON too, with `json.dump()`.
"""
# Slow enough that its code block stays half-written for a few seconds.
SLOW = 0.15

# Records whether a streaming view ever showed raw Markdown, and what it showed.
WATCH_RAW = """() => {
  window.rawSeen = [];
  new MutationObserver(() => {
    document.querySelectorAll('.stream-view').forEach((view) => {
      const text = view.textContent;
      if (text.includes('**') || text.includes('```')) { window.rawSeen.push(text); }
    });
  }).observe(document.getElementById('turns'),
             {subtree: true, childList: true, characterData: true});
}"""
STREAMING = "article[data-role=assistant][data-state=streaming]"
OPEN_FENCE_HIGHLIGHTED = f"""() => {{
  const turn = document.querySelector('{STREAMING}');
  if (!turn) return false;
  const source = turn.querySelector('.turn-text.streaming').textContent;
  const code = turn.querySelector('.stream-view .code-block code.language-python');
  return source.split('```').length === 2 && code !== null && code.querySelector('span.kn') !== null
    && code.textContent.includes('json.load');
}}"""


def _send(page, text: str) -> None:
    box = page.get_by_role("textbox", name="Message")
    box.fill(text)
    box.press("Enter")


def _while_streaming(page, selector: str) -> None:
    """Wait until the streaming reply's rendered view has `selector`, still streaming."""
    page.wait_for_function(
        f"() => document.querySelector('{STREAMING} .stream-view {selector}') !== null"
    )


def test_markdown_renders_while_the_reply_streams(page, emulator) -> None:
    emulator.enqueue(Behaviour(text=REPLY, token_delay=SLOW))
    start_chat(page)
    page.evaluate(WATCH_RAW)
    _send(page, "How do I read a JSON file?")
    turn = page.locator('article[data-role="assistant"]')

    _while_streaming(page, "h2")
    assert turn.get_attribute("aria-busy") == "true"
    _while_streaming(page, "strong")
    _while_streaming(page, 'a[href="https://docs.python.org/3/library/json.html"]')
    _while_streaming(page, "li")
    page.wait_for_function(OPEN_FENCE_HIGHLIGHTED)  # an open fence, highlighted as it grows
    assert turn.get_attribute("data-state") == "streaming"
    view = turn.locator(".stream-view")
    assert view.locator("h2").inner_text() == "Reading a JSON file"
    assert view.locator("li").count() == 3
    assert view.locator("strong").first.inner_text() == "the standard library"
    # The reply's end is not announced yet: nothing in the status region.
    assert page.locator("#reply-status").inner_text() == ""

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "streaming-1280.png"), caret="initial")
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_function(  # a narrower window still shows the newest text
        "() => { const box = document.scrollingElement;"
        " return box.scrollHeight - box.scrollTop - box.clientHeight < 80; }"
    )
    assert page.evaluate(OPEN_FENCE_HIGHLIGHTED)  # still inside the code block
    page.screenshot(path=str(SCREENSHOTS / "streaming-390.png"), caret="initial")

    done = page.locator('article[data-role="assistant"][data-state="complete"]')
    done.wait_for()
    assert page.evaluate("window.rawSeen") == []  # never raw ** or ```
    assert done.get_attribute("aria-busy") is None
    assert page.locator("#reply-status").inner_text() == "Reply complete."
    same = page.evaluate(
        """(expected) => {
          const probe = document.createElement('div');
          probe.innerHTML = expected;
          const shown = document.querySelector('article[data-role=assistant] .turn-text.markdown');
          return shown.innerHTML === probe.innerHTML;
        }""",
        render_markdown(REPLY),
    )
    assert same  # the final HTML is the whole text's rendering


def test_reload_mid_reply_shows_the_partial_reply_rendered(page, emulator) -> None:
    emulator.enqueue(Behaviour(text=REPLY, token_delay=SLOW))
    start_chat(page)
    _send(page, "How do I read a JSON file?")
    page.wait_for_function(OPEN_FENCE_HIGHLIGHTED)
    page.reload()
    page.locator(STREAMING).wait_for()
    view = page.locator(f"{STREAMING} .stream-view")
    assert view.locator("h2").inner_text() == "Reading a JSON file"
    assert view.locator("li").count() == 3
    page.wait_for_function(OPEN_FENCE_HIGHLIGHTED)
    page.locator('article[data-role="assistant"][data-state="complete"]').wait_for()
    assert page.locator("article[data-role=assistant] .turn-text.markdown p").last.inner_text() == (
        "That is all you need. The same module writes JSON too, with json.dump()."
    )


LONG = "\n\n".join(f"Paragraph {i}: the reply goes on, line after line." for i in range(70))
SCROLL_STATE = """() => {
  const box = document.scrollingElement;
  const source = document.querySelector('article[data-role=assistant] .turn-text');
  return {top: box.scrollTop, fromBottom: box.scrollHeight - box.scrollTop - box.clientHeight,
          chars: source ? source.textContent.length : 0,
          focused: document.activeElement ? document.activeElement.outerHTML.slice(0, 60) : ''};
}"""


def test_scrolling_up_stops_following_until_jump_to_latest(page, emulator) -> None:
    emulator.enqueue(Behaviour(text=LONG, token_delay=0.03))
    start_chat(page)
    page.set_viewport_size({"width": 1280, "height": 700})
    _send(page, "Talk for a while")
    jump = page.get_by_role("button", name="Jump to latest")
    # The view follows the text while the reader stays at the bottom.
    page.wait_for_function(
        "() => document.scrollingElement.scrollHeight > document.scrollingElement.clientHeight"
        " + 600 && document.querySelector('" + STREAMING + "') !== null"
    )
    state = page.evaluate(SCROLL_STATE)
    assert state["fromBottom"] < 80, state
    assert jump.is_hidden()

    page.mouse.move(640, 300)
    page.mouse.wheel(0, -500)
    jump.wait_for()
    held = page.evaluate(SCROLL_STATE)
    page.wait_for_function(
        f"() => document.querySelector('article[data-role=assistant] .turn-text')"
        f".textContent.length > {held['chars'] + 150}"
    )
    later = page.evaluate(SCROLL_STATE)
    assert abs(later["top"] - held["top"]) <= 2, (held, later)  # it stayed where the reader is
    assert later["fromBottom"] > held["fromBottom"]  # while text kept arriving below
    assert later["focused"] == held["focused"]  # and focus did not move
    assert page.locator(STREAMING).count() == 1

    jump.click()
    assert page.evaluate(SCROLL_STATE)["fromBottom"] < 80
    assert jump.is_hidden()
    resumed = page.evaluate(SCROLL_STATE)
    page.wait_for_function(
        f"() => document.querySelector('article[data-role=assistant] .turn-text')"
        f".textContent.length > {resumed['chars'] + 150}"
    )
    following = page.evaluate(SCROLL_STATE)
    assert following["fromBottom"] < 80 and following["top"] > resumed["top"], following
    assert page.locator(STREAMING).count() == 1  # all of this while the reply streamed
    page.locator('article[data-role="assistant"][data-state="complete"]').wait_for()
