from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from ..actors import Actor
from ..models import ChatSettings, Conversation, Preset
from ..text import UNSTORABLE_MESSAGE, text_is_storable


@transaction.atomic
def preset_create_from(
    *, actor: Actor, conversation: Conversation, name: str, for_team: bool = False
) -> Preset:
    """Save a conversation's model, system prompt and settings under a name, as the
    actor's own preset; for their team too when they are its admin."""
    name = (name or "").strip()
    if not text_is_storable(name):
        raise ValidationError({"name": ValidationError(UNSTORABLE_MESSAGE, code="unstorable")})
    if not name:
        raise ValidationError({"name": "Give the preset a name."})
    team_id = None
    if for_team:
        team_id = actor.team_admin_of
        if team_id is None:
            raise ValidationError({"name": "Only team admins can save team presets."})
    preset = Preset(
        owner_id=actor.user.pk,
        team_id=team_id,
        name=name[:100],
        **{field: getattr(conversation, field) for field in ChatSettings.FIELDS},
    )
    preset.full_clean(exclude=["owner", "team"])
    try:
        with transaction.atomic():
            preset.save()
    except IntegrityError as exc:
        raise ValidationError({"name": "You already have a preset with this name."}) from exc
    return preset


def preset_settings(preset: Preset) -> dict[str, Any]:
    """The fields a new conversation takes from a preset."""
    return {field: getattr(preset, field) for field in ChatSettings.FIELDS}


def preset_may_delete(*, preset: Preset, actor: Actor) -> bool:
    """Own presets by their owner; team presets by the team's admins."""
    if preset.team_id is None:
        return bool(preset.owner_id == actor.user.pk)
    return preset.team_id == actor.team_admin_of


def preset_delete(*, preset: Preset) -> None:
    preset.delete()
