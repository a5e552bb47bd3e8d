"""Versions of a conversation: Edit and Regenerate keep what came before.

A conversation is a tree of turns with an active path: Edit adds a new version of a
message, Regenerate a new version of a reply, nothing is deleted, and switching
versions shows the rest of that branch. The upstream request reads the active path.
"""

import hypothesis
import pytest
from django.db.models import Count
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from conversations.models import Turn
from conversations.selectors import reply_history, turn_versions, turns_recent
from conversations.services import (
    NotSwitchable,
    ReplyInProgress,
    ReplyInProgressElsewhere,
    ReplyOutcome,
    Send,
    conversation_create,
    message_edit,
    message_send,
    path_switch,
    reply_begin,
    reply_finish,
    reply_retry,
)
from tests.conftest import SONNET

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]


def answer(reply: Turn, text: str) -> Turn:
    reply_finish(turn_id=reply.pk, outcome=ReplyOutcome(state="complete", content=text))
    return Turn.objects.get(pk=reply.pk)


def ask(conversation, question: str, reply: str) -> tuple[Turn, Turn]:
    user_turn, pending = message_send(conversation=conversation, text=question)
    return user_turn, answer(pending, reply)


def path(conversation) -> list[str]:
    return list(
        conversation.turns.filter(on_path=True)
        .order_by("position")
        .values_list("content", flat=True)
    )


def shown(conversation) -> dict[str, tuple[int, int] | None]:
    """Each turn of the page's path: its version number and count (None: no other)."""
    result = {}
    for turn in turns_recent(conversation=conversation, limit=50):
        versions = turn_versions(turn)
        result[turn.content] = (versions.number, versions.count) if versions else None
    return result


THREE = ["Q1", "A1", "Q2", "A2", "Q3", "A3"]


@pytest.fixture
def three_exchanges(conversation):
    turns = [turn for n in (1, 2, 3) for turn in ask(conversation, f"Q{n}", f"A{n}")]
    return conversation, turns


def test_edit_adds_a_version_and_the_first_stays_intact(three_exchanges) -> None:
    conversation, turns = three_exchanges
    edited = message_edit(conversation=conversation, turn_id=turns[0].pk, text="Q1 again")
    assert edited.removed == [turn.pk for turn in turns]  # from the page, not the database
    answer(edited.reply, "A1 again")
    assert path(conversation) == ["Q1 again", "A1 again"]
    assert shown(conversation) == {"Q1 again": (2, 2), "A1 again": None}
    assert Turn.objects.filter(conversation=conversation).count() == 8

    path_switch(conversation=conversation, turn_id=turns[0].pk)  # Previous version
    assert path(conversation) == THREE
    assert shown(conversation)["Q1"] == (1, 2)
    assert [t.pk for t in conversation.turns.filter(on_path=True)] == [t.pk for t in turns]
    path_switch(conversation=conversation, turn_id=edited.user_turn.pk)  # Next version
    assert path(conversation) == ["Q1 again", "A1 again"]


def test_regenerate_twice_gives_three_replies_to_step_through(conversation) -> None:
    question, first = ask(conversation, "Q", "first")
    second = answer(reply_retry(conversation=conversation, turn_id=first.pk), "second")
    third = answer(reply_retry(conversation=conversation, turn_id=second.pk), "third")
    assert path(conversation) == ["Q", "third"]
    assert shown(conversation) == {"Q": None, "third": (3, 3)}
    last = turns_recent(conversation=conversation, limit=2)[-1]
    assert (last.previous_version, last.next_version) == (second.pk, None)
    assert {first.parent_id, second.parent_id, third.parent_id} == {question.pk}
    for reply, expected in ((second, (2, 3)), (first, (1, 3)), (third, (3, 3))):
        path_switch(conversation=conversation, turn_id=reply.pk)
        assert shown(conversation)[reply.content] == expected


@pytest.mark.parametrize("state", ["error", "interrupted", "cancelled"])
def test_a_failed_reply_with_text_is_kept_as_a_version_when_retried(conversation, state) -> None:
    _, failed = message_send(conversation=conversation, text="Q")
    reply_finish(turn_id=failed.pk, outcome=ReplyOutcome(state=state, content="hal"))
    again = reply_retry(conversation=conversation, turn_id=failed.pk)
    assert again.pk != failed.pk and again.state == "pending" and again.content == ""
    kept = Turn.objects.get(pk=failed.pk)
    assert (kept.state, kept.content, kept.on_path) == (state, "hal", False)
    answer(again, "HAL 9000")
    assert path(conversation) == ["Q", "HAL 9000"]
    assert shown(conversation) == {"Q": None, "HAL 9000": (2, 2)}
    path_switch(conversation=conversation, turn_id=failed.pk)
    assert path(conversation) == ["Q", "hal"]  # the failed text, still there


@pytest.mark.parametrize("state", ["error", "cancelled"])
def test_a_reply_that_failed_with_no_text_is_written_again_in_its_place(
    conversation, state
) -> None:
    _, failed = message_send(conversation=conversation, text="Q")
    reply_finish(turn_id=failed.pk, outcome=ReplyOutcome(state=state, content=""))
    again = reply_retry(conversation=conversation, turn_id=failed.pk)
    assert again.pk == failed.pk and again.state == "pending" and again.content == ""
    assert conversation.turns.count() == 2


def test_switching_shows_the_rest_of_that_branch_as_last_seen(three_exchanges) -> None:
    conversation, turns = three_exchanges
    a3 = turns[-1]
    a3_again = answer(reply_retry(conversation=conversation, turn_id=a3.pk), "A3 again")
    path_switch(conversation=conversation, turn_id=a3.pk)  # back to the first A3
    edited = message_edit(conversation=conversation, turn_id=turns[2].pk, text="Q2 again")
    answer(edited.reply, "A2 again")
    path_switch(conversation=conversation, turn_id=turns[2].pk)
    assert path(conversation) == THREE  # the first A3, as it was last shown, not the newest
    path_switch(conversation=conversation, turn_id=a3_again.pk)
    path_switch(conversation=conversation, turn_id=edited.user_turn.pk)
    path_switch(conversation=conversation, turn_id=turns[2].pk)
    assert path(conversation)[-1] == "A3 again"


def test_the_upstream_request_reads_the_active_path_only(three_exchanges, user) -> None:
    from conversations.actors import actor_for_user

    conversation, turns = three_exchanges
    edited = message_edit(conversation=conversation, turn_id=turns[2].pk, text="Q2 again")
    assert reply_history(turn=edited.reply) == [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2 again"},
    ]
    answer(edited.reply, "A2 again")
    path_switch(conversation=conversation, turn_id=turns[2].pk)
    begun = reply_begin(actor=actor_for_user(user), conversation=conversation, action=Send("Q4"))
    assert [m["content"] for m in begun.request.messages] == [*THREE, "Q4"]
    assert begun.added[0].parent_id == turns[-1].pk
    # A reply off the path reads its own ancestors, not the path.
    assert [m["content"] for m in reply_history(turn=edited.reply)] == ["Q1", "A1", "Q2 again"]


def test_a_reply_on_another_version_refuses_a_second_one_and_says_why(three_exchanges) -> None:
    conversation, turns = three_exchanges
    edited = message_edit(conversation=conversation, turn_id=turns[4].pk, text="Q3 again")
    path_switch(conversation=conversation, turn_id=turns[4].pk)  # its reply is still pending
    before = list(Turn.objects.order_by("pk").values_list("pk", "content", "on_path", "chosen"))
    with pytest.raises(ReplyInProgressElsewhere) as refused:
        message_send(conversation=conversation, text="Q4")
    assert "another version" in refused.value.message
    with pytest.raises(ReplyInProgressElsewhere):
        message_edit(conversation=conversation, turn_id=turns[0].pk, text="x")
    assert list(Turn.objects.order_by("pk").values_list("pk", "content", "on_path", "chosen")) == (
        before
    )
    path_switch(conversation=conversation, turn_id=edited.user_turn.pk)
    with pytest.raises(ReplyInProgress) as same_path:
        message_send(conversation=conversation, text="Q4")
    assert type(same_path.value) is ReplyInProgress


def test_switching_refuses_a_turn_of_another_conversation(three_exchanges, user) -> None:
    conversation, _ = three_exchanges
    other = conversation_create(owner=user, model=SONNET)
    elsewhere, _ = ask(other, "elsewhere", "there")
    before = list(Turn.objects.order_by("pk").values_list("pk", "on_path", "chosen"))
    for turn_id in (elsewhere.pk, 10**12):
        with pytest.raises(NotSwitchable):
            path_switch(conversation=conversation, turn_id=turn_id)
    assert list(Turn.objects.order_by("pk").values_list("pk", "on_path", "chosen")) == before


# --- every sequence of sends, edits, regenerations and switches keeps the tree whole ---

steps = st.lists(
    st.one_of(
        st.just(("send", 0)),
        st.just(("regenerate", 0)),
        st.tuples(st.just("edit"), st.integers(0, 40)),
        st.tuples(st.just("switch"), st.integers(0, 40)),
    ),
    min_size=1,
    max_size=14,
)


def check_tree(conversation) -> None:
    turns = list(conversation.turns.order_by("position", "pk"))
    on_path = [turn for turn in turns if turn.on_path]
    assert [turn.parent_id for turn in on_path] == [None, *(t.pk for t in on_path)][: len(on_path)]
    assert [turn.role for turn in on_path] == ["user", "assistant"] * (len(on_path) // 2)
    assert all(turn.chosen for turn in on_path)
    if on_path:
        assert not any(turn.parent_id == on_path[-1].pk for turn in turns)  # ends at a leaf
    groups = conversation.turns.values("parent_id", "position").annotate(n=Count("pk"))
    for group in groups:
        siblings = [
            t for t in turns if (t.parent_id, t.position) == (group["parent_id"], group["position"])
        ]
        assert sum(t.chosen for t in siblings) == 1
    for turn in turns_recent(conversation=conversation, limit=100):
        siblings = [t.pk for t in turns if (t.parent_id, t.position) == (turn.parent_id,
                                                                        turn.position)]  # fmt: skip
        versions = turn_versions(turn)
        if len(siblings) == 1:
            assert versions is None
        else:
            assert versions is not None and versions.count == len(siblings)
            assert siblings[versions.number - 1] == turn.pk


@hypothesis.settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=steps)
def test_any_sequence_keeps_one_whole_path_and_every_turn(
    steps, user, fake_provider, settings
) -> None:
    settings.CHAT_SEND_RATE_LIMIT = 10**6
    conversation = conversation_create(owner=user, model=SONNET)
    seen: dict[int, str] = {}
    for n, (step, pick) in enumerate(steps):
        turns = list(conversation.turns.order_by("pk"))
        on_path = [turn for turn in turns if turn.on_path]
        if step == "send":
            answer(message_send(conversation=conversation, text=f"q{n}")[1], f"a{n}")
        elif step == "regenerate" and on_path:
            answer(reply_retry(conversation=conversation, turn_id=on_path[-1].pk), f"r{n}")
        elif step == "edit" and on_path:
            asked = [turn for turn in on_path if turn.role == "user"]
            edited = message_edit(
                conversation=conversation, turn_id=asked[pick % len(asked)].pk, text=f"e{n}"
            )
            answer(edited.reply, f"a{n}")
        elif step == "switch" and turns:
            target = turns[pick % len(turns)]
            new_path = path_switch(conversation=conversation, turn_id=target.pk)
            assert target.pk in new_path
        check_tree(conversation)
        for turn in conversation.turns.all():  # nothing is ever deleted or rewritten
            assert seen.setdefault(turn.pk, turn.content) == turn.content
        assert len(seen) == conversation.turns.count()


def test_an_api_continuation_reads_the_active_path(three_exchanges, user) -> None:
    from api.calls import ApiCall
    from api.services import api_reply_begin
    from api.tokens import token_create
    from conversations.replies import reply_not_starting

    conversation, turns = three_exchanges
    edited = message_edit(conversation=conversation, turn_id=turns[2].pk, text="Q2 again")
    answer(edited.reply, "A2 again")
    path_switch(conversation=conversation, turn_id=turns[2].pk)
    token, _ = token_create(owner=user, name="script")
    call = ApiCall(
        model=SONNET,
        messages=[("user", "ignored history"), ("user", "Q4")],
        max_tokens=100,
        conversation_id=str(conversation.pk),
    )
    begun = api_reply_begin(token=token, call=call)
    reply_not_starting(begun.reply.pk)  # no runner here
    assert [m["content"] for m in begun.request.messages] == [*THREE, "Q4"]
    assert begun.added[0].parent_id == turns[-1].pk
