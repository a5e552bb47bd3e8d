"""An axe-core scan (vendored for tests: tests/axe) of the pages people live in: no
serious or critical violation. The chat's own hooks for assistive technology too."""

from pathlib import Path

import pytest

from tests.emulator import Behaviour

pytestmark = pytest.mark.browser

AXE = Path(__file__).resolve().parent / "axe" / "node_modules" / "axe-core" / "axe.min.js"


def violations(page) -> list[str]:
    if not AXE.exists():
        pytest.fail("axe-core is missing: `make test` installs it (tests/axe, npm ci)")
    page.evaluate(AXE.read_text())  # evaluated, not a <script>: the page's CSP stays strict
    found = page.evaluate(
        "async () => (await axe.run(document, {runOnly: ['wcag2a', 'wcag2aa', 'best-practice']}))"
        ".violations.filter(v => ['serious', 'critical'].includes(v.impact))"
        ".map(v => v.id + ': ' + v.nodes.map(n => n.target.join(' ')).join(', '))"
    )
    return list(found)


@pytest.mark.parametrize("width", [1280, 390])
def test_the_chat_pages_have_no_serious_violations(page, emulator, width) -> None:
    page.set_viewport_size({"width": width, "height": 900})
    assert violations(page) == []  # the new chat
    emulator.enqueue(Behaviour(text="# Title\n\nSome **bold** text and `code`.\n\n- one\n- two"))
    box = page.get_by_role("textbox", name="Message")
    box.fill("Hello")
    box.press("Enter")
    page.wait_for_url("**/conversations/*/")
    page.locator('article[data-role="assistant"][data-state="complete"]').wait_for()
    assert violations(page) == []  # a chat with a reply
    page.goto("/?q=Hello")
    assert violations(page) == []  # search results
    page.goto("/presets/")
    assert violations(page) == []
    page.goto("/accounts/settings/")
    page.get_by_role("heading", name="Your account", level=1).wait_for()
    assert violations(page) == []  # the account: profile, password, sessions


def test_one_heading_one_and_the_turn_list_is_a_log(page, emulator) -> None:
    box = page.get_by_role("textbox", name="Message")
    box.fill("Hello")
    box.press("Enter")
    page.wait_for_url("**/conversations/*/")
    page.locator('article[data-role="assistant"][data-state="complete"]').wait_for()
    assert page.locator("h1").count() == 1
    assert page.get_by_role("log").count() == 1
    assert page.locator("[role=alert]").count() == 0  # only an error that just happened
