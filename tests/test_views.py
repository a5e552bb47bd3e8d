"""Pages: sign-in, the conversation list, new chat, the chat page, settings, health."""

import pytest
from django.urls import reverse

from conversations.models import Conversation
from conversations.services import ReplyOutcome, message_send, reply_finish
from tests.conftest import PASSWORD, SONNET

pytestmark = pytest.mark.django_db


def test_pages_need_sign_in(client, conversation) -> None:
    for url in ("/", f"/conversations/{conversation.pk}/"):
        response = client.get(url)
        assert response.status_code == 302
        assert response.url.startswith("/accounts/login/")


def test_sign_in_with_username_and_password(client, user) -> None:
    page = client.get("/accounts/login/")
    assert b'name="username"' in page.content and b'name="password"' in page.content
    response = client.post("/accounts/login/", {"username": "alice", "password": PASSWORD})
    assert response.status_code == 302 and response.url == "/"
    bad = client.post("/accounts/login/", {"username": "alice", "password": "wrong"})
    assert "didn't match" in bad.content.decode()


def test_list_shows_only_my_conversations_newest_first(
    signed_in, user, other_user, fake_provider
) -> None:
    from conversations.services import conversation_create

    conversation_create(owner=user, model=SONNET, title="Older")
    conversation_create(owner=user, model=SONNET, title="Newer")
    conversation_create(owner=other_user, model=SONNET, title="Secret of someone else")
    content = signed_in.get("/").content.decode()
    assert content.index("Newer") < content.index("Older")
    assert "Secret of someone else" not in content


def test_new_chat_redirects_to_its_page(signed_in, fake_provider) -> None:
    response = signed_in.post(
        "/conversations/",
        {"model": SONNET, "system_prompt": "Be terse.", "temperature": "0.3", "title": "T"},
    )
    conversation = Conversation.objects.get()
    assert response.status_code == 302
    assert response.url == f"/conversations/{conversation.pk}/"
    assert (conversation.system_prompt, conversation.temperature) == ("Be terse.", 0.3)


@pytest.mark.parametrize("temperature", ["nan", "inf", "2", "-1", "warm"])
def test_new_chat_with_bad_settings_shows_field_error(
    signed_in, fake_provider, temperature
) -> None:
    response = signed_in.post("/conversations/", {"model": SONNET, "temperature": temperature})
    assert response.status_code == 400
    assert b'class="error"' in response.content
    assert Conversation.objects.count() == 0


def test_chat_page_has_the_hooks(signed_in, conversation) -> None:
    _, reply = message_send(conversation=conversation, text="What is **2+2**?")
    reply_finish(turn_id=reply.pk, outcome=ReplyOutcome(state="complete", content="It is **4**."))
    content = signed_in.get(f"/conversations/{conversation.pk}/").content.decode()
    assert f'ws-connect="/ws/conversations/{conversation.pk}/"' in content
    assert 'name="message" aria-label="Message"' in content
    assert ">Send</button>" in content
    assert 'data-role="user"' in content
    assert 'data-role="assistant" data-state="complete"' in content
    assert "<strong>4</strong>" in content
    assert "What is **2+2**?" in content  # the user's text is shown as typed
    for model in ("Claude Sonnet 4", "Claude Haiku 4.5", "SmolLM2 135M"):
        assert model in content


def test_chat_page_fragment_for_htmx(signed_in, conversation) -> None:
    response = signed_in.get(f"/conversations/{conversation.pk}/", HTTP_HX_REQUEST="true")
    assert b"<html" not in response.content
    assert b"ws-connect" in response.content


def test_someone_elses_conversation_is_404(client, other_user, conversation) -> None:
    client.force_login(other_user)
    assert client.get(f"/conversations/{conversation.pk}/").status_code == 404
    response = client.post(f"/conversations/{conversation.pk}/settings/", {"max_tokens": 5})
    assert response.status_code == 404


def test_settings_save_and_apply_to_next_reply(signed_in, conversation) -> None:
    url = reverse("conversation-settings", args=[conversation.pk])
    response = signed_in.post(
        url,
        {
            "model": "anthropic/claude-haiku-4.5",
            "system_prompt": "Pirate voice.",
            "temperature": "0.9",
            "max_tokens": "256",
        },
        HTTP_HX_REQUEST="true",
    )
    assert response.status_code == 200 and b"Saved" in response.content
    _, reply = message_send(conversation=conversation, text="hello")
    assert (reply.model, reply.system_prompt, reply.temperature, reply.max_tokens) == (
        "anthropic/claude-haiku-4.5",
        "Pirate voice.",
        0.9,
        256,
    )


def test_settings_errors_are_shown_and_nothing_changes(signed_in, conversation) -> None:
    url = reverse("conversation-settings", args=[conversation.pk])
    response = signed_in.post(
        url,
        {"model": SONNET, "temperature": "0.5", "top_p": "0.5", "max_tokens": "100"},
        HTTP_HX_REQUEST="true",
    )
    assert response.status_code == 400
    assert b"not both" in response.content
    conversation.refresh_from_db()
    assert (conversation.temperature, conversation.top_p, conversation.max_tokens) == (
        None,
        None,
        1024,
    )


def test_healthz_reports_database_and_channel_layer(client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "channel_layer": "ok"}


def test_healthz_names_the_failing_part(client, settings) -> None:
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": ["redis://127.0.0.1:1/0"]},
        }
    }
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    try:
        response = client.get("/healthz")
    finally:
        channel_layers.backends.clear()
    assert response.status_code == 503
    assert response.json() == {"status": "error", "database": "ok", "channel_layer": "error"}


def test_pages_carry_a_strict_content_security_policy(signed_in, conversation) -> None:
    response = signed_in.get(f"/conversations/{conversation.pk}/")
    policy = response["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert "frame-ancestors 'none'" in policy
    assert b"<script>" not in response.content and b" style=" not in response.content


def test_repeated_failed_sign_ins_are_throttled(client, user) -> None:
    for _ in range(5):
        client.post("/accounts/login/", {"username": "alice", "password": "wrong"})
    locked = client.post("/accounts/login/", {"username": "alice", "password": PASSWORD})
    assert locked.status_code == 429
    assert "Too many failed sign-ins" in locked.content.decode()
    assert "_auth_user_id" not in client.session
