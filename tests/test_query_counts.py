"""Query counts, pinned: a page or a checkpoint costs the same few queries however much
it shows. A change that adds one must change the number here, on purpose.

Run on SQLite and again on PostgreSQL (`make test`); the counts are the same on both.
"""

from decimal import Decimal
from itertools import pairwise

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model

from billing.models import Spend, UserBudget
from conversations.models import Conversation, Preset, Turn
from conversations.selectors import TurnVersions, turn_cost, turn_versions
from conversations.services import ReplyOutcome, reply_finish, turn_checkpoints
from review.models import Feedback, ReviewAccess
from teams.models import Membership, Team
from tests.conftest import PASSWORD, SONNET

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]

LIST_PAGE_QUERIES = 12
# The chat page, and its sidebar: pinned conversations, recent ones, shared with me.
CHAT_PAGE_QUERIES = 6 + 3
# Lock the live replies, write the new texts, write the others' heartbeats: three
# statements whatever the number of replies (plus the savepoint and its release,
# since the test itself runs in a transaction).
CHECKPOINT_BATCH_QUERIES = 3 + 2
# End a reply: its final state, read it back with its conversation and owner, the
# owner's team, the ledger row, the conversation's activity, the reply's versions (plus
# savepoint/release).
REPLY_FINISH_QUERIES = 6 + 2


@pytest.fixture
def team(user):
    team = Team.objects.create(name="Research", monthly_budget_usd=Decimal("100"))
    Membership.objects.create(team=team, user=user, role="admin")
    return team


@pytest.fixture
def teammate(team):
    bob = get_user_model().objects.create_user(username="bob", password=PASSWORD)
    Membership.objects.create(team=team, user=bob)
    return bob


def conversation_with_turns(owner, exchanges: int, **fields) -> Conversation:
    conversation = Conversation.objects.create(owner=owner, model=SONNET, **fields)
    Turn.objects.bulk_create(
        Turn(
            conversation=conversation,
            position=position,
            role="user" if position % 2 == 0 else "assistant",
            content=f"message {position}",
            model="" if position % 2 == 0 else SONNET,
        )
        for position in range(2 * exchanges)
    )
    return conversation


@pytest.mark.parametrize("conversations", [3, 30])
def test_the_list_page_costs_the_same_queries_for_3_or_30_conversations(
    signed_in, user, team, teammate, django_assert_num_queries, conversations
):
    UserBudget.objects.create(user=user, monthly_budget_usd=Decimal("10"))
    Preset.objects.create(owner=user, name="Mine", model=SONNET)
    Preset.objects.create(owner=user, team=team, name="The team's", model=SONNET)
    for n in range(conversations):
        conversation_with_turns(user, 1, title=f"Mine {n}")
        conversation_with_turns(teammate, 1, title=f"Shared {n}", shared_with=team)
    with django_assert_num_queries(LIST_PAGE_QUERIES):
        response = signed_in.get("/")
    page = response.content.decode()
    assert response.status_code == 200
    assert f"Mine {conversations - 1}" in page and f"Shared {conversations - 1}" in page
    assert "by bob" in page and "The team&#x27;s" in page and "Team Research" in page


@pytest.mark.parametrize("exchanges", [3, 12])
def test_the_chat_page_costs_the_same_queries_for_few_or_many_turns(
    signed_in, user, team, django_assert_num_queries, exchanges
):
    conversation = conversation_with_turns(user, exchanges, title="Questions")
    replies = Turn.objects.filter(conversation=conversation, role="assistant")
    for reply in replies:
        Feedback.objects.create(turn=reply, user=user, rating=1)
    reviewer = get_user_model().objects.create_user(username="rita", password=PASSWORD)
    ReviewAccess.objects.create(reviewer=reviewer, conversation=conversation, reason="audit")
    with django_assert_num_queries(CHAT_PAGE_QUERIES):
        response = signed_in.get(f"/conversations/{conversation.pk}/")
    page = response.content.decode()
    assert response.status_code == 200
    assert f"message {2 * exchanges - 1}" in page and "rita" in page


def linked(conversation: Conversation, turns: list[Turn]) -> list[Turn]:
    """Store `turns` (their positions set), each following the one before."""
    made = Turn.objects.bulk_create(turns, batch_size=500)
    for parent, turn in pairwise(made):
        turn.parent = parent
    Turn.objects.bulk_update(made[1:], ["parent"], batch_size=500)
    return made


def long_conversation(owner, *, turns: int, branch_points: int) -> Conversation:
    """`turns` turns on the active path; at `branch_points` of them, evenly spread,
    another version (not on the path) with a turn following it."""
    conversation = Conversation.objects.create(owner=owner, model=SONNET, title="Long")
    path = linked(
        conversation,
        [
            Turn(conversation=conversation, position=n, content=f"message {n}",
                 role="user" if n % 2 else "assistant", model="" if n % 2 else SONNET)
            for n in range(1, turns + 1)
        ],
    )  # fmt: skip
    step = turns // branch_points if branch_points else 0
    for at in path[::step][:branch_points] if step else []:
        other = Turn.objects.create(
            conversation=conversation, parent=at.parent, position=at.position, role=at.role,
            content=f"other {at.position}", on_path=False, chosen=False,
        )  # fmt: skip
        Turn.objects.create(
            conversation=conversation, parent=other, position=at.position + 1,
            role="assistant" if at.role == "user" else "user", content="kept", on_path=False,
        )  # fmt: skip
    return conversation


@pytest.mark.parametrize(("turns", "branch_points"), [(10, 0), (1000, 0), (1000, 50)])
def test_a_long_conversation_with_versions_opens_with_the_queries_of_a_short_one(
    signed_in, user, team, django_assert_num_queries, turns, branch_points
):
    conversation = long_conversation(user, turns=turns, branch_points=branch_points)
    with django_assert_num_queries(CHAT_PAGE_QUERIES):
        response = signed_in.get(f"/conversations/{conversation.pk}/")
    page = response.content.decode()
    assert f"message {turns}</" in page and "other 9" not in page
    # The branch points among the latest turns shown say which version they are.
    points = [1 + k * turns // branch_points for k in range(branch_points)]
    shown = [n for n in points if n > turns - settings.CHAT_VISIBLE_TURNS]
    assert page.count('<span class="version-count">1 / 2</span>') == len(shown)
    assert len(shown) == (2 if branch_points else 0)


@pytest.mark.parametrize("replies", [3, 9])
def test_a_checkpoint_batch_is_three_statements_for_any_number_of_replies(
    user, django_assert_num_queries, replies
):
    streaming = []
    for n in range(replies):
        conversation = conversation_with_turns(user, 0, title=f"Chat {n}")
        streaming.append(
            Turn.objects.create(
                conversation=conversation, position=1, role="assistant", state="streaming"
            )
        )
    stopped = streaming.pop()  # Stop was pressed elsewhere: not saved, not written
    Turn.objects.filter(pk=stopped.pk).update(stop_requested_at="2025-01-01T00:00:00Z")
    half = len(streaming) // 2
    contents: dict[int, str | None] = {turn.pk: f"text of {turn.pk}" for turn in streaming[:half]}
    contents |= {turn.pk: None for turn in streaming[half:]}  # no new text: a heartbeat
    contents[stopped.pk] = "never written"
    with django_assert_num_queries(CHECKPOINT_BATCH_QUERIES):
        saved = turn_checkpoints(contents=contents)
    assert saved == {turn.pk for turn in streaming}
    stored = {turn.pk: turn for turn in Turn.objects.filter(role="assistant")}
    for turn in streaming[:half]:
        assert stored[turn.pk].content == f"text of {turn.pk}"
    for turn in streaming:
        assert stored[turn.pk].heartbeat_at is not None
    assert stored[stopped.pk].content == "" and stored[stopped.pk].heartbeat_at is None


@pytest.mark.parametrize("member", [False, True])
def test_ending_a_reply_costs_six_statements_and_shows_what_the_ledger_billed(
    user, django_assert_num_queries, request, member
):
    if member:
        request.getfixturevalue("team")
    conversation = conversation_with_turns(user, 0, title="Chat")
    asked = Turn.objects.create(conversation=conversation, position=0, role="user", content="Hi")
    earlier = Turn.objects.create(  # Regenerate was pressed: the first version stays
        conversation=conversation,
        parent=asked,
        position=1,
        role="assistant",
        content="Hey.",
        chosen=False,
        on_path=False,
    )
    reply = Turn.objects.create(
        conversation=conversation,
        parent=asked,
        position=1,
        role="assistant",
        state="streaming",
        model=SONNET,
    )
    outcome = ReplyOutcome(state="complete", content="Hello!", input_tokens=12, output_tokens=3)
    with django_assert_num_queries(REPLY_FINISH_QUERIES):
        ended = reply_finish(turn_id=reply.pk, outcome=outcome)
    assert ended is not None and ended.state == "complete"
    spend = Spend.objects.get(turn=reply)
    assert (spend.team_id is not None) is member
    billed = turn_cost(ended)
    assert billed is not None and billed.usd == spend.cost_usd and not billed.estimated
    assert turn_versions(ended) == TurnVersions(number=2, count=2, previous=earlier.pk, next=None)
    assert reply_finish(turn_id=reply.pk, outcome=outcome) is None  # it ends once
