"""Review, exports and the ledger see every version: the admin transcript shows the
whole tree with the active path marked, JSON carries parent ids, Markdown writes the
active path then the other versions, and each reply is billed on its own."""

import json
import re
from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission

from billing.models import Spend
from conversations.services import (
    ReplyOutcome,
    conversation_create,
    message_edit,
    message_send,
    reply_finish,
    reply_retry,
)
from tests.conftest import SONNET

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]


def finish(reply, text: str) -> None:
    reply_finish(
        turn_id=reply.pk,
        outcome=ReplyOutcome(state="complete", content=text, input_tokens=10, output_tokens=20),
    )


@pytest.fixture
def versions(user, fake_provider):
    """Q1 → A1 (regenerated: A1b) → Q2 → A2, then Q1 edited (Q1b → A1c): the path."""
    chat = conversation_create(owner=user, model=SONNET, title="Versions")
    q1, a1 = message_send(conversation=chat, text="Q1 first")
    finish(a1, "A1 first")
    a1b = reply_retry(conversation=chat, turn_id=a1.pk)
    finish(a1b, "A1 second")
    q2, a2 = message_send(conversation=chat, text="Q2 after A1 second")
    finish(a2, "A2")
    edited = message_edit(conversation=chat, turn_id=q1.pk, text="Q1 edited")
    finish(edited.reply, "A1 of the edit")
    return chat, {"q1": q1, "a1": a1, "a1b": a1b, "q2": q2, "a2": a2,
                  "q1b": edited.user_turn, "a1c": edited.reply}  # fmt: skip


def test_json_export_carries_every_version_with_its_parent(client, user, versions):
    chat, turns = versions
    client.force_login(user)
    data = json.loads(client.get(f"/conversations/{chat.pk}/export.json").content)
    exported = {turn["id"]: turn for turn in data["turns"]}
    assert set(exported) == {turn.pk for turn in turns.values()}
    parents = {name: exported[turn.pk]["parent"] for name, turn in turns.items()}
    assert parents == {
        "q1": None, "a1": turns["q1"].pk, "a1b": turns["q1"].pk, "q2": turns["a1b"].pk,
        "a2": turns["q2"].pk, "q1b": None, "a1c": turns["q1b"].pk,
    }  # fmt: skip
    on_path = [turn["content"] for turn in data["turns"] if turn["on_path"]]
    assert on_path == ["Q1 edited", "A1 of the edit"]
    # Each reply billed on its own, as the ledger has it.
    for name in ("a1", "a1b", "a2", "a1c"):
        spend = Spend.objects.get(turn=turns[name])
        assert Decimal(exported[turns[name].pk]["cost_usd"]) == spend.cost_usd > 0


def test_markdown_export_writes_the_path_then_the_other_versions(client, user, versions):
    chat, _ = versions
    client.force_login(user)
    markdown = client.get(f"/conversations/{chat.pk}/export.md").content.decode()
    path, others = markdown.split("\n## Other versions\n")
    assert "Q1 edited" in path and "A1 of the edit" in path and "Q1 first" not in path
    assert "## You, version 2 of 2" in path
    order = [text for text in ("Q1 first", "A1 first", "A1 second", "Q2 after", "A2")
             if text in others]  # fmt: skip
    assert order == ["Q1 first", "A1 first", "A1 second", "Q2 after", "A2"]
    assert "### You, version 1 of 2 · the first message" in others
    assert "version 2 of 2 · after “Q1 first”" in others  # the second A1
    assert "### You · after “A1 second”" in others


def test_the_admin_transcript_shows_the_whole_tree_with_the_path_marked(client, versions):
    from django.contrib.auth import get_user_model

    chat, turns = versions
    reviewer = get_user_model().objects.create_user(username="rita", password="p-long-1234")
    reviewer.user_permissions.add(Permission.objects.get(codename="review_conversation"))
    client.force_login(reviewer)
    page = client.get(f"/admin/conversations/conversation/{chat.pk}/change/").content.decode()
    marks = re.findall(r'<article id="turn-(\d+)"[^>]*data-path="(active|other)"', page)
    # Depth first, versions in the order they were made; the active path marked.
    assert [(int(pk), mark) for pk, mark in marks] == [
        (turns["q1"].pk, "other"),
        (turns["a1"].pk, "other"),
        (turns["a1b"].pk, "other"),
        (turns["q2"].pk, "other"),
        (turns["a2"].pk, "other"),
        (turns["q1b"].pk, "active"),
        (turns["a1c"].pk, "active"),
    ]
    assert page.count("Active path</span>") == 2
    assert page.count("Other version, not on the active path</span>") == 5
    assert "Previous version" not in page  # read-only: no switching here
    assert '<span class="version-count">2 / 2</span>' in page
