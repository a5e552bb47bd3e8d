"""Review without a blind spot: admin lists show metadata only, and the words people wrote
(titles, messages, feedback comments) appear only on a page that records the look."""

import pytest
from django.contrib.auth.models import Permission

from conversations.services import ReplyOutcome, conversation_create, message_send, reply_finish
from review.models import Feedback, ReviewAccess
from teams.models import Membership, Team
from tests.conftest import SONNET

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]
CHANGELIST = "/admin/conversations/conversation/"
FEEDBACK = "/admin/review/feedback/"
SECRET_WORD = "quokkaberry"  # appears only in alice's message
TITLE = "Alice's salary talk"
COMMENT = "Wrong about my manager"
CONTENT = ("salary talk", SECRET_WORD, "market rate")  # title, message, reply


@pytest.fixture
def team_admin(django_user_model, user, other_user):  # type: ignore[no-untyped-def]
    """rhea administers team Red, which alice is in; mallory is in team Blue."""
    red, blue = Team.objects.create(name="Red"), Team.objects.create(name="Blue")
    Membership.objects.create(team=red, user=user)
    Membership.objects.create(team=blue, user=other_user)
    rhea = django_user_model.objects.create_user(username="rhea", password="p-long-1234")
    Membership.objects.create(team=red, user=rhea, role="admin")
    return rhea


@pytest.fixture
def reviewer(django_user_model):  # type: ignore[no-untyped-def]
    person = django_user_model.objects.create_user(username="rita", password="p-long-1234")
    person.user_permissions.add(Permission.objects.get(codename="review_conversation"))
    return person


@pytest.fixture
def alices(user, team_admin, fake_provider):  # type: ignore[no-untyped-def]
    """alice's conversation: a titled chat, a private word in her message, and a reply."""
    chat = conversation_create(owner=user, model=SONNET, title=TITLE)
    _, reply = message_send(conversation=chat, text=f"Is {SECRET_WORD} a fair raise?")
    reply_finish(
        turn_id=reply.pk,
        outcome=ReplyOutcome(state="complete", content="Ask for the market rate.",
                             input_tokens=10, output_tokens=20),
    )  # fmt: skip
    return chat


@pytest.fixture
def complaint(user, alices):  # type: ignore[no-untyped-def]
    reply = alices.turns.get(role="assistant")
    return Feedback.objects.create(turn=reply, user=user, rating=-1, comment=COMMENT)


@pytest.mark.parametrize("who", ["team_admin", "reviewer"])
def test_conversation_list_shows_owner_and_counts_but_no_title_or_message(
    client, request, who, alices
):
    client.force_login(request.getfixturevalue(who))
    page = client.get(CHANGELIST).content.decode()
    assert f"{CHANGELIST}{alices.pk}/change/" in page  # the row is there, linking to it
    assert '<td class="field-owner nowrap">alice</td>' in page
    for word in CONTENT:
        assert word not in page, word
    assert 'aria-label="Select Transcript' in page and " checked" not in page  # none selected
    assert not ReviewAccess.objects.exists()


def test_searching_a_teammates_message_text_finds_nothing(client, team_admin, alices):
    client.force_login(team_admin)
    for query in (f"?q={SECRET_WORD}", "?q=salary"):
        page = client.get(CHANGELIST + query).content.decode()
        assert str(alices.pk) not in page, query
    # Filtering on a text field in the address is a search by content too: refused.
    for lookup in ("?title__icontains=salary", "?system_prompt__icontains=a"):
        assert client.get(CHANGELIST + lookup).status_code == 400, lookup
    assert not ReviewAccess.objects.exists()
    # Searching by owner (metadata) still works.
    assert str(alices.pk) in client.get(CHANGELIST + "?q=alice").content.decode()


def test_feedback_list_shows_the_rating_but_the_comment_only_with_a_record(
    client, team_admin, alices, complaint
):
    client.force_login(team_admin)
    inbox = client.get(FEEDBACK).content.decode()
    assert "</svg> down" in inbox and '<option value="open" selected>' in inbox
    assert COMMENT not in inbox and "market rate" not in inbox
    for query in ("?q=manager", "?q=market"):
        assert (
            f"{FEEDBACK}{complaint.pk}/change/" not in client.get(FEEDBACK + query).content.decode()
        )
    assert client.get(FEEDBACK + "?comment__icontains=manager").status_code == 400
    assert not ReviewAccess.objects.exists()
    # The feedback's own page shows the comment and the reply, and records the look.
    page = client.get(f"{FEEDBACK}{complaint.pk}/change/").content.decode()
    assert COMMENT in page and "Ask for the market rate." in page
    access = ReviewAccess.objects.get()
    assert (access.reviewer, access.conversation, access.reason) == (team_admin, alices, "feedback")


def test_the_title_first_appears_on_the_transcript_which_records_the_look(
    client, user, team_admin, alices
):
    client.force_login(team_admin)
    listing = client.get(CHANGELIST).content.decode()
    assert "salary talk" not in listing and not ReviewAccess.objects.exists()
    transcript = client.get(f"{CHANGELIST}{alices.pk}/change/?reason=audit").content.decode()
    assert "salary talk" in transcript and SECRET_WORD in transcript
    access = ReviewAccess.objects.get()
    assert (access.reviewer, access.conversation, access.reason) == (team_admin, alices, "audit")
    client.force_login(user)
    assert "Reviewed by rhea on" in client.get(f"/conversations/{alices.pk}/").content.decode()


def test_no_side_door_shows_a_title_without_a_record(client, admin_client, team_admin, alices):
    """The history page and the autocomplete endpoint name a conversation by its title."""
    client.force_login(team_admin)
    history = client.get(f"{CHANGELIST}{alices.pk}/history/")
    assert "salary talk" not in history.content.decode()
    autocomplete = client.get(
        "/admin/autocomplete/",
        {"app_label": "review", "model_name": "reviewaccess",
         "field_name": "conversation", "term": "alice"},
    )  # fmt: skip
    assert "salary talk" not in autocomplete.content.decode()
    assert not ReviewAccess.objects.exists()
    # The autocomplete a form declares (a team's members) still answers.
    members = admin_client.get(
        "/admin/autocomplete/",
        {"app_label": "teams", "model_name": "membership", "field_name": "user",
         "term": "ali"},
    )  # fmt: skip
    assert [r["text"] for r in members.json()["results"]] == ["alice"]
