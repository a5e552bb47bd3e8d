"""Cost computed once: pages, exports and the socket show what the ledger billed for a
reply (its latest `Spend` row), marked estimated where the ledger says so, never a
recomputation at today's prices."""

import json
from decimal import Decimal

import pytest

from billing.models import Spend
from conversations.fragments import final_fragment
from conversations.gateway import ReplyError, ResponseStarted, TextDelta
from conversations.models import Turn
from conversations.services import ReplyOutcome, message_send, reply_finish, reply_retry
from tests.conftest import SONNET, frames_until, open_chat_socket
from tests.test_query_counts import CHAT_PAGE_QUERIES, conversation_with_turns
from tests.test_review import transcript_url

pytestmark = pytest.mark.postgres

BILLED = "$0.0330"  # 1000 in, 2000 out at Sonnet 4's $3 / $15 per million tokens


def billed_reply(conversation, **outcome) -> Turn:
    _, reply = message_send(conversation=conversation, text="How do I read a JSON file?")
    fields = {"state": "complete", "content": "Use json.load.", **outcome}
    reply_finish(turn_id=reply.pk, outcome=ReplyOutcome(**fields))
    return reply


def prices_go_up(settings) -> None:
    """Sonnet 4 costs ten times as much from now on."""
    settings.CHAT_MODELS = {
        **settings.CHAT_MODELS,
        SONNET: {**settings.CHAT_MODELS[SONNET], "price_per_million": (30.0, 150.0)},
    }


def chat_page(client, conversation) -> str:
    response = client.get(f"/conversations/{conversation.pk}/")
    assert response.status_code == 200
    return response.content.decode()


@pytest.mark.django_db
class TestBilledBeforeAPriceChange:
    def test_the_chat_page_shows_what_was_billed(self, signed_in, conversation, settings):
        billed_reply(conversation, input_tokens=1000, output_tokens=2000)
        prices_go_up(settings)
        page = chat_page(signed_in, conversation)
        assert f"1000 in / 2000 out · {BILLED}</span>" in page
        assert "$0.3300" not in page

    def test_both_exports_show_what_was_billed(self, signed_in, conversation, settings):
        billed_reply(conversation, input_tokens=1000, output_tokens=2000)
        prices_go_up(settings)
        data = json.loads(signed_in.get(f"/conversations/{conversation.pk}/export.json").content)
        reply = data["turns"][1]
        assert (Decimal(reply["cost_usd"]), reply["cost_estimated"]) == (Decimal("0.033"), False)
        markdown = signed_in.get(f"/conversations/{conversation.pk}/export.md").content.decode()
        assert f"Cost: {BILLED}\n" in markdown and "$0.3300" not in markdown

    def test_the_review_transcript_shows_what_was_billed(
        self, client, django_user_model, conversation, settings
    ):
        billed_reply(conversation, input_tokens=1000, output_tokens=2000)
        prices_go_up(settings)
        client.force_login(django_user_model.objects.create_superuser("rita", password="p-1234"))
        page = client.get(transcript_url(conversation)).content.decode()
        assert f"1000 in / 2000 out · {BILLED}</span>" in page and "$0.3300" not in page

    def test_the_final_fragment_shows_what_was_billed(self, conversation, settings):
        _, reply = message_send(conversation=conversation, text="q")
        outcome = ReplyOutcome(state="complete", content="a", input_tokens=1000, output_tokens=2000)
        finished = reply_finish(turn_id=reply.pk, outcome=outcome)
        assert finished is not None
        prices_go_up(settings)  # before the pages are told (a layer outage, say)
        html = final_fragment(finished)
        assert f"1000 in / 2000 out · {BILLED}</span>" in html and "$0.3300" not in html


@pytest.mark.django_db
class TestEstimatedSpends:
    """A dropped stream reports no usage: the ledger bills an estimate from the text."""

    def test_the_chat_page_shows_an_estimate_marked_as_such(self, signed_in, conversation):
        reply = billed_reply(
            conversation, state="error", content="Half a reply", error_message="Dropped."
        )
        spend = Spend.objects.get(turn=reply)
        assert spend.estimated and spend.cost_usd > 0
        page = chat_page(signed_in, conversation)
        assert f'<span class="turn-usage">${spend.cost_usd:.4f} (estimated)</span>' in page

    def test_both_exports_show_an_estimate_marked_as_such(self, signed_in, conversation):
        reply = billed_reply(
            conversation, state="error", content="Half a reply", error_message="Dropped."
        )
        spend = Spend.objects.get(turn=reply)
        data = json.loads(signed_in.get(f"/conversations/{conversation.pk}/export.json").content)
        exported = data["turns"][1]
        assert (Decimal(exported["cost_usd"]), exported["cost_estimated"]) == (
            spend.cost_usd, True)  # fmt: skip
        markdown = signed_in.get(f"/conversations/{conversation.pk}/export.md").content.decode()
        assert f"Cost: ${spend.cost_usd:.4f} (estimated)\n" in markdown

    def test_a_retried_reply_shows_its_latest_run(self, signed_in, conversation):
        # A reply that failed before its first word (billed for its prompt) is written
        # again in its place on Retry; one with text becomes a version, billed on its own.
        reply = billed_reply(
            conversation, state="error", input_tokens=1000, output_tokens=2000, content=""
        )
        reply_retry(conversation=conversation, turn_id=reply.pk)
        reply_finish(
            turn_id=reply.pk,
            outcome=ReplyOutcome(state="error", content="Cut short", error_message="Dropped."),
        )
        first, latest = Spend.objects.filter(turn=reply).order_by("pk")
        assert latest.estimated and latest.cost_usd != first.cost_usd
        page = chat_page(signed_in, conversation)
        assert f"${latest.cost_usd:.4f} (estimated)" in page and BILLED not in page


@pytest.mark.django_db(transaction=True)
async def test_a_dropped_stream_ends_on_the_socket_with_its_estimated_cost(
    conversation, user, fake_provider
):
    fake_provider.script = [
        ResponseStarted(),
        TextDelta("Half a rep"),
        ReplyError("The model service is overloaded or failing.", status=529),
    ]
    communicator = await open_chat_socket(conversation, user)
    await communicator.send_to(text_data=json.dumps({"message": "q"}))
    frames = await frames_until(communicator, r'data-state="error"')
    spend = await Spend.objects.aget()
    assert spend.estimated
    assert f'<span class="turn-usage">${spend.cost_usd:.4f} (estimated)</span>' in frames[-1]
    await communicator.disconnect()


@pytest.mark.django_db
@pytest.mark.parametrize("exchanges", [3, 12])
def test_the_chat_page_reads_every_cost_with_its_turns(
    signed_in, user, settings, django_assert_num_queries, exchanges
):
    conversation = conversation_with_turns(user, exchanges, title="Questions")
    replies = Turn.objects.filter(conversation=conversation, role="assistant").order_by("pk")
    for n, reply in enumerate(replies, start=1):
        Spend.objects.create(user=user, turn=reply, model=SONNET, input_tokens=n,
                             output_tokens=n, cost_usd=Decimal(n) / 10_000)  # fmt: skip
    prices_go_up(settings)
    with django_assert_num_queries(CHAT_PAGE_QUERIES):
        page = chat_page(signed_in, conversation)
    for n in range(1, exchanges + 1):
        assert f"${Decimal(n) / 10_000:.4f}</span>" in page
