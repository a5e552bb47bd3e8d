"""Conversations become trees of turns: a database from before, with data, migrates
to a single active path per conversation, every row kept (SQLite and PostgreSQL)."""

import pytest

from tests.conftest import SONNET, migrated_to

pytestmark = pytest.mark.postgres

BEFORE = [("conversations", "0009_conversation_pinned_archived"), ("billing", "0001_initial")]


@pytest.mark.django_db(transaction=True)
def test_every_conversation_becomes_one_path_with_every_row_kept(user, other_user) -> None:
    old = migrated_to(BEFORE)
    try:
        Conversation = old.get_model("conversations", "Conversation")
        Turn = old.get_model("conversations", "Turn")
        Spend = old.get_model("billing", "Spend")
        chats = {}
        # Positions as stored over time: from 1, from 0, with a gap (an edit long ago).
        for owner, title, positions in (
            (user, "three exchanges", [1, 2, 3, 4, 5, 6]),
            (user, "from zero", [0, 1]),
            (other_user, "with a gap", [1, 2, 5, 6]),
            (other_user, "empty", []),
        ):
            chat = Conversation.objects.create(owner_id=owner.pk, model=SONNET, title=title)
            for n, position in enumerate(positions):
                Turn.objects.create(
                    conversation=chat,
                    position=position,
                    role="user" if n % 2 == 0 else "assistant",
                    content=f"{title} {position}",
                    state="complete" if n % 2 == 0 else "error",
                    model="" if n % 2 == 0 else SONNET,
                )
            chats[title] = chat.pk
        reply = Turn.objects.filter(role="assistant").order_by("pk").first()
        Spend.objects.create(user_id=user.pk, turn=reply, model=SONNET, input_tokens=1,
                             output_tokens=2, cost_usd="0.000033")  # fmt: skip
        fields = ("pk", "conversation_id", "position", "role", "content", "state")
        before = sorted(Turn.objects.values_list(*fields))
    finally:
        new = migrated_to(None)

    Turn = new.get_model("conversations", "Turn")
    after = sorted(Turn.objects.values_list(*fields))
    assert after == before  # every row, unchanged
    for title, chat_id in chats.items():
        path = list(Turn.objects.filter(conversation_id=chat_id).order_by("position"))
        assert all(turn.on_path and turn.chosen for turn in path), title
        # Each turn follows the one before it; the first follows nothing.
        assert [turn.parent_id for turn in path] == [None, *(t.pk for t in path)][: len(path)]
    assert new.get_model("billing", "Spend").objects.get().turn_id == reply.pk
