"""Holes an outside probe found in isolation, budgets and the socket, each closed.

Every test here runs on SQLite and again on PostgreSQL (`make test`).
"""

import json
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from billing.models import Spend, UserBudget
from chatsite.asgi import application
from conversations.models import Conversation, Turn
from conversations.services import conversation_create, conversation_update, message_send
from teams.models import Membership, Team
from tests.conftest import (
    HAIKU,
    ORIGIN,
    SONNET,
    frames_until,
    open_chat_socket,
    signed_in_client,
    wait_until_async,
)
from tests.emulator import Behaviour

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]


@pytest.fixture
def team(user):
    team = Team.objects.create(name="Research")
    Membership.objects.create(team=team, user=user, role="member")
    return team


@pytest.fixture
def teammates(django_user_model, team):
    mates = []
    for name in ("bob", "carol"):
        mate = django_user_model.objects.create_user(username=name, password="x-long-password-1")
        Membership.objects.create(team=team, user=mate)
        mates.append(mate)
    return mates


class TestSharing:
    def test_owner_opens_their_conversation_shared_in_a_team_of_three(
        self, client, user, teammates, conversation
    ):
        message_send(conversation=conversation, text="Shared question")
        client.force_login(user)
        client.post(f"/conversations/{conversation.pk}/share/", {"shared": "1"})
        for url in ("", "?fragment=1", "turns/?before=99"):
            response = client.get(
                f"/conversations/{conversation.pk}/{url}",
                headers={"HX-Request": "true"} if url else {},
            )
            assert response.status_code == 200, url
            assert "Shared question" in response.content.decode()

    def test_sharing_ends_when_the_owner_moves_to_another_team(
        self, client, user, teammates, conversation
    ):
        client.force_login(user)
        client.post(f"/conversations/{conversation.pk}/share/", {"shared": "1"})
        bob = teammates[0]
        client.force_login(bob)
        assert client.get(f"/conversations/{conversation.pk}/").status_code == 200
        elsewhere = Team.objects.create(name="Sales")
        Membership.objects.filter(user=user).update(team=elsewhere)
        assert client.get(f"/conversations/{conversation.pk}/").status_code == 404
        assert conversation.title not in client.get("/").content.decode()
        # The owner's page no longer says it is shared, and names the new team.
        client.force_login(user)
        page = client.get(f"/conversations/{conversation.pk}/").content.decode()
        assert "Shared read-only" not in page
        assert "Share with team Sales" in page
        client.post(f"/conversations/{conversation.pk}/share/", {"shared": "1"})
        assert Conversation.objects.get().shared_with == elsewhere
        client.force_login(bob)
        assert client.get(f"/conversations/{conversation.pk}/").status_code == 404


# --- the socket: who is behind it, what it may send ---------------------------


async def turn_count(conversation) -> int:
    return await sync_to_async(Turn.objects.filter(conversation_id=conversation.pk).count)()


async def assert_closed(communicator, code: int) -> None:
    output = await communicator.receive_output(timeout=5)
    assert output == {"type": "websocket.close", "code": code}


def sign_out(user, client: Client) -> None:
    client.post("/accounts/logout/")


def change_password(user, client: Client) -> None:
    user.set_password("another-Long-password-7")
    user.save()


def deactivate(user, client: Client) -> None:
    user.is_active = False
    user.save(update_fields=["is_active"])


def sign_out_elsewhere_keeps_this_one(user, client: Client) -> None:
    other = Client()
    other.force_login(user)
    other.post("/accounts/logout/")


@pytest.mark.django_db(transaction=True)
class TestRevokedSockets:
    @pytest.mark.parametrize("frame", [{"message": "still there?"}, {"action": "stop"}])
    @pytest.mark.parametrize("revoke", [sign_out, change_password, deactivate])
    async def test_a_socket_opened_before_is_refused_and_closed(
        self, revoke, frame, user, conversation, fake_provider
    ):
        client = await sync_to_async(signed_in_client)(user)
        cookie = client.cookies["sessionid"].value
        communicator = await open_chat_socket(conversation, client)
        await sync_to_async(revoke)(user, client)
        await communicator.send_to(text_data=json.dumps(frame))
        frames = await frames_until(communicator, "signed out")
        assert "Reload the page" in frames[-1]
        await assert_closed(communicator, 4401)
        assert await turn_count(conversation) == 0
        assert fake_provider.requests == []
        # The same cookie cannot open a new one either.
        again = WebsocketCommunicator(
            application,
            f"/ws/conversations/{conversation.pk}/",
            headers=[ORIGIN, (b"cookie", f"sessionid={cookie}".encode())],
        )
        connected, _ = await again.connect()
        assert not connected

    async def test_another_session_signing_out_leaves_this_socket_working(
        self, user, conversation, fake_provider
    ):
        fake_provider.script = fake_provider.reply("still here")
        client = await sync_to_async(signed_in_client)(user)
        communicator = await open_chat_socket(conversation, client)
        await sync_to_async(sign_out_elsewhere_keeps_this_one)(user, client)
        await communicator.send_to(text_data=json.dumps({"message": "hello"}))
        await frames_until(communicator, 'data-state="complete"')
        assert await turn_count(conversation) == 2
        await communicator.disconnect()

    async def test_the_teams_model_rules_of_now_apply_not_those_at_connect(
        self, user, conversation, fake_provider
    ):
        team = await sync_to_async(Team.objects.create)(name="Research")
        await sync_to_async(Membership.objects.create)(team=team, user=user)
        client = await sync_to_async(signed_in_client)(user)
        communicator = await open_chat_socket(conversation, client)  # on Sonnet
        # Another tab switches the model; then the team is restricted to Sonnet.
        await sync_to_async(conversation_update)(
            conversation=await sync_to_async(Conversation.objects.get)(pk=conversation.pk),
            model=HAIKU,
        )
        team.allowed_models = [SONNET]
        await sync_to_async(team.save)()
        await communicator.send_to(text_data=json.dumps({"message": "which model?"}))
        frames = await frames_until(communicator, "may not use this model")
        assert 'class="error"' in frames[-1]
        assert await turn_count(conversation) == 0
        assert fake_provider.requests == []
        await communicator.disconnect()


CRASHING_FRAMES = [
    pytest.param('{"action": "retry", "turn": "²"}', "could not be read", id="superscript-digit"),
    pytest.param('{"action": "edit", "turn": "١٢", "message": "x"}', "could not be read",
                 id="arabic-digits"),
    pytest.param("[" * 200_000 + "]" * 200_000, "could not be read", id="deep-nesting"),
    pytest.param('{"message": "\\ud800"}', "unpaired surrogate", id="lone-surrogate"),
    pytest.param('{"message": "a\\u0000b"}', "NUL", id="nul"),
    pytest.param('{"action": "edit", "turn": 1, "message": "\\udfff"}', "unpaired surrogate",
                 id="edit-surrogate"),
]  # fmt: skip


@pytest.mark.django_db(transaction=True)
class TestFramesThatCrashedTheConsumer:
    @pytest.mark.parametrize(("frame", "error"), CRASHING_FRAMES)
    async def test_answered_with_an_error_and_the_socket_keeps_working(
        self, frame, error, user, conversation, fake_provider
    ):
        fake_provider.script = fake_provider.reply("fine")
        client = await sync_to_async(signed_in_client)(user)
        communicator = await open_chat_socket(conversation, client)
        await communicator.send_to(text_data=frame)
        frames = await frames_until(communicator, 'class="error"')
        assert error in frames[-1]
        assert await turn_count(conversation) == 0
        await communicator.send_to(text_data=json.dumps({"message": "and now?"}))
        await frames_until(communicator, 'data-state="complete"')
        assert await turn_count(conversation) == 2
        await communicator.disconnect()

    async def test_a_send_after_the_conversation_was_deleted(self, user, conversation):
        client = await sync_to_async(signed_in_client)(user)
        communicator = await open_chat_socket(conversation, client)
        response = await sync_to_async(client.post)(f"/conversations/{conversation.pk}/delete/")
        assert response.status_code == 302
        await communicator.send_to(text_data=json.dumps({"message": "anyone?"}))
        frames = await frames_until(communicator, "was deleted")
        assert 'class="error"' in frames[-1]
        await assert_closed(communicator, 4404)
        assert await sync_to_async(Turn.objects.count)() == 0


# --- one rate limit for every upstream call -----------------------------------


@pytest.mark.django_db(transaction=True)
async def test_retries_and_edits_count_against_the_rate_limit(
    user, conversation, fake_provider, settings
):
    settings.CHAT_SEND_RATE_LIMIT = 3
    fake_provider.script = fake_provider.reply("ok")
    client = await sync_to_async(signed_in_client)(user)
    communicator = await open_chat_socket(conversation, client)
    await communicator.send_to(text_data=json.dumps({"message": "one"}))
    await frames_until(communicator, 'data-state="complete"')
    user_turn, reply = await sync_to_async(list)(conversation.turns.order_by("position"))
    await communicator.send_to(text_data=json.dumps({"action": "retry", "turn": reply.pk}))
    await frames_until(communicator, 'data-state="complete"')
    await communicator.send_to(
        text_data=json.dumps({"action": "edit", "turn": user_turn.pk, "message": "two"})
    )
    await frames_until(communicator, 'data-state="complete"')
    assert len(fake_provider.requests) == 3
    edited, last = await sync_to_async(list)(conversation.turns.filter(on_path=True))
    for frame in (
        {"action": "retry", "turn": last.pk},
        {"action": "edit", "turn": edited.pk, "message": "three"},
        {"message": "four"},
    ):
        await communicator.send_to(text_data=json.dumps(frame))
        assert "too quickly" in (await frames_until(communicator, "too quickly"))[-1]
    assert len(fake_provider.requests) == 3
    from billing.models import UpstreamCall

    kinds = await sync_to_async(list)(UpstreamCall.objects.values_list("kind", flat=True))
    assert sorted(kinds) == ["edit", "retry", "send"]
    await communicator.disconnect()


# --- budgets: input is billed, holds are upper bounds -------------------------


@pytest.mark.django_db(transaction=True)
async def test_stopped_and_dropped_replies_bill_their_input(user, cloudflare_settings, emulator):
    conversation = await sync_to_async(conversation_create)(owner=user, model=SONNET)
    client = await sync_to_async(signed_in_client)(user)
    communicator = await open_chat_socket(conversation, client)
    # Stopped after its first piece.
    emulator.enqueue(Behaviour(tokens=200, token_delay=0.05, input_tokens=50_000))
    await communicator.send_to(text_data=json.dumps({"message": "x" * 1000}))
    await frames_until(communicator, r"beforeend:#turn-\d+-text")
    await communicator.send_to(text_data=json.dumps({"action": "stop"}))
    await frames_until(communicator, 'data-state="cancelled"')
    # Dropped after three pieces, on a retry.
    reply = await sync_to_async(conversation.turns.order_by("position").last)()
    emulator.enqueue(Behaviour(tokens=50, drop_after=3, input_tokens=40_000))
    await communicator.send_to(text_data=json.dumps({"action": "retry", "turn": reply.pk}))
    await frames_until(communicator, 'data-state="error"')
    spends = await sync_to_async(list)(Spend.objects.order_by("pk"))
    assert [s.input_tokens for s in spends] == [50_000, 40_000]
    # $3 per million input tokens: 90,000 tokens are $0.27 before any output.
    assert sum(s.cost_usd for s in spends) >= Decimal("0.27")
    await communicator.disconnect()


def test_dense_text_cannot_overspend_through_concurrent_holds(user, fake_provider):
    """Ten replies held at once on emoji text, each billed one token per character
    (a dense tokenizer), stay within the budget."""
    from conversations.services import ReplyOutcome, reply_finish
    from conversations.services.turns import OverBudget

    UserBudget.objects.create(user=user, monthly_budget_usd=Decimal("2.00"))
    text = "🙂" * 150_000
    accepted = []
    for _ in range(10):
        conversation = conversation_create(owner=user, model=SONNET, max_tokens=10)
        try:
            accepted.append(message_send(conversation=conversation, text=text)[1])
        except OverBudget:
            pass
    assert accepted
    for reply in accepted:
        reply_finish(
            turn_id=reply.pk,
            outcome=ReplyOutcome(state="complete", content="ok", input_tokens=len(text),
                                 output_tokens=10),
        )  # fmt: skip
    spent = sum(s.cost_usd for s in Spend.objects.all())
    assert spent <= Decimal("2.00"), f"{len(accepted)} replies spent ${spent}"


@pytest.mark.django_db(transaction=True)
async def test_the_runner_writes_its_end_even_when_stopped_during_the_final_write(
    user, conversation, fake_provider
):
    """A Stop arriving while the runner waits for its last checkpoint used to cancel
    the final write: the reply stayed `streaming` until the sweep."""
    from conversations.gateway import Finished, ResponseStarted, TextDelta, Usage
    from conversations.gateway.fake import Pause
    from conversations.replies import replies_running

    fake_provider.script = [ResponseStarted(), TextDelta("almost"), Pause(0.05), Usage(5, 1),
                            Finished("end_turn")]  # fmt: skip
    client = await sync_to_async(signed_in_client)(user)
    communicator = await open_chat_socket(conversation, client)
    await communicator.send_to(text_data=json.dumps({"message": "go"}))
    await frames_until(communicator, r"beforeend:#turn-\d+-text")
    reply = await sync_to_async(conversation.turns.order_by("position").last)()
    runner = next((r for r in replies_running() if r.turn_id == reply.pk), None)
    assert runner is not None
    # Stop lands while the runner writes its end (polled finely: that write is short).
    await wait_until_async(lambda: runner.finishing, interval=0.001, what="finishing")
    runner.stop()
    await frames_until(communicator, 'data-state="complete"')
    stored = await sync_to_async(Turn.objects.get)(pk=reply.pk)
    assert (stored.state, stored.content) == ("complete", "almost")
    await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_failure_while_showing_a_new_reply_does_not_block_the_conversation(
    user, conversation, fake_provider, monkeypatch
):
    """Rendering the new turns failed after the reply was registered as starting:
    it was never launched nor released, so the conversation stayed blocked."""
    from conversations import consumers
    from conversations.replies import replies_alive

    fake_provider.script = fake_provider.reply("written anyway")
    real = consumers.turns_fragment

    def broken(**kwargs):
        raise RuntimeError("template broke")

    monkeypatch.setattr(consumers, "turns_fragment", broken)
    client = await sync_to_async(signed_in_client)(user)
    communicator = await open_chat_socket(conversation, client)
    await communicator.send_to(text_data=json.dumps({"message": "first"}))
    frames = await frames_until(communicator, 'data-state="complete"')
    assert "Something went wrong on the server" in "".join(frames)
    monkeypatch.setattr(consumers, "turns_fragment", real)
    assert replies_alive() == set()
    await communicator.send_to(text_data=json.dumps({"message": "second"}))
    await frames_until(communicator, 'data-state="complete"')
    contents = [t.content for t in await sync_to_async(list)(conversation.turns.all())]
    assert contents == ["first", "written anyway", "second", "written anyway"]
    await communicator.disconnect()


def test_the_frame_limit_must_sit_below_the_transports(settings):
    from conversations.checks import check_socket_limits

    assert check_socket_limits() == []
    settings.CHAT_MAX_FRAME_BYTES = 1024 * 1024
    assert [e.id for e in check_socket_limits()] == ["conversations.E001"]
