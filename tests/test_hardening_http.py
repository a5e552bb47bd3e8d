"""HTTP hardening: every submitted text under the one input rule, rename's `next`
stays on this site, and exports come only as JSON or Markdown."""

from urllib.parse import quote

import pytest
from django.core.exceptions import ValidationError
from django.http import Http404
from django.test import RequestFactory

from conversations.actors import actor_for_user
from conversations.models import Conversation, Preset, Turn
from conversations.services import (
    conversation_create,
    conversation_rename,
    conversation_update,
    preset_create_from,
)
from conversations.text import UNSTORABLE_MESSAGE
from review import views as review_views
from review.feedback import feedback_give
from review.models import Feedback
from tests.conftest import SONNET, main_of

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]

NUL = "\x00"
LONE_SURROGATE = "\ud800"


@pytest.fixture
def reply(conversation):
    """A finished exchange, stored directly: feedback is about the reply, not the send."""
    Turn.objects.create(conversation=conversation, position=0, role="user", content="Question?")
    return Turn.objects.create(
        conversation=conversation, position=1, role="assistant", content="Answer."
    )


class TestSubmittedTextFollowsTheInputRule:
    @pytest.mark.parametrize("htmx", [True, False], ids=["htmx", "plain-form"])
    def test_rename_with_nul_is_refused_and_the_title_kept(self, signed_in, conversation, htmx):
        headers = {"HTTP_HX_REQUEST": "true"} if htmx else {}
        response = signed_in.post(
            f"/conversations/{conversation.pk}/rename/", {"title": f"Be{NUL}tter"}, **headers
        )
        assert response.status_code == 400
        assert UNSTORABLE_MESSAGE in response.content.decode()
        conversation.refresh_from_db()
        assert conversation.title == "Test chat"

    def test_preset_name_with_nul_is_refused_and_nothing_saved(self, signed_in, conversation):
        response = signed_in.post(
            f"/conversations/{conversation.pk}/preset/",
            {"name": f"Pi{NUL}rate"},
            HTTP_HX_REQUEST="true",
        )
        assert response.status_code == 400
        assert UNSTORABLE_MESSAGE in response.content.decode()
        assert not Preset.objects.exists()

    def test_feedback_comment_with_nul_is_refused_and_nothing_saved(self, signed_in, reply):
        response = signed_in.post(
            f"/turns/{reply.pk}/feedback/", {"rating": "-1", "comment": f"Wr{NUL}ng"}
        )
        assert response.status_code == 400
        assert UNSTORABLE_MESSAGE in response.content.decode()
        assert not Feedback.objects.exists()

    def test_system_prompt_with_nul_gets_the_same_message(self, signed_in, conversation):
        response = signed_in.post(
            f"/conversations/{conversation.pk}/settings/",
            {"model": SONNET, "max_tokens": "1024", "system_prompt": f"Be{NUL}terse"},
            HTTP_HX_REQUEST="true",
        )
        assert response.status_code == 400
        assert UNSTORABLE_MESSAGE in response.content.decode()
        created = signed_in.post("/conversations/", {"title": f"T{NUL}", "model": SONNET})
        assert created.status_code == 400
        assert UNSTORABLE_MESSAGE in created.content.decode()
        conversation.refresh_from_db()
        assert conversation.system_prompt == "" and Conversation.objects.count() == 1

    @pytest.mark.parametrize("fragment", [False, True], ids=["page", "htmx-fragment"])
    def test_search_with_nul_shows_an_error_and_no_conversations(
        self, signed_in, conversation, fragment
    ):
        if fragment:
            response = signed_in.get("/?q=%00&fragment=list", HTTP_HX_REQUEST="true")
        else:
            response = signed_in.get("/?q=%00")
        assert response.status_code == 400
        content = main_of(response) if not fragment else response.content.decode()
        assert UNSTORABLE_MESSAGE in content
        assert "Test chat" not in content

    def test_search_query_is_still_cut_to_200_characters(self, signed_in, conversation):
        content = signed_in.get("/?q=" + "x" * 300).content.decode()
        assert 'value="' + "x" * 200 + '"' in content


@pytest.mark.parametrize("bad", [NUL, LONE_SURROGATE], ids=["nul", "lone-surrogate"])
class TestServicesRefuseUnstorableTextFromAnyCaller:
    """A caller that skips the forms (a script, the admin shell, another view) is refused too."""

    def test_rename(self, conversation, bad):
        with pytest.raises(ValidationError, match=UNSTORABLE_MESSAGE):
            conversation_rename(conversation=conversation, title=f"New{bad}")
        conversation.refresh_from_db()
        assert conversation.title == "Test chat"

    def test_preset_name(self, user, conversation, bad):
        with pytest.raises(ValidationError, match=UNSTORABLE_MESSAGE):
            preset_create_from(
                actor=actor_for_user(user), conversation=conversation, name=f"Pi{bad}rate"
            )
        assert not Preset.objects.exists()

    def test_feedback_comment(self, user, reply, bad):
        with pytest.raises(ValidationError, match=UNSTORABLE_MESSAGE):
            feedback_give(user=user, turn=reply, rating=1, comment=f"Fine{bad}")
        assert not Feedback.objects.exists()

    @pytest.mark.parametrize("field", ["title", "system_prompt"])
    def test_conversation_update(self, conversation, bad, field):
        with pytest.raises(ValidationError, match=UNSTORABLE_MESSAGE):
            conversation_update(conversation=conversation, **{field: f"x{bad}"})
        conversation.refresh_from_db()
        assert (conversation.title, conversation.system_prompt) == ("Test chat", "")

    @pytest.mark.parametrize("field", ["title", "system_prompt"])
    def test_conversation_create(self, user, fake_provider, bad, field):
        with pytest.raises(ValidationError, match=UNSTORABLE_MESSAGE):
            conversation_create(owner=user, model=SONNET, **{field: f"x{bad}"})
        assert not Conversation.objects.exists()


class TestRenameRedirect:
    @pytest.mark.parametrize(
        "next_url",
        [
            "https://evil.example/",
            "//evil.example/",
            "/\\evil.example/",
            "http://testserver.evil.example/",
            "javascript:alert(1)",
            "conversation-detail",
            "conversation-list",
            "conversations/?next=http://testserver/",
            "",
        ],
    )
    def test_a_next_off_this_site_or_not_a_path_goes_to_the_list(
        self, signed_in, conversation, next_url
    ):
        response = signed_in.post(
            f"/conversations/{conversation.pk}/rename/", {"title": "Renamed", "next": next_url}
        )
        assert response.status_code == 302 and response.url == "/"
        conversation.refresh_from_db()
        assert conversation.title == "Renamed"

    def test_a_path_on_this_site_is_followed(self, signed_in, conversation):
        back = f"/conversations/{conversation.pk}/?from=list"
        response = signed_in.post(
            f"/conversations/{conversation.pk}/rename/", {"title": "Renamed", "next": back}
        )
        assert response.status_code == 302 and response.url == back

    def test_plain_http_next_is_refused_on_https(self, signed_in, conversation):
        url = f"/conversations/{conversation.pk}/rename/"
        data = {"title": "Renamed", "next": "http://testserver/conversations/"}
        assert signed_in.post(url, data, secure=True).url == "/"
        assert signed_in.post(url, data).url == "http://testserver/conversations/"


class TestExport:
    @pytest.mark.parametrize(
        "suffix",
        ["exe", "html", "json.exe", "MD", 'md"; filename="evil.html', "md\r\nX-Evil: 1", "md\x00"],
    )
    def test_unknown_formats_are_404(self, signed_in, conversation, suffix):
        response = signed_in.get(f"/conversations/{conversation.pk}/export.{quote(suffix)}")
        assert response.status_code == 404
        assert "X-Evil" not in response.headers

    def test_the_view_refuses_an_unknown_format_too(self, user, conversation):
        request = RequestFactory().get("/")
        request.user = user
        with pytest.raises(Http404):
            review_views.conversation_export(request, conversation_id=conversation.pk, fmt="exe")

    @pytest.mark.parametrize("fmt", ["json", "md"])
    def test_the_filename_is_the_conversation_id_and_the_format(self, signed_in, conversation, fmt):
        response = signed_in.get(f"/conversations/{conversation.pk}/export.{fmt}")
        assert response.status_code == 200
        assert response["Content-Disposition"] == (
            f'attachment; filename="conversation-{conversation.pk}.{fmt}"'
        )
