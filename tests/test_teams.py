"""Teams, sharing, budgets in money, allowed models, and isolation on every route."""

import json
import re
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.urls import URLPattern, URLResolver, get_resolver

from billing.budgets import WARN_FRACTION, allowances_for, budget_warnings
from billing.models import Spend, UserBudget
from conversations.actors import actor_for_user
from conversations.gateway import Finished, ResponseStarted, TextDelta, Usage
from conversations.models import Conversation, Preset
from conversations.services import (
    ReplyOutcome,
    Send,
    conversation_create,
    message_send,
    reply_begin,
    reply_finish,
)
from conversations.services.turns import OverBudget
from teams.models import Membership, Team
from tests.conftest import HAIKU, SONNET, chat_socket_accepted, frames_until, open_chat_socket

pytestmark = pytest.mark.django_db


@pytest.fixture
def team(user):
    team = Team.objects.create(name="Research")
    Membership.objects.create(team=team, user=user, role="admin")
    return team


@pytest.fixture
def teammate(django_user_model, team):
    mate = django_user_model.objects.create_user(username="bob", password="x-long-password-1")
    Membership.objects.create(team=team, user=mate, role="member")
    return mate


def finish(reply, *, input_tokens: int, output_tokens: int) -> None:  # type: ignore[no-untyped-def]
    reply_finish(
        turn_id=reply.pk,
        outcome=ReplyOutcome(state="complete", content="ok", input_tokens=input_tokens,
                             output_tokens=output_tokens),
    )  # fmt: skip


class TestBudgets:
    def test_spend_is_computed_from_usage_and_prices(self, user, conversation):
        UserBudget.objects.create(user=user, monthly_budget_usd=Decimal("10"))
        _, reply = message_send(conversation=conversation, text="hi")
        finish(reply, input_tokens=1_000_000, output_tokens=100_000)  # $3 + $1.50
        (allowance,) = allowances_for(actor=actor_for_user(user))
        assert allowance.spent == Decimal("4.5")
        assert allowance.held == 0

    def test_a_pending_reply_holds_its_worst_case_cost(self, user, conversation):
        UserBudget.objects.create(user=user, monthly_budget_usd=Decimal("10"))
        message_send(conversation=conversation, text="x" * 300)
        (allowance,) = allowances_for(actor=actor_for_user(user))
        # 1024 tokens out at $15/M; in, at most a token a byte: 300 bytes, and the
        # framing of one message (8) and of the request (32), at $3/M.
        assert allowance.held == Decimal("0.01536") + Decimal(300 + 8 + 32) * 3 / 1_000_000

    def test_spent_budget_refuses_sends_with_a_clear_message(self, user, conversation):
        UserBudget.objects.create(user=user, monthly_budget_usd=Decimal("1"))
        _, reply = message_send(conversation=conversation, text="hi")
        finish(reply, input_tokens=0, output_tokens=70_000)  # $1.05
        with pytest.raises(OverBudget) as refused:
            message_send(conversation=conversation, text="more")
        assert refused.value.message == "Your budget of $1.00 for this month is spent."
        assert conversation.turns.count() == 2

    def test_a_reply_that_could_overspend_is_refused(self, user, conversation):
        UserBudget.objects.create(user=user, monthly_budget_usd=Decimal("0.01"))
        with pytest.raises(OverBudget) as refused:
            message_send(conversation=conversation, text="hi")  # could cost $0.0154
        assert "Lower “Max tokens”" in refused.value.message

    def test_team_budget_counts_every_member(self, user, teammate, team, fake_provider):
        team.monthly_budget_usd = Decimal("1")
        team.save()
        mine = conversation_create(owner=user, model=SONNET)
        theirs = conversation_create(owner=teammate, model=SONNET)
        _, reply = message_send(conversation=theirs, text="hi")
        finish(reply, input_tokens=0, output_tokens=66_000)  # $0.99
        with pytest.raises(OverBudget) as refused:
            message_send(conversation=mine, text="hi")
        assert "team research" in refused.value.message.lower()

    def test_deleting_conversations_does_not_give_money_back(self, user, conversation):
        UserBudget.objects.create(user=user, monthly_budget_usd=Decimal("1"))
        _, reply = message_send(conversation=conversation, text="hi")
        finish(reply, input_tokens=0, output_tokens=70_000)
        conversation.delete()
        assert Spend.objects.get().cost_usd == Decimal("1.05")
        assert allowances_for(actor=actor_for_user(user))[0].spent == Decimal("1.05")

    def test_list_page_shows_spend_against_budget(self, client, user, conversation):
        UserBudget.objects.create(user=user, monthly_budget_usd=Decimal("2"))
        _, reply = message_send(conversation=conversation, text="hi")
        finish(reply, input_tokens=0, output_tokens=120_000)  # $1.80 = 90 %
        client.force_login(user)
        page = client.get("/").content.decode()
        assert "Your budget: $1.80 of $2.00 (90%)" in page
        assert 'class="warning"' in page


@pytest.mark.postgres
@pytest.mark.django_db
@pytest.mark.parametrize("team_spent", ["0", "0.60", "0.80"])
@pytest.mark.parametrize("own_spent", [None, "0.10", "0.90"])
def test_the_warnings_of_a_send_are_the_budgets_as_they_stand_after_it(
    user, team, conversation, own_spent, team_spent
):
    """Warnings come from the hold itself (no second read): the same as reading the
    budgets again once the reply is stored and held, for one's own and the team's."""
    team.monthly_budget_usd = Decimal("1")
    team.save()
    if own_spent is not None:
        UserBudget.objects.create(user=user, monthly_budget_usd=Decimal("2"))
        Spend.objects.create(user=user, model=SONNET, cost_usd=Decimal(own_spent))
    Spend.objects.create(user=user, team=team, model=SONNET, cost_usd=Decimal(team_spent))
    conversation.max_tokens = 10_000  # a hold of about $0.15 (Sonnet 4: $15 per million out)
    conversation.save()
    actor = actor_for_user(user)
    begun = reply_begin(actor=actor, conversation=conversation, action=Send("hi"))
    hold = begun.reply.cost_reserved
    assert hold > Decimal("0.1")
    assert begun.warnings == budget_warnings(allowances_for(actor=actor))
    budgets = [(Decimal(team_spent), 1)]  # the team's: its row
    if own_spent is not None:
        budgets.append((Decimal(own_spent) + Decimal(team_spent), 2))  # the person's: both
    expected = sum(spent + hold >= size * WARN_FRACTION for spent, size in budgets)
    assert len(begun.warnings) == expected


@pytest.mark.django_db(transaction=True)
async def test_warning_from_80_percent_on_send(user, conversation, fake_provider):
    await sync_to_async(UserBudget.objects.create)(user=user, monthly_budget_usd=Decimal("1"))
    fake_provider.script = [ResponseStarted(), TextDelta("a"), Usage(0, 56_000), Finished()]
    communicator = await open_chat_socket(conversation, user)
    await communicator.send_to(text_data=json.dumps({"message": "one"}))
    await frames_until(communicator, r'data-state="complete"')  # $0.84 spent
    fake_provider.script = [ResponseStarted(), TextDelta("b"), Usage(0, 10), Finished()]
    await communicator.send_to(text_data=json.dumps({"message": "two"}))
    frames = await frames_until(communicator, r"budget-warning")
    assert re.search(r"Your budget: \d+% used \(\$0\.\d\d of \$1\.00 this month\)", frames[-1])
    await frames_until(communicator, r'data-state="complete"')
    await communicator.disconnect()


class TestAllowedModels:
    def test_team_may_use_only_its_models(self, client, user, team, fake_provider):
        team.allowed_models = [HAIKU]
        team.save()
        client.force_login(user)
        response = client.post("/conversations/", {"model": SONNET})
        assert response.status_code == 400
        assert "Your team may not use this model" in response.content.decode()
        assert "Claude Sonnet 4 (not allowed for your team)" in response.content.decode()
        assert client.post("/conversations/", {"model": HAIKU}).status_code == 302

    def test_existing_conversation_on_a_disallowed_model_cannot_send(
        self, user, team, conversation
    ):
        team.allowed_models = [HAIKU]
        team.save()
        with pytest.raises(Exception, match="may not use this model"):
            message_send(conversation=conversation, text="hi")
        assert conversation.turns.count() == 0


class TestSharing:
    def test_owner_shares_read_only_with_the_team_and_unshares(
        self, client, user, teammate, other_user, conversation
    ):
        message_send(conversation=conversation, text="A question worth sharing")
        client.force_login(user)
        client.post(f"/conversations/{conversation.pk}/share/", {"shared": "1"})
        client.force_login(teammate)
        assert "Test chat" in client.get("/").content.decode()
        page = client.get(f"/conversations/{conversation.pk}/").content.decode()
        assert "A question worth sharing" in page and "read-only" in page
        assert "ws-connect" not in page and 'name="message"' not in page
        assert ">Edit<" not in page and "Regenerate" not in page
        for url in ("settings/", "rename/", "delete/", "share/", "preset/"):
            assert client.post(f"/conversations/{conversation.pk}/{url}").status_code == 404
        client.force_login(other_user)
        assert client.get(f"/conversations/{conversation.pk}/").status_code == 404
        client.force_login(user)
        client.post(f"/conversations/{conversation.pk}/share/", {"shared": "0"})
        client.force_login(teammate)
        assert client.get(f"/conversations/{conversation.pk}/").status_code == 404

    def test_sharing_needs_a_team(self, client, user, conversation):
        client.force_login(user)
        response = client.post(f"/conversations/{conversation.pk}/share/", {"shared": "1"})
        assert response.status_code == 400
        assert Conversation.objects.get().shared_with is None


@pytest.mark.django_db(transaction=True)
async def test_teammate_cannot_open_the_socket_of_a_shared_conversation(
    user, teammate, conversation
):
    conversation.shared_with_id = (await sync_to_async(Membership.objects.get)(user=user)).team_id
    await sync_to_async(conversation.save)()
    assert not await chat_socket_accepted(conversation, teammate)


class TestTeamPresets:
    def test_admin_saves_a_team_preset_members_start_from_it(
        self, client, user, teammate, conversation
    ):
        client.force_login(user)
        client.post(
            f"/conversations/{conversation.pk}/preset/", {"name": "House style", "for_team": "1"}
        )
        preset = Preset.objects.get()
        assert preset.team is not None
        client.force_login(teammate)
        assert "House style" in client.get("/").content.decode()
        response = client.post("/conversations/", {"preset": preset.pk})
        assert response.status_code == 302
        assert Conversation.objects.filter(owner=teammate).count() == 1
        assert client.post(f"/presets/{preset.pk}/delete/").status_code == 404  # not an admin

    def test_members_cannot_save_team_presets(self, client, teammate, fake_provider):
        conversation = conversation_create(owner=teammate, model=SONNET)
        client.force_login(teammate)
        response = client.post(
            f"/conversations/{conversation.pk}/preset/", {"name": "Mine", "for_team": "1"}
        )
        assert response.status_code == 400 and "Only team admins" in response.content.decode()


def all_url_patterns(resolvers=None, prefix=""):  # type: ignore[no-untyped-def]
    for entry in resolvers if resolvers is not None else get_resolver().url_patterns:
        if isinstance(entry, URLResolver):
            if str(entry.pattern).startswith("admin/"):
                continue  # the admin is covered below
            yield from all_url_patterns(entry.url_patterns, prefix + str(entry.pattern))
        elif isinstance(entry, URLPattern):
            yield prefix + str(entry.pattern)


def test_every_route_as_someone_else_leaks_nothing(client, user, other_user, team, conversation):
    message_send(conversation=conversation, text="alice's secret plan")
    Preset.objects.create(owner=user, name="alice preset", model=SONNET)
    preset = Preset.objects.get()
    client.force_login(other_user)
    checked = 0
    for pattern in all_url_patterns():
        path = "/" + re.sub(r"<uuid:\w+>", str(conversation.pk), pattern)
        path = re.sub(r"<int:\w+>", str(preset.pk), path)
        for method in ("get", "post"):
            client.force_login(other_user)  # the logout route signs out
            response = getattr(client, method)(path)
            body = response.content.decode(errors="replace")
            assert "secret plan" not in body and "Test chat" not in body, (method, path)
            assert "alice preset" not in body, (method, path)
            if str(conversation.pk) in path or re.search(r"presets/\d", path):
                assert response.status_code in (404, 405), (method, path, response.status_code)
            checked += 1
    assert checked >= 20
    assert client.get("/admin/conversations/conversation/").status_code == 302  # not staff
    assert (
        client.get(f"/admin/conversations/conversation/{conversation.pk}/change/").status_code
        == 302
    )
