"""The split of `conversations` into `teams`, `billing` and `review` keeps every row: a
database at the migrations from before it, with data in every table, migrates and finds
it all, and the admin permissions people were given follow their models."""

from decimal import Decimal

import pytest

from tests.conftest import SONNET, migrated_to

pytestmark = pytest.mark.postgres

BEFORE = [
    ("conversations", "0007_preset_setting_constraints"),
    ("contenttypes", "0002_remove_content_type_name"),
    ("auth", "0012_alter_user_first_name_max_length"),
    *((app, None) for app in ("teams", "billing", "review")),  # not yet there
]
MOVED = {
    "teams": ["team", "membership"],
    "billing": ["userbudget", "spend", "upstreamcall"],
    "review": ["reviewaccess", "feedback"],
}


@pytest.mark.django_db(transaction=True)
def test_every_row_and_permission_survives_the_split(user, other_user) -> None:
    old = migrated_to(BEFORE)
    try:

        def model(name: str):
            return old.get_model("conversations", name)

        team = model("Team").objects.create(
            name="Crew", monthly_budget_usd=Decimal("12.50"), allowed_models=[SONNET]
        )
        model("Membership").objects.create(team=team, user_id=user.pk, role="admin")
        model("Membership").objects.create(team=team, user_id=other_user.pk)
        model("UserBudget").objects.create(user_id=user.pk, monthly_budget_usd=Decimal("3.00"))
        chat = model("Conversation").objects.create(
            owner_id=user.pk, model=SONNET, title="Kept", shared_with=team
        )
        model("Turn").objects.create(conversation=chat, position=0, role="user", content="Hi")
        reply = model("Turn").objects.create(
            conversation=chat, position=1, role="assistant", content="Hello", model=SONNET
        )
        model("Preset").objects.create(owner_id=user.pk, team=team, name="Team brief", model=SONNET)
        model("Spend").objects.create(
            user_id=user.pk, team=team, turn=reply, model=SONNET, input_tokens=10,
            output_tokens=20, cost_usd=Decimal("0.000330"),
        )  # fmt: skip
        model("ReviewAccess").objects.create(
            reviewer_id=other_user.pk, conversation=chat, reason="audit"
        )
        model("Feedback").objects.create(
            turn=reply, user_id=user.pk, rating=-1, comment="Too short", flag="quality"
        )
        model("UpstreamCall").objects.create(user_id=user.pk, kind="send")
        # An admin permission someone was given on a model that moves.
        permission = old.get_model("auth", "Permission").objects.get(
            content_type__app_label="conversations", codename="change_team"
        )
        group = old.get_model("auth", "Group").objects.create(name="Team managers")
        group.permissions.add(permission)
    finally:
        new = migrated_to(None)

    def moved(app: str, name: str):
        return new.get_model(app, name)

    team = moved("teams", "Team").objects.get()
    assert (team.name, team.monthly_budget_usd, team.allowed_models) == (
        "Crew", Decimal("12.50"), [SONNET],
    )  # fmt: skip
    assert sorted(
        moved("teams", "Membership").objects.values_list("user_id", "team_id", "role")
    ) == sorted([(user.pk, team.pk, "admin"), (other_user.pk, team.pk, "member")])
    assert moved("billing", "UserBudget").objects.get().monthly_budget_usd == Decimal("3.00")
    chat = new.get_model("conversations", "Conversation").objects.get()
    assert (chat.title, chat.shared_with_id) == ("Kept", team.pk)
    assert list(chat.turns.order_by("position").values_list("content", flat=True)) == [
        "Hi", "Hello",
    ]  # fmt: skip
    assert new.get_model("conversations", "Preset").objects.get().team_id == team.pk
    spend = moved("billing", "Spend").objects.get()
    reply = chat.turns.get(position=1)
    assert (spend.team_id, spend.turn_id, spend.cost_usd) == (team.pk, reply.pk, Decimal("0.00033"))
    access = moved("review", "ReviewAccess").objects.get()
    assert (access.conversation_id, access.reviewer_id, access.reason) == (
        chat.pk, other_user.pk, "audit",
    )  # fmt: skip
    feedback = moved("review", "Feedback").objects.get()
    assert (feedback.turn_id, feedback.rating, feedback.comment, feedback.flag) == (
        reply.pk, -1, "Too short", "quality",
    )  # fmt: skip
    assert moved("billing", "UpstreamCall").objects.get().kind == "send"
    # The permission moved with its model: the group still may change teams.
    ContentType = new.get_model("contenttypes", "ContentType")
    for app, models in MOVED.items():
        assert set(
            ContentType.objects.filter(model__in=models).values_list("app_label", flat=True)
        ) == {app}
    group = new.get_model("auth", "Group").objects.get(name="Team managers")
    assert [(p.content_type.app_label, p.codename) for p in group.permissions.all()] == [
        ("teams", "change_team")
    ]
