"""The review admin in chromium: change list, a transcript and the usage report."""

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.chat_client import ChatSocket, create_conversation
from tests.conftest import ARTIFACTS, PASSWORD, SONNET
from tests.emulator import Behaviour

pytestmark = pytest.mark.browser
QUESTION = "How do I read a JSON file in Python?"


def test_reviewer_reads_the_change_list_a_transcript_and_the_report(
    browser, live_server_factory, emulator
) -> None:
    server = live_server_factory(**emulator.env(), CHAT_RETRY_ATTEMPTS="1")
    client = server.login("alice")

    async def ask(conversation_id: str, text: str) -> None:
        async with ChatSocket(server, client, conversation_id) as socket:
            await socket.send(message=text)
            await socket.until_final()

    def run(coroutine) -> None:  # type: ignore[no-untyped-def]
        # Playwright's sync API keeps an event loop in this thread; chat from another.
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, coroutine).result()

    good = create_conversation(client, model=SONNET, system_prompt="You teach Python.")
    run(ask(good, QUESTION))
    emulator.enqueue(Behaviour(status=500))
    run(ask(create_conversation(client, model=SONNET), "This one fails"))
    server.manage(
        "shell", "-c",
        "from django.contrib.auth.models import Permission, User; "
        f"u = User.objects.create_user('rita', password='{PASSWORD}'); "
        "u.user_permissions.add(Permission.objects.get(codename='review_conversation'))",
    )  # fmt: skip

    page = browser.new_page(base_url=server.url, viewport={"width": 1280, "height": 900})
    page.set_default_timeout(15_000)
    page.goto("/admin/login/")
    page.get_by_label("Username").fill("rita")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.goto("/admin/conversations/conversation/")
    rows = page.locator("#result_list tbody tr")
    assert rows.count() == 2
    # Titles are read on the transcript, where the look is recorded; the list is metadata.
    assert "This one fails" not in "".join(rows.all_inner_texts())
    failed = page.locator("td.field-errors", has_text=re.compile(r"^1$"))
    assert rows.filter(has=failed).count() == 1
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "admin-changelist.png"), full_page=True, caret="initial")

    page.goto("/admin/conversations/conversation/?errors=yes")
    assert page.locator("#result_list tbody tr").count() == 1

    page.goto("/admin/conversations/conversation/")
    answered = page.locator("td.field-errors", has_text=re.compile(r"^0$"))
    page.locator("#result_list tbody tr", has=answered).get_by_role("link").click()
    page.locator(".transcript").wait_for()
    assert page.locator(".transcript h2", has_text="Basic Method").count() == 1
    assert "cf-aig-log-id" in page.locator(".transcript").inner_text()
    page.screenshot(path=str(ARTIFACTS / "admin-transcript.png"), full_page=True, caret="initial")

    page.goto("/admin/usage/")
    assert page.locator("svg.chart rect.bar").count() >= 1
    assert "Total:" in page.locator(".totals").inner_text()
    page.screenshot(path=str(ARTIFACTS / "admin-usage-report.png"), full_page=True, caret="initial")
    page.close()

    owner_page = server.login("alice").get(f"/conversations/{good}/").text
    assert "Reviewed by rita on" in owner_page
