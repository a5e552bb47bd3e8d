"""Services change what is stored; selectors only show a user what is theirs."""

import math

import pytest
from django.core.exceptions import ValidationError

from conversations.models import Conversation, Turn
from conversations.selectors import (
    conversation_get_for,
    conversation_list_for,
    reply_history,
    turn_active,
    turns_recent,
)
from conversations.services import (
    ReplyInProgress,
    ReplyOutcome,
    conversation_create,
    conversation_update,
    message_send,
    reply_finish,
    reply_start,
    turn_checkpoints,
)
from tests.conftest import SONNET

pytestmark = pytest.mark.django_db


def test_new_conversation_uses_default_model_and_settings(user, settings) -> None:
    settings.CHAT_DEFAULT_MODEL = "local/smollm2-135m"
    conversation = conversation_create(owner=user)
    assert conversation.model == "local/smollm2-135m"
    assert conversation.max_tokens == settings.CHAT_DEFAULT_MAX_TOKENS
    assert conversation.temperature is None


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"temperature": 1.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": math.nan}, "temperature"),
        ({"top_p": math.inf}, "top_p"),
        ({"temperature": 0.5, "top_p": 0.5}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 64001}, "max_tokens"),
        ({"model": "openai/gpt-9"}, "model"),
    ],
)
def test_invalid_settings_are_refused_and_nothing_is_stored(
    user, fake_provider, fields, field
) -> None:
    with pytest.raises(ValidationError) as error:
        conversation_create(owner=user, **{"model": SONNET, **fields})
    assert field in error.value.message_dict
    assert Conversation.objects.count() == 0


def test_unconfigured_cloudflare_model_is_refused(user, settings) -> None:
    settings.CLOUDFLARE_ACCOUNT_ID = ""
    with pytest.raises(ValidationError) as error:
        conversation_create(owner=user, model=SONNET)
    assert "not configured" in error.value.message_dict["model"][0]


def test_update_applies_valid_settings_and_keeps_old_on_error(conversation) -> None:
    conversation_update(conversation=conversation, temperature=0.7, system_prompt="Be brief.")
    conversation.refresh_from_db()
    assert (conversation.temperature, conversation.system_prompt) == (0.7, "Be brief.")
    with pytest.raises(ValidationError):
        conversation_update(conversation=conversation, temperature=3.0, system_prompt="Changed")
    conversation.refresh_from_db()
    assert (conversation.temperature, conversation.system_prompt) == (0.7, "Be brief.")


def test_send_stores_user_turn_then_pending_reply_with_its_settings(conversation) -> None:
    conversation_update(conversation=conversation, temperature=0.4, top_k=5, system_prompt="S")
    user_turn, reply = message_send(conversation=conversation, text="Hello there")
    assert (user_turn.position, user_turn.role, user_turn.content) == (1, "user", "Hello there")
    assert (reply.position, reply.role, reply.state) == (2, "assistant", "pending")
    assert (reply.model, reply.temperature, reply.top_k, reply.system_prompt) == (
        SONNET,
        0.4,
        5,
        "S",
    )
    conversation.refresh_from_db()
    assert conversation.title == "Test chat"


def test_first_message_titles_an_untitled_conversation(user, fake_provider) -> None:
    conversation = conversation_create(owner=user, model=SONNET)
    message_send(conversation=conversation, text="  How do I read\na JSON file in Python? " * 4)
    conversation.refresh_from_db()
    assert conversation.title.startswith("How do I read a JSON file in Python?")
    assert len(conversation.title) <= 61


@pytest.mark.parametrize("text", ["", "   \n", None, 42])
def test_empty_or_wrong_typed_message_is_refused(conversation, text) -> None:
    with pytest.raises(ValidationError):
        message_send(conversation=conversation, text=text)
    assert Turn.objects.count() == 0


def test_second_send_while_reply_is_active_is_refused(conversation) -> None:
    message_send(conversation=conversation, text="first")
    with pytest.raises(ReplyInProgress):
        message_send(conversation=conversation, text="second")
    assert list(Turn.objects.values_list("content", flat=True)) == ["first", ""]


def test_one_checkpoint_batch_saves_live_replies_and_names_the_ones_to_stop(
    user, fake_provider
) -> None:
    from conversations.services import reply_stop_request

    replies = []
    for n in range(4):
        chat = conversation_create(owner=user, model=SONNET, title=f"chat {n}")
        _, reply = message_send(conversation=chat, text="hi")
        replies.append(reply)
    live, beat_only, stopped, pending = replies
    for reply in (live, beat_only, stopped):
        assert reply_start(turn_id=reply.pk)
    reply_stop_request(conversation_id=stopped.conversation_id)

    saved = turn_checkpoints(
        contents={live.pk: "Hel", beat_only.pk: None, stopped.pk: "x", pending.pk: "y"}
    )

    assert saved == {live.pk, beat_only.pk}
    stored = {t.pk: t for t in Turn.objects.filter(pk__in=[r.pk for r in replies])}
    assert stored[live.pk].content == "Hel"
    assert stored[stopped.pk].content == "" and stored[pending.pk].content == ""
    for reply in (live, beat_only):
        assert stored[reply.pk].heartbeat_at > stored[reply.pk].started_at
    assert turn_checkpoints(contents={beat_only.pk: None, stopped.pk: None}) == {beat_only.pk}


def test_reply_moves_through_states_once(conversation) -> None:
    _, reply = message_send(conversation=conversation, text="hi")
    assert turn_checkpoints(contents={reply.pk: "x"}) == set()  # not streaming yet
    assert reply_start(turn_id=reply.pk) is True
    assert turn_checkpoints(contents={reply.pk: "Hel"}) == {reply.pk}
    assert turn_active(conversation_id=conversation.pk).content == "Hel"
    done = reply_finish(
        turn_id=reply.pk,
        outcome=ReplyOutcome(
            state="complete",
            content="Hello",
            input_tokens=3,
            output_tokens=2,
            gateway_log_id="log-1",
            stop_reason="end_turn",
        ),
    )
    assert done is not None
    assert (done.state, done.content, done.output_tokens, done.gateway_log_id) == (
        "complete",
        "Hello",
        2,
        "log-1",
    )
    assert done.finished_at is not None
    # A second ending (say, a late stop) changes nothing.
    assert (
        reply_finish(turn_id=reply.pk, outcome=ReplyOutcome(state="cancelled", content="")) is None
    )
    assert Turn.objects.get(pk=reply.pk).content == "Hello"
    assert turn_active(conversation_id=conversation.pk) is None


def test_history_alternates_and_skips_empty_failed_replies(conversation) -> None:
    _, first = message_send(conversation=conversation, text="one")
    reply_finish(turn_id=first.pk, outcome=ReplyOutcome(state="error", content=""))
    _, second = message_send(conversation=conversation, text="two")
    assert reply_history(turn=second) == [{"role": "user", "content": "one\n\ntwo"}]


def test_selectors_scope_to_owner(conversation, other_user) -> None:
    assert list(conversation_list_for(user=other_user)) == []
    assert conversation_get_for(user=other_user, conversation_id=conversation.pk) is None
    assert (
        conversation_get_for(user=conversation.owner, conversation_id=conversation.pk)
        == conversation
    )
    assert conversation_get_for(user=conversation.owner, conversation_id="not-a-uuid") is None


def test_recent_turns_are_the_latest_in_order(conversation) -> None:
    for n in range(3):
        _, reply = message_send(conversation=conversation, text=f"q{n}")
        reply_finish(turn_id=reply.pk, outcome=ReplyOutcome(state="complete", content=f"a{n}"))
    assert [t.content for t in turns_recent(conversation=conversation, limit=3)] == [
        "a1",
        "q2",
        "a2",
    ]


def test_a_send_begun_is_stored_streaming_with_its_request_ready(
    conversation, user, django_assert_num_queries
) -> None:
    from conversations.actors import actor_for_user
    from conversations.services import Send, reply_begin

    message_send(conversation=conversation, text="first")
    Turn.objects.filter(role="assistant").update(state="complete", content="one")
    actor = actor_for_user(user)
    # Lock the conversation and the person, count and record the call, read the
    # history, the budget (for the hold, and its warnings), insert both turns (one
    # each: the reply names the message as its parent), the conversation's time, and
    # the transaction's savepoint pair: none of its own for the upstream request.
    with django_assert_num_queries(11):
        begun = reply_begin(actor=actor, conversation=conversation, action=Send("second"))

    stored = Turn.objects.get(pk=begun.reply.pk)
    assert stored.state == "streaming" and stored.heartbeat_at is not None
    assert [(t.position, t.role) for t in begun.added] == [(3, "user"), (4, "assistant")]
    assert (begun.changed, begun.removed) == ([], [])
    assert begun.request.messages == [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "one"},
        {"role": "user", "content": "second"},
    ]


def test_a_retry_begun_reads_the_history_once(
    conversation, user, django_assert_num_queries
) -> None:
    from conversations.actors import actor_for_user
    from conversations.services import Retry, reply_begin

    _, reply = message_send(conversation=conversation, text="first")
    Turn.objects.filter(pk=reply.pk).update(state="error", content="")
    actor = actor_for_user(user)
    # Lock the conversation, read the last turn, lock the person, count and record
    # the call, read the history (once: for the hold and the request), the budget (for
    # the hold, and its warnings), reset the reply, the conversation's time, read the
    # reply back, and the savepoint pair.
    with django_assert_num_queries(12):
        begun = reply_begin(actor=actor, conversation=conversation, action=Retry(reply.pk))
    assert begun.changed == [begun.reply] and begun.reply.state == "streaming"
    assert begun.request.messages == [{"role": "user", "content": "first"}]
