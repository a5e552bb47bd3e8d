from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from ..models import Conversation, Preset

PRESET_FIELDS = ("model", "system_prompt", "temperature", "top_p", "top_k", "max_tokens")


@transaction.atomic
def preset_create_from(*, conversation: Conversation, name: str) -> Preset:
    """Save a conversation's model, system prompt and settings under a name."""
    name = (name or "").strip()
    if not name:
        raise ValidationError({"name": "Give the preset a name."})
    preset = Preset(
        owner_id=conversation.owner_id,
        name=name[:100],
        **{field: getattr(conversation, field) for field in PRESET_FIELDS},
    )
    preset.full_clean(exclude=["owner"])
    try:
        with transaction.atomic():
            preset.save()
    except IntegrityError as exc:
        raise ValidationError({"name": "You already have a preset with this name."}) from exc
    return preset


def preset_settings(preset: Preset) -> dict[str, Any]:
    """The fields a new conversation takes from a preset."""
    return {field: getattr(preset, field) for field in PRESET_FIELDS}


def preset_delete(*, preset: Preset) -> None:
    preset.delete()
