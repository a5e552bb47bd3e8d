"""One definition of chat settings: a preset keeps what a conversation keeps, and an
upstream request never carries temperature with top_p."""

import pytest
from django.db import IntegrityError, transaction

from conversations.actors import actor_for_user
from conversations.gateway import ChatRequest
from conversations.gateway.cloudflare import request_body
from conversations.models import Conversation, Preset
from conversations.services import conversation_create, preset_create_from, preset_settings
from tests.conftest import SONNET, migrated_to

pytestmark = pytest.mark.postgres

BEFORE = [("conversations", "0006_upstream_call")]
AFTER = [("conversations", "0007_preset_setting_constraints")]

REFUSED = {
    "temperature with top_p": {"temperature": 0.5, "top_p": 0.9},
    "temperature above 1": {"temperature": 1.5},
    "top_p below 0": {"top_p": -0.1},
    "top_k of 0": {"top_k": 0},
    "max_tokens of 0": {"max_tokens": 0},
}


@pytest.mark.django_db
@pytest.mark.parametrize("model", [Conversation, Preset], ids=["conversation", "preset"])
@pytest.mark.parametrize("name", REFUSED)
def test_database_refuses_settings_the_models_refuse(model, name, user) -> None:
    named = {"name": "p"} if model is Preset else {}
    with pytest.raises(IntegrityError), transaction.atomic():
        model.objects.create(owner=user, model=SONNET, **named, **REFUSED[name])
    assert not model.objects.exists()


@pytest.mark.django_db
def test_a_preset_carries_every_setting_into_a_new_chat(user, fake_provider) -> None:
    source = conversation_create(
        owner=user, model=SONNET, system_prompt="Be brief.", top_p=0.7, top_k=20, max_tokens=300
    )
    preset = preset_create_from(actor=actor_for_user(user), conversation=source, name="Brief")
    chat = conversation_create(owner=user, **preset_settings(preset))
    assert (chat.model, chat.system_prompt, chat.temperature, chat.top_p, chat.top_k) == (
        SONNET, "Be brief.", None, 0.7, 20,
    )  # fmt: skip
    assert chat.max_tokens == 300


def test_a_request_never_carries_temperature_with_top_p() -> None:
    request = ChatRequest(model=SONNET, messages=[], max_tokens=5, temperature=0.2, top_p=0.9)
    assert (request.temperature, request.top_p) == (0.2, None)
    body = request_body(request)
    assert body["temperature"] == 0.2 and "top_p" not in body


def test_a_request_with_top_p_alone_sends_it() -> None:
    request = ChatRequest(model=SONNET, messages=[], max_tokens=5, top_p=0.9)
    body = request_body(request)
    assert body["top_p"] == 0.9 and "temperature" not in body


@pytest.mark.django_db(transaction=True)
def test_migration_mends_presets_the_new_constraints_refuse(user, other_user) -> None:
    old = migrated_to(BEFORE)
    try:
        OldPreset = old.get_model("conversations", "Preset")
        OldConversation = old.get_model("conversations", "Conversation")
        OldTeam = old.get_model("conversations", "Team")
        team = OldTeam.objects.create(name="Crew")
        rows = {
            # name: (stored before, expected after) as (temperature, top_p, top_k, max_tokens)
            "both": ((0.5, 0.9, None, 1024), (0.5, None, None, 1024)),
            "hot": ((1.5, None, 40, 512), (None, None, 40, 512)),
            "hot with top_p": ((7.0, 0.8, None, 512), (None, 0.8, None, 512)),
            "negative top_p": ((None, -0.5, None, 512), (None, None, None, 512)),
            "top_k of 0": ((None, None, 0, 512), (None, None, None, 512)),
            "max_tokens of 0": ((0.3, None, None, 0), (0.3, None, None, 1024)),
            "fine": ((0.2, None, 5, 2000), (0.2, None, 5, 2000)),
            "top_p": ((None, 0.95, None, 100), (None, 0.95, None, 100)),
            "defaults": ((None, None, None, 1024), (None, None, None, 1024)),
        }
        for name, ((temperature, top_p, top_k, max_tokens), _) in rows.items():
            OldPreset.objects.create(
                owner_id=user.pk, name=name, model=SONNET, system_prompt=f"About {name}.",
                temperature=temperature, top_p=top_p, top_k=top_k, max_tokens=max_tokens,
            )  # fmt: skip
        OldPreset.objects.create(
            owner_id=other_user.pk, team=team, name="both", model=SONNET, temperature=0.1, top_p=0.1
        )
        chat = OldConversation.objects.create(owner_id=user.pk, model=SONNET, title="Kept")

        new = migrated_to(AFTER)

        NewPreset = new.get_model("conversations", "Preset")
        after = {
            name: (p.temperature, p.top_p, p.top_k, p.max_tokens)
            for name, p in ((p.name, p) for p in NewPreset.objects.filter(owner_id=user.pk))
        }
        assert after == {name: expected for name, (_, expected) in rows.items()}
        assert dict(
            NewPreset.objects.filter(owner_id=user.pk).values_list("name", "system_prompt")
        ) == {name: f"About {name}." for name in rows}
        team_preset = NewPreset.objects.get(owner_id=other_user.pk)
        assert (team_preset.team_id, team_preset.temperature, team_preset.top_p) == (
            team.pk, 0.1, None,
        )  # fmt: skip
        kept = new.get_model("conversations", "Conversation").objects.get()
        assert (kept.pk, kept.title) == (chat.pk, "Kept")
        # and the database now holds presets to the rule
        with pytest.raises(IntegrityError), transaction.atomic():
            NewPreset.objects.filter(name="fine").update(top_p=0.5)
    finally:
        migrated_to(None)
