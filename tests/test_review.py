"""Admin conversation review: who sees what, every look on the record, feedback,
exports and the usage report."""

import csv
import io
import json
from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission
from django.core.management import call_command

from billing.models import Spend
from conversations.models import Conversation
from conversations.services import ReplyOutcome, conversation_create, message_send, reply_finish
from review.models import Feedback, ReviewAccess
from teams.models import Membership, Team
from tests.conftest import SONNET

pytestmark = pytest.mark.django_db
CHANGELIST = "/admin/conversations/conversation/"


def transcript_url(conversation) -> str:  # type: ignore[no-untyped-def]
    return f"{CHANGELIST}{conversation.pk}/change/"


@pytest.fixture
def teams(django_user_model, user, other_user, fake_provider):  # type: ignore[no-untyped-def]
    """alice (team Red), mallory (team Blue); a team admin for each team."""
    red, blue = Team.objects.create(name="Red"), Team.objects.create(name="Blue")
    Membership.objects.create(team=red, user=user)
    Membership.objects.create(team=blue, user=other_user)
    red_admin = django_user_model.objects.create_user(username="rhea", password="p-long-1234")
    blue_admin = django_user_model.objects.create_user(username="bruno", password="p-long-1234")
    Membership.objects.create(team=red, user=red_admin, role="admin")
    Membership.objects.create(team=blue, user=blue_admin, role="admin")
    return {"red_admin": red_admin, "blue_admin": blue_admin}


@pytest.fixture
def chats(user, other_user, teams):  # type: ignore[no-untyped-def]
    alices = conversation_create(owner=user, model=SONNET, title="Alice's plan")
    _, reply = message_send(conversation=alices, text="How do I read a JSON file in Python?")
    reply_finish(
        turn_id=reply.pk,
        outcome=ReplyOutcome(state="complete", content="Use **json.load**.\n\n<script>x</script>",
                             input_tokens=1000, output_tokens=2000, gateway_log_id="log-abc"),
    )  # fmt: skip
    mallorys = conversation_create(owner=other_user, model=SONNET, title="Mallory's thing")
    return alices, mallorys


@pytest.fixture
def reviewer(django_user_model):  # type: ignore[no-untyped-def]
    person = django_user_model.objects.create_user(username="rita", password="p-long-1234")
    person.user_permissions.add(Permission.objects.get(codename="review_conversation"))
    return person


def test_reviewer_sees_every_conversation_and_the_transcript_as_the_user_saw_it(
    client, reviewer, chats
):
    alices, _ = chats
    client.force_login(reviewer)
    listing = client.get(CHANGELIST).content.decode()
    assert transcript_url(alices) in listing and transcript_url(chats[1]) in listing
    assert "Alice&#x27;s plan" not in listing  # titles are read on the transcript, recorded
    assert "$0.0330" in listing  # 1000 in, 2000 out on Sonnet 4
    page = client.get(transcript_url(alices) + "?reason=quality+check").content.decode()
    assert "<strong>json.load</strong>" in page  # the same sanitised Markdown
    assert "<script>x</script>" not in page and "&lt;script&gt;x&lt;/script&gt;" in page
    assert "log-abc" in page and "1000 in / 2000 out" in page and "max 1024 tokens" in page
    access = ReviewAccess.objects.get()
    assert (access.reviewer, access.conversation, access.reason) == (
        reviewer, alices, "quality check")  # fmt: skip


def test_owner_sees_who_reviewed_their_conversation(client, user, reviewer, chats):
    alices, _ = chats
    client.force_login(reviewer)
    client.get(transcript_url(alices))
    client.force_login(user)
    page = client.get(f"/conversations/{alices.pk}/").content.decode()
    assert "Reviewed by rita on" in page


def test_team_admin_sees_only_their_team(client, teams, chats):
    alices, _ = chats
    client.force_login(teams["blue_admin"])
    listing = client.get(CHANGELIST).content.decode()
    assert transcript_url(chats[1]) in listing and transcript_url(alices) not in listing
    assert client.get(transcript_url(alices)).status_code == 404
    assert client.get(f"/conversations/{alices.pk}/export.json").status_code == 404
    assert not ReviewAccess.objects.exists()
    client.force_login(teams["red_admin"])
    assert client.get(transcript_url(alices)).status_code == 200


def test_ordinary_users_never_reach_the_admin(client, user, chats):
    alices, _ = chats
    client.force_login(user)
    for url in ("/admin/", CHANGELIST, transcript_url(alices), "/admin/usage/",
                "/admin/review/feedback/"):  # fmt: skip
        response = client.get(url)
        assert response.status_code == 302 and "/admin/login/" in response.url


def test_the_record_cannot_be_edited_or_deleted(admin_client, reviewer, chats):
    alices, _ = chats
    admin_client.get(transcript_url(alices))
    access = ReviewAccess.objects.get()
    base = f"/admin/review/reviewaccess/{access.pk}"
    edit = admin_client.post(f"{base}/change/", {"reason": "nothing to see"})
    assert edit.status_code == 403 or ReviewAccess.objects.get().reason == ""
    assert admin_client.post(f"{base}/delete/", {"post": "yes"}).status_code == 403
    assert ReviewAccess.objects.count() == 1
    # Transcripts are read-only too.
    assert admin_client.post(f"{CHANGELIST}{alices.pk}/delete/", {"post": "yes"}).status_code == 403
    assert Conversation.objects.filter(pk=alices.pk).exists()


def test_reviewer_flags_a_conversation_and_filters_by_it(client, reviewer, chats):
    alices, _ = chats
    client.force_login(reviewer)
    client.post(transcript_url(alices), {"flag": "misuse"})
    assert Conversation.objects.get(pk=alices.pk).flag == "misuse"
    flagged = client.get(CHANGELIST + "?flagged=yes").content.decode()
    assert transcript_url(alices) in flagged and transcript_url(chats[1]) not in flagged


def test_feedback_from_users_reaches_the_inbox_negative_first(client, user, reviewer, chats):
    alices, _ = chats
    reply = alices.turns.get(role="assistant")
    client.force_login(user)
    response = client.post(f"/turns/{reply.pk}/feedback/", {"rating": "-1", "comment": "Wrong"})
    assert "feedback saved" in response.content.decode()
    assert client.post(f"/turns/{reply.pk}/feedback/", {"rating": "5"}).status_code == 400
    _, second = message_send(conversation=alices, text="again")
    reply_finish(turn_id=second.pk, outcome=ReplyOutcome(state="complete", content="Fine"))
    client.post(f"/turns/{second.pk}/feedback/", {"rating": "1"})
    client.force_login(reviewer)
    inbox = client.get("/admin/review/feedback/").content.decode()
    assert inbox.index("</svg> down") < inbox.index("</svg> up") and "Wrong" not in inbox
    feedback = Feedback.objects.get(rating=-1)
    note = {"status": "resolved", "flag": "quality", "reviewer_note": "Fixed prompt"}
    client.post(f"/admin/review/feedback/{feedback.pk}/change/", note)
    feedback.refresh_from_db()
    assert (feedback.status, feedback.flag, feedback.reviewer_note) == (
        "resolved", "quality", "Fixed prompt")  # fmt: skip


def test_others_cannot_rate_someone_elses_reply(client, other_user, chats):
    alices, _ = chats
    client.force_login(other_user)
    reply = alices.turns.get(role="assistant")
    assert client.post(f"/turns/{reply.pk}/feedback/", {"rating": "-1"}).status_code == 404


def test_exports_as_json_and_markdown(client, user, reviewer, chats):
    alices, _ = chats
    client.force_login(user)
    data = json.loads(client.get(f"/conversations/{alices.pk}/export.json").content)
    assert data["title"] == "Alice's plan" and data["owner"] == "alice"
    assert [t["role"] for t in data["turns"]] == ["user", "assistant"]
    assert data["turns"][1]["gateway_log_id"] == "log-abc"
    assert Decimal(data["turns"][1]["cost_usd"]) == Decimal("0.033")  # the ledger's row
    markdown = client.get(f"/conversations/{alices.pk}/export.md").content.decode()
    assert markdown.startswith("# Alice's plan") and "Use **json.load**." in markdown
    assert not ReviewAccess.objects.exists()  # the owner's own export is no review
    client.force_login(reviewer)
    assert client.get(f"/conversations/{alices.pk}/export.md").status_code == 200
    assert ReviewAccess.objects.get().reason == "export md"


def test_admin_action_and_command_export_json_lines(admin_client, chats, tmp_path):
    alices, mallorys = chats
    response = admin_client.post(
        CHANGELIST, {"action": "export_jsonl", "_selected_action": [alices.pk, mallorys.pk]}
    )
    lines = b"".join(response.streaming_content).decode().splitlines()
    assert sorted(json.loads(line)["title"] for line in lines) == [
        "Alice's plan",
        "Mallory's thing",
    ]
    out = tmp_path / "export.jsonl"
    call_command("export_conversations", "--since", "2000-01-01", "--format", "jsonl",
                 "--output", str(out))  # fmt: skip
    assert len(out.read_text().splitlines()) == 2
    call_command("export_conversations", "--since", "2999-01-01", "--output", str(out))
    assert out.read_text() == ""


def test_usage_report_with_chart_and_csv(admin_client, chats):
    page = admin_client.get("/admin/usage/").content.decode()
    assert "Total: <strong>$0.0330</strong> for 1 replies" in page
    assert "<svg" in page and 'class="bar"' in page
    for heading in ("By user", "By team", "By model"):
        assert heading in page
    rows = list(
        csv.reader(io.StringIO(admin_client.get("/admin/usage/?format=csv").content.decode()))
    )
    assert rows[0] == ["day", "user", "team", "model", "replies", "input_tokens",
                       "output_tokens", "cost_usd"]  # fmt: skip
    assert rows[1][1:5] == ["alice", "Red", SONNET, "1"] and Decimal(rows[1][7]) == Decimal("0.033")


def test_team_admin_report_covers_only_their_team(client, teams, chats):
    Spend.objects.create(user=chats[1].owner, team=Team.objects.get(name="Blue"), model=SONNET,
                         input_tokens=0, output_tokens=1000, cost_usd=Decimal("0.015"))  # fmt: skip
    client.force_login(teams["blue_admin"])
    page = client.get("/admin/usage/").content.decode()
    assert "Total: <strong>$0.0150</strong>" in page and "alice" not in page
