"""The controls a daily user relies on: settings, presets, list, search, rename, delete,
edit and regenerate, long conversations and usage."""

import json

import pytest
from asgiref.sync import sync_to_async
from django.db import connection
from django.test.utils import CaptureQueriesContext

from conversations.models import Conversation, Preset, Turn
from conversations.services import ReplyOutcome, conversation_create, message_send, reply_finish
from tests.conftest import HAIKU, SONNET, frames_until, get_turns, main_of, open_chat_socket


def exchange(conversation, question: str, answer: str, **usage) -> tuple[Turn, Turn]:
    user_turn, reply = message_send(conversation=conversation, text=question)
    reply_finish(turn_id=reply.pk, outcome=ReplyOutcome(state="complete", content=answer, **usage))
    return user_turn, Turn.objects.get(pk=reply.pk)


def settings_post(client, conversation, **fields: str):
    data = {"model": SONNET, "max_tokens": "1024", "system_prompt": "", **fields}
    return client.post(f"/conversations/{conversation.pk}/settings/", data, HTTP_HX_REQUEST="true")


@pytest.mark.django_db
class TestSettings:
    def test_sampling_choice_keeps_only_the_chosen_parameter(self, signed_in, conversation):
        settings_post(
            signed_in, conversation, sampling="temperature", temperature="0.4", top_p="0.9"
        )
        conversation.refresh_from_db()
        assert (conversation.temperature, conversation.top_p) == (0.4, None)
        settings_post(signed_in, conversation, sampling="top_p", temperature="0.4", top_p="0.9")
        conversation.refresh_from_db()
        assert (conversation.temperature, conversation.top_p) == (None, 0.9)
        settings_post(signed_in, conversation, sampling="default", temperature="0.4", top_p="0.9")
        conversation.refresh_from_db()
        assert (conversation.temperature, conversation.top_p) == (None, None)

    @pytest.mark.parametrize(
        ("fields", "message"),
        [
            ({"sampling": "temperature", "temperature": "NaN"}, "Enter a number"),
            ({"sampling": "temperature", "temperature": "Infinity"}, "Enter a number"),
            ({"sampling": "temperature", "temperature": "1.01"}, "less than or equal to 1"),
            ({"sampling": "temperature", "temperature": "hot"}, "Enter a number"),
            ({"sampling": "temperature"}, "Enter a temperature"),
            ({"sampling": "top_p", "top_p": "-0.5"}, "greater than or equal to 0"),
            ({"top_k": "0"}, "greater than or equal to 1"),
            ({"top_k": "2.5"}, "Enter a whole number"),
            ({"max_tokens": "0"}, "greater than or equal to 1"),
            ({"max_tokens": "64001"}, "writes at most 64000 tokens"),
            ({"temperature": "0.5", "top_p": "0.5"}, "not both"),
            ({"model": "gpt-9"}, "Select a valid choice"),
        ],
    )
    def test_bad_settings_get_a_field_error_and_change_nothing(
        self, signed_in, conversation, fake_provider, fields, message
    ):
        response = settings_post(signed_in, conversation, **fields)
        assert response.status_code == 400
        assert message in response.content.decode()
        assert not fake_provider.requests
        fresh = Conversation.objects.get(pk=conversation.pk)
        assert (fresh.temperature, fresh.top_p, fresh.top_k, fresh.max_tokens, fresh.model) == (
            None, None, None, 1024, SONNET)  # fmt: skip

    def test_each_reply_shows_the_settings_it_was_made_with(self, signed_in, conversation):
        settings_post(
            signed_in, conversation, sampling="temperature", temperature="0.8", top_k="40"
        )
        conversation.refresh_from_db()
        exchange(conversation, "q", "a", input_tokens=1000, output_tokens=2000)
        settings_post(signed_in, conversation, sampling="default", model=HAIKU)
        page = signed_in.get(f"/conversations/{conversation.pk}/").content.decode()
        assert "temperature 0.8 · top_k 40 · max 1024 tokens" in page
        # Sonnet 4: 1000 * $3 + 2000 * $15 per million tokens
        assert "1000 in / 2000 out · $0.0330" in page


@pytest.mark.django_db
class TestPresets:
    def test_save_a_preset_and_start_a_chat_from_it(self, signed_in, user, conversation):
        settings_post(
            signed_in, conversation, model=HAIKU, system_prompt="Pirate.", sampling="temperature",
            temperature="0.9", max_tokens="300",
        )  # fmt: skip
        response = signed_in.post(
            f"/conversations/{conversation.pk}/preset/", {"name": "Pirate"}, HTTP_HX_REQUEST="true"
        )
        assert "Saved as preset" in response.content.decode()
        preset = Preset.objects.get(owner=user)
        assert "Pirate" in signed_in.get("/").content.decode()
        response = signed_in.post("/conversations/", {"preset": preset.pk})
        new = Conversation.objects.exclude(pk=conversation.pk).get()
        assert response.url == f"/conversations/{new.pk}/"
        assert (new.model, new.system_prompt, new.temperature, new.max_tokens) == (
            HAIKU, "Pirate.", 0.9, 300)  # fmt: skip

    def test_duplicate_or_empty_name_is_refused(self, signed_in, conversation):
        url = f"/conversations/{conversation.pk}/preset/"
        signed_in.post(url, {"name": "Mine"}, HTTP_HX_REQUEST="true")
        again = signed_in.post(url, {"name": "Mine"}, HTTP_HX_REQUEST="true")
        assert again.status_code == 400 and "already have a preset" in again.content.decode()
        empty = signed_in.post(url, {"name": "  "}, HTTP_HX_REQUEST="true")
        assert empty.status_code == 400
        assert Preset.objects.count() == 1

    def test_someone_elses_preset_is_404(self, client, other_user, signed_in, conversation):
        signed_in.post(f"/conversations/{conversation.pk}/preset/", {"name": "Mine"})
        preset = Preset.objects.get()
        client.force_login(other_user)
        assert client.post("/conversations/", {"preset": preset.pk}).status_code == 404
        assert client.post(f"/presets/{preset.pk}/delete/").status_code == 404
        assert Preset.objects.count() == 1


@pytest.mark.django_db
class TestConversationList:
    def test_search_titles_and_message_text(self, signed_in, user, other_user, fake_provider):
        thermo = conversation_create(owner=user, model=SONNET, title="Physics")
        exchange(thermo, "What are the three laws of thermodynamics?", "Energy is conserved.")
        conversation_create(owner=user, model=SONNET, title="Thermos and flasks")
        conversation_create(owner=user, model=SONNET, title="Unrelated")
        conversation_create(owner=other_user, model=SONNET, title="Thermodynamics of mallory")
        page = main_of(signed_in.get("/?q=thermo"))
        assert "Physics" in page and "Thermos and flasks" in page
        assert "Unrelated" not in page and "mallory" not in page
        page = main_of(signed_in.get("/?q=CONSERVED"))
        assert "Physics" in page and "Thermos" not in page
        assert "No conversation mentions" in main_of(signed_in.get("/?q=zebra"))

    def test_list_is_paginated_newest_first(self, signed_in, user, fake_provider):
        for n in range(30):
            conversation_create(owner=user, model=SONNET, title=f"Chat number {n:02d}")
        first = main_of(signed_in.get("/?q="))
        assert "Chat number 29" in first and "Chat number 05" in first
        assert "Chat number 04" not in first and "Page 1 of 2" in first
        second = main_of(signed_in.get("/?page=2"))
        assert "Chat number 04" in second and "Chat number 00" in second

    def test_rename(self, signed_in, conversation):
        url = f"/conversations/{conversation.pk}/rename/"
        response = signed_in.post(url, {"title": "  Better   name "}, HTTP_HX_REQUEST="true")
        assert response.status_code == 200 and "Better name" in response.content.decode()
        conversation.refresh_from_db()
        assert conversation.title == "Better name"
        bad = signed_in.post(url, {"title": "   "}, HTTP_HX_REQUEST="true")
        assert bad.status_code == 400 and "cannot be empty" in bad.content.decode()
        conversation.refresh_from_db()
        assert conversation.title == "Better name"

    def test_delete_asks_then_deletes(self, signed_in, conversation):
        exchange(conversation, "q", "a")
        confirm = signed_in.get(f"/conversations/{conversation.pk}/delete/")
        assert "cannot be undone" in confirm.content.decode()
        assert Conversation.objects.count() == 1
        response = signed_in.post(f"/conversations/{conversation.pk}/delete/")
        assert response.status_code == 302
        assert Conversation.objects.count() == 0 and Turn.objects.count() == 0

    def test_others_cannot_rename_or_delete(self, client, other_user, conversation):
        client.force_login(other_user)
        base = f"/conversations/{conversation.pk}"
        assert client.post(f"{base}/rename/", {"title": "pwned"}).status_code == 404
        assert client.get(f"{base}/delete/").status_code == 404
        assert client.post(f"{base}/delete/").status_code == 404
        assert client.get(f"{base}/turns/?before=5").status_code == 404
        assert Conversation.objects.get().title == "Test chat"


def make_turns(conversation, count: int) -> None:
    Turn.objects.bulk_create(
        Turn(
            conversation=conversation,
            position=n + 1,
            role="user" if n % 2 == 0 else "assistant",
            content=f"message {n + 1} with **bold** text",
            state="complete",
            model=SONNET,
            max_tokens=1024,
        )
        for n in range(count)
    )


@pytest.mark.django_db
class TestLongConversations:
    def queries_to_open(self, client, conversation) -> int:
        with CaptureQueriesContext(connection) as queries:
            response = client.get(f"/conversations/{conversation.pk}/")
        assert response.status_code == 200
        return len(queries)

    def test_a_thousand_turns_open_with_the_queries_of_ten(self, signed_in, user, fake_provider):
        short = conversation_create(owner=user, model=SONNET, title="short")
        long = conversation_create(owner=user, model=SONNET, title="long")
        make_turns(short, 10)
        make_turns(long, 1000)
        assert self.queries_to_open(signed_in, short) == self.queries_to_open(signed_in, long)

    def test_latest_turns_shown_earlier_ones_on_demand(self, signed_in, user, fake_provider):
        conversation = conversation_create(owner=user, model=SONNET)
        make_turns(conversation, 120)
        page = signed_in.get(f"/conversations/{conversation.pk}/").content.decode()
        assert "message 120 " in page and "message 71 " in page and "message 70 " not in page
        assert "Load earlier messages" in page and "?before=71" in page
        earlier = signed_in.get(f"/conversations/{conversation.pk}/turns/?before=71")
        body = earlier.content.decode()
        assert "message 70 " in body and "message 21 " in body and "message 20 " not in body
        assert "?before=21" in body
        oldest = signed_in.get(f"/conversations/{conversation.pk}/turns/?before=21").content
        assert b"message 1 " in oldest and b"Load earlier" not in oldest


@pytest.mark.django_db(transaction=True)
class TestTurnActions:
    async def test_edit_sends_a_new_version_and_keeps_the_old_one(
        self, conversation, user, fake_provider
    ):
        first_q, first_a = await sync_to_async(exchange)(conversation, "Frist question", "one")
        second_q, second_a = await sync_to_async(exchange)(conversation, "second", "two")
        fake_provider.script = fake_provider.reply("a fresh answer")
        communicator = await open_chat_socket(conversation, user)
        await communicator.send_to(
            text_data=json.dumps(
                {"action": "edit", "turn": str(first_q.pk), "message": "First question"}
            )
        )
        frames = await frames_until(communicator, r'data-state="complete"')
        joined = "".join(frames)
        for left in (first_q.pk, first_a.pk, second_q.pk, second_a.pk):
            assert f'<article id="turn-{left}" hx-swap-oob="delete">' in joined
        assert "2 / 2" in joined and "Previous version" in joined
        path = await sync_to_async(list)(conversation.turns.filter(on_path=True))
        assert [(t.role, t.content, t.state) for t in path] == [
            ("user", "First question", "complete"),
            ("assistant", "a fresh answer", "complete"),
        ]
        assert path[0].pk != first_q.pk and path[0].parent_id is None
        assert path[1].parent_id == path[0].pk and path[0].position == first_q.position
        # Nothing was deleted: the first version and what followed it are all kept.
        kept = await sync_to_async(list)(conversation.turns.filter(on_path=False))
        assert [(t.pk, t.content) for t in kept] == [
            (first_q.pk, "Frist question"),
            (first_a.pk, "one"),
            (second_q.pk, "second"),
            (second_a.pk, "two"),
        ]
        assert fake_provider.requests[-1].messages == [
            {"role": "user", "content": "First question"}
        ]
        await communicator.disconnect()

    async def test_edit_refuses_bad_input_and_changes_nothing(
        self, conversation, user, fake_provider
    ):
        first_q, _ = await sync_to_async(exchange)(conversation, "question", "answer")
        communicator = await open_chat_socket(conversation, user)
        for frame in (
            {"action": "edit", "turn": str(first_q.pk), "message": "  "},
            {"action": "edit", "turn": "99999", "message": "x"},
            {"action": "edit", "turn": [1], "message": "x"},
        ):
            await communicator.send_to(text_data=json.dumps(frame))
            assert 'class="error"' in await communicator.receive_from(timeout=5)
        assert [t.content for t in await get_turns(conversation)] == ["question", "answer"]
        await communicator.disconnect()

    async def test_regenerate_writes_a_new_version_of_the_last_reply(
        self, conversation, user, fake_provider
    ):
        question, reply = await sync_to_async(exchange)(conversation, "question", "old answer")
        fake_provider.script = fake_provider.reply("new answer")
        communicator = await open_chat_socket(conversation, user)
        await communicator.send_to(text_data=json.dumps({"action": "retry", "turn": str(reply.pk)}))
        frames = await frames_until(communicator, r'data-state="complete"')
        assert f'<article id="turn-{reply.pk}" hx-swap-oob="delete">' in "".join(frames)
        assert "2 / 2" in frames[-1]
        path = await sync_to_async(list)(conversation.turns.filter(on_path=True))
        assert [t.content for t in path] == ["question", "new answer"]
        versions = await sync_to_async(list)(conversation.turns.filter(parent=question))
        assert [(t.pk, t.content, t.on_path) for t in versions] == [
            (reply.pk, "old answer", False),
            (path[1].pk, "new answer", True),
        ]
        await communicator.disconnect()
