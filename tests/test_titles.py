"""Titles by the model: after a conversation's first reply the cheapest configured model
names it, counted against the rate limit, charged in the ledger within the budget, and
every open page of the owner follows; whatever goes wrong, the first message's words
stay the title, and a rename by the person always wins."""

import json
from collections.abc import Iterator
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from hypothesis import given
from hypothesis import strategies as st

from billing.models import Spend, UpstreamCall, UserBudget
from conversations.actors import actor_for_user
from conversations.gateway import (
    Finished,
    ReplyError,
    Response,
    ResponseStarted,
    TextDelta,
    provider_override,
)
from conversations.gateway.fake import Pause, ScriptedProvider
from conversations.models import Conversation, Turn
from conversations.selectors import turn_cost, turns_with_cost
from conversations.services import (
    ReplyOutcome,
    conversation_create,
    conversation_rename,
    message_send,
    reply_finish,
)
from conversations.services.titles import (
    TITLE_MAX_CHARS,
    TITLE_MAX_TOKENS,
    TITLE_MAX_WORDS,
    title_begin,
    title_clean,
    title_finish,
    title_model,
)
from conversations.services.turns import title_from
from conversations.titles import title_write
from teams.models import Membership, Team
from tests.conftest import HAIKU, SONNET, frames_until, open_chat_socket

FIRST = "How do I read a JSON file in Python without loading it all at once?"
ANSWER = "Use ijson: it streams the file."


@pytest.fixture
def title_provider(fake_provider) -> Iterator[ScriptedProvider]:
    """Claude Haiku 4.5 (the cheapest configured model) answers titles; Sonnet replies."""
    provider = ScriptedProvider(ScriptedProvider.reply('"Streaming JSON in Python."'))
    provider_override(HAIKU, provider)
    yield provider
    provider_override(HAIKU, None)


def answered(user, *, text: str = FIRST, content: str = ANSWER, state: str = "complete") -> Turn:
    """An untitled conversation whose first message got its reply (ended in `state`)."""
    conversation = conversation_create(owner=user, model=SONNET)
    _, reply = message_send(conversation=conversation, text=text)
    outcome = ReplyOutcome(state=state, content=content, input_tokens=30, output_tokens=9)
    finished = reply_finish(turn_id=reply.pk, outcome=outcome)
    assert finished is not None
    return finished


def title_of(turn: Turn) -> str:
    return Conversation.objects.get(pk=turn.conversation_id).title


def title_calls() -> int:
    return UpstreamCall.objects.filter(kind=UpstreamCall.Kind.TITLE).count()


def title_spends() -> list[Spend]:
    return list(Spend.objects.filter(kind=Spend.Kind.TITLE))


# --- the cleaner ------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer, title",
    [
        ('"Streaming JSON in Python."', "Streaming JSON in Python"),
        ("**Title:** Reading big JSON files\nHope this helps!", "Reading big JSON files"),
        ("# “Kafka consumers”", "Kafka consumers"),
        ("\n\n  Sourdough   starter basics  \n", "Sourdough starter basics"),
        ("Why is the sky blue?", "Why is the sky blue?"),
        ('""', ""),
        ("   \n ...", ""),
    ],
)
def test_a_model_answer_is_cleaned_into_one_short_line(answer, title) -> None:
    assert title_clean(answer) == title


def test_a_sentence_is_not_a_title_and_a_long_word_run_is_cut_within_the_limit() -> None:
    # What the small bundled model answered in a run: the first message's words stay.
    rambling = "The best way to learn is to learn from others. The best way to learn is"
    assert title_clean(rambling) == ""
    assert title_clean("word " * 9) == ""
    assert title_clean("word " * 8) == " ".join(["word"] * 8)
    title = title_clean("Supercalifragilisticexpialidocious " * 4)
    assert title == " ".join(["Supercalifragilisticexpialidocious"] * 2)
    assert len(title) <= TITLE_MAX_CHARS


@given(st.text())
def test_any_model_answer_becomes_one_storable_line_within_the_limit_or_nothing(text) -> None:
    title = title_clean(text)
    assert len(title) <= TITLE_MAX_CHARS and len(title.split()) <= TITLE_MAX_WORDS
    assert title == " ".join(title.split())  # one line, no stray spaces
    assert all(ch.isprintable() for ch in title)
    assert title_clean(title) == title  # cleaning a clean title changes nothing


# --- which model --------------------------------------------------------------------


@pytest.mark.django_db
class TestTheCheapestModel:
    def test_with_cloudflare_configured_it_is_claude_haiku(self, user, cloudflare_settings):
        assert title_model(actor_for_user(user)) == HAIKU

    def test_offline_it_is_the_bundled_model(self, user, settings):
        settings.CLOUDFLARE_ACCOUNT_ID = settings.CLOUDFLARE_API_TOKEN = ""
        assert title_model(actor_for_user(user)) == "local/smollm2-135m"

    def test_one_the_persons_team_may_use(self, user, cloudflare_settings):
        team = Team.objects.create(name="Ops", allowed_models=[SONNET])
        Membership.objects.create(user=user, team=team)
        assert title_model(actor_for_user(user)) == SONNET


# --- the services: when a title call goes out, what it costs, what is stored --------


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
class TestTitleWritten:
    async def test_the_first_reply_gets_the_models_title_recorded_in_the_ledger(
        self, user, titles_on, title_provider
    ):
        reply = await sync_to_async(answered)(user)
        assert await title_write(turn_id=reply.pk) == "Streaming JSON in Python"
        assert await sync_to_async(title_of)(reply) == "Streaming JSON in Python"
        (request,) = title_provider.requests
        assert (request.model, request.max_tokens) == (HAIKU, TITLE_MAX_TOKENS)
        assert FIRST in request.messages[0]["content"]
        assert ANSWER in request.messages[0]["content"]
        (spend,) = await sync_to_async(title_spends)()
        # The scripted model reports 10 tokens in, 3 out, at Haiku's $1 / $5 a million.
        assert (spend.model, spend.input_tokens, spend.output_tokens) == (HAIKU, 10, 3)
        assert (spend.cost_usd, spend.estimated) == (Decimal("0.000025"), False)
        assert (spend.turn_id, spend.user_id) == (reply.pk, user.pk)
        assert await sync_to_async(title_calls)() == 1

    async def test_the_reply_keeps_its_own_cost(self, user, titles_on, title_provider):
        reply = await sync_to_async(answered)(user)
        await title_write(turn_id=reply.pk)
        spends = await sync_to_async(lambda: list(Spend.objects.filter(turn=reply)))()
        assert sorted(s.kind for s in spends) == ["reply", "title"]
        shown = await sync_to_async(turns_with_cost(Turn.objects.filter(pk=reply.pk)).get)()
        reply_spend = next(s for s in spends if s.kind == "reply")
        assert turn_cost(shown).usd == reply_spend.cost_usd

    async def test_an_upstream_error_keeps_the_first_message_title(
        self, user, titles_on, title_provider
    ):
        title_provider.script = [ReplyError("Overloaded.", status=529, kind="upstream")]
        reply = await sync_to_async(answered)(user)
        assert await title_write(turn_id=reply.pk) is None
        assert await sync_to_async(title_of)(reply) == title_from(FIRST)
        # The upstream never took the prompt: nothing billed, the charge is gone.
        assert await sync_to_async(title_spends)() == []
        assert await sync_to_async(title_calls)() == 1

    async def test_a_title_cut_off_by_an_error_is_not_used_but_billed(
        self, user, titles_on, title_provider
    ):
        title_provider.script = [ResponseStarted(), TextDelta("Streaming JS"), ReplyError("x")]
        reply = await sync_to_async(answered)(user)
        assert await title_write(turn_id=reply.pk) is None
        assert await sync_to_async(title_of)(reply) == title_from(FIRST)
        (spend,) = await sync_to_async(title_spends)()
        assert spend.estimated and spend.output_tokens > 0

    async def test_a_title_that_takes_too_long_is_given_up(
        self, user, titles_on, title_provider, settings
    ):
        settings.CHAT_TITLE_TIMEOUT = 0.2
        title_provider.script = [ResponseStarted(), Pause(30), TextDelta("Late"), Finished()]
        reply = await sync_to_async(answered)(user)
        assert await title_write(turn_id=reply.pk) is None
        assert await sync_to_async(title_of)(reply) == title_from(FIRST)

    def test_a_rename_before_the_title_arrives_wins(self, user, titles_on, title_provider):
        reply = answered(user)
        call = title_begin(turn_id=reply.pk)
        assert call is not None
        conversation_rename(conversation=reply.conversation, title="My JSON notes")
        response = Response()
        for event in ScriptedProvider.reply("Streaming JSON"):
            if not isinstance(event, Pause):
                response.add(event)
        assert title_finish(call=call, response=response) is None
        assert title_of(reply) == "My JSON notes"
        (spend,) = title_spends()  # the call was made: it is billed all the same
        assert not spend.estimated


@pytest.mark.django_db(transaction=True)
class TestNoTitleCall:
    async def test_with_titles_turned_off(self, user, title_provider):
        reply = await sync_to_async(answered)(user)
        assert await title_write(turn_id=reply.pk) is None
        assert title_provider.requests == []
        assert await sync_to_async(title_calls)() == 0

    async def test_at_the_rate_limit_the_chat_keeps_its_first_message_title(
        self, user, titles_on, title_provider, settings
    ):
        settings.CHAT_SEND_RATE_LIMIT = 1  # the first message used it up
        reply = await sync_to_async(answered)(user)
        assert await title_write(turn_id=reply.pk) is None
        assert title_provider.requests == []
        assert await sync_to_async(title_of)(reply) == title_from(FIRST)
        assert await sync_to_async(title_calls)() == 0

    async def test_when_the_budget_does_not_cover_it(self, user, titles_on, title_provider):
        reply = await sync_to_async(answered)(user)

        def budget_spent() -> None:
            spent = sum(s.cost_usd for s in Spend.objects.filter(user=user))
            UserBudget.objects.create(user=user, monthly_budget_usd=Decimal("0.01"))
            Spend.objects.create(user=user, model=SONNET, cost_usd=Decimal("0.01") - spent)

        await sync_to_async(budget_spent)()
        assert await title_write(turn_id=reply.pk) is None
        assert title_provider.requests == []
        assert await sync_to_async(title_spends)() == []
        assert await sync_to_async(title_calls)() == 0  # not counted either

    def test_after_a_reply_that_failed(self, user, titles_on, title_provider):
        reply = answered(user, state="error", content="")
        assert title_begin(turn_id=reply.pk) is None

    def test_after_a_later_reply(self, user, titles_on, title_provider):
        first = answered(user)
        _, second = message_send(conversation=first.conversation, text="And in Go?")
        reply_finish(turn_id=second.pk, outcome=ReplyOutcome(state="complete", content="json"))
        assert title_begin(turn_id=second.pk) is None
        assert title_spends() == [] and title_calls() == 0

    def test_for_a_conversation_given_its_title(self, user, titles_on, title_provider):
        conversation = conversation_create(owner=user, model=SONNET, title="Named by me")
        _, reply = message_send(conversation=conversation, text=FIRST)
        reply_finish(turn_id=reply.pk, outcome=ReplyOutcome(state="complete", content="a"))
        assert title_begin(turn_id=reply.pk) is None

    def test_for_an_api_conversation(self, user, titles_on, title_provider):
        from api.models import ApiConversation

        reply = answered(user)
        ApiConversation.objects.create(conversation_id=reply.conversation_id)
        assert title_begin(turn_id=reply.pk) is None


# --- the pages follow ------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
class TestOpenPagesFollow:
    async def test_the_reply_then_the_title_reach_this_page_and_the_persons_other_pages(
        self, user, titles_on, title_provider, fake_provider
    ):
        fake_provider.script = fake_provider.reply(ANSWER)
        conversation = await sync_to_async(conversation_create)(owner=user, model=SONNET)
        elsewhere = await sync_to_async(conversation_create)(
            owner=user, model=SONNET, title="Another chat"
        )
        here = await open_chat_socket(conversation, user)
        other = await open_chat_socket(elsewhere, user)
        await here.send_to(text_data=json.dumps({"message": FIRST}))
        await frames_until(here, r'data-state="complete"')
        frames = await frames_until(here, r'id="conversation-title"')
        assert (
            '<h1 id="conversation-title" hx-swap-oob="true">Streaming JSON in Python</h1>'
            in (frames[-1])
        )
        assert 'id="sidebar-conversations" hx-swap-oob="true"' in frames[-1]
        assert "Streaming JSON in Python</span>" in frames[-1]
        frames = await frames_until(other, r'id="sidebar-conversations"')
        assert "Streaming JSON in Python</span>" in frames[-1]
        assert 'id="conversation-title"' not in frames[-1]  # that page shows another chat
        await here.disconnect()
        await other.disconnect()

    async def test_a_rename_reaches_the_persons_other_pages(self, user, conversation):
        from tests.conftest import signed_in_client

        page = await open_chat_socket(conversation, user)
        client = await sync_to_async(signed_in_client)(user)
        response = await sync_to_async(client.post)(
            f"/conversations/{conversation.pk}/rename/",
            {"title": "Renamed <elsewhere>"},
            headers={"HX-Request": "true"},
        )
        assert response.status_code == 200
        frames = await frames_until(page, r'id="conversation-title"')
        assert ">Renamed &lt;elsewhere&gt;</h1>" in frames[-1]
        await page.disconnect()
