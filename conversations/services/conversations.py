from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from ..actors import actor_for_user
from ..gateway import model_available
from ..models import ChatSettings, Conversation
from ..text import UNSTORABLE_MESSAGE, text_is_storable

SETTING_FIELDS = ("title", *ChatSettings.FIELDS)
TEXT_FIELDS = ("title", "system_prompt")


def _refuse_unstorable(conversation: Conversation) -> None:
    """The one input rule, for callers that skip the forms."""
    errors = {
        name: ValidationError(UNSTORABLE_MESSAGE, code="unstorable")
        for name in TEXT_FIELDS
        if not text_is_storable(getattr(conversation, name) or "")
    }
    if errors:
        raise ValidationError(errors)


def _validate(conversation: Conversation) -> None:
    _refuse_unstorable(conversation)
    conversation.full_clean(exclude=["owner", "shared_with"])
    if not model_available(conversation.model):
        raise ValidationError({"model": "This model is not configured on this server."})
    if not actor_for_user(conversation.owner).may_use(conversation.model):
        raise ValidationError({"model": "Your team may not use this model."})


@transaction.atomic
def conversation_create(*, owner: Any, **fields: Any) -> Conversation:
    """A new conversation with the given settings (defaults from settings)."""
    unknown = set(fields) - set(SETTING_FIELDS)
    if unknown:
        raise TypeError(f"unknown fields: {sorted(unknown)}")
    fields = {k: v for k, v in fields.items() if v is not None and v != ""}
    fields.setdefault("model", settings.CHAT_DEFAULT_MODEL)
    fields.setdefault("max_tokens", settings.CHAT_DEFAULT_MAX_TOKENS)
    conversation = Conversation(owner=owner, **fields)
    _validate(conversation)
    conversation.save()
    return conversation


@transaction.atomic
def conversation_update(*, conversation: Conversation, **fields: Any) -> Conversation:
    """Change settings; they apply to the next reply. Nothing is saved when invalid."""
    unknown = set(fields) - set(SETTING_FIELDS)
    if unknown:
        raise TypeError(f"unknown fields: {sorted(unknown)}")
    candidate = Conversation.objects.get(pk=conversation.pk)
    for name, value in fields.items():
        setattr(candidate, name, value)
    _validate(candidate)
    candidate.save(update_fields=[*fields, "updated_at"])
    for name, value in fields.items():
        setattr(conversation, name, value)
    conversation.updated_at = candidate.updated_at
    return conversation


def conversation_rename(*, conversation: Conversation, title: str) -> Conversation:
    """A new title; an empty one is refused."""
    title = " ".join((title or "").split())
    if not text_is_storable(title):
        raise ValidationError({"title": ValidationError(UNSTORABLE_MESSAGE, code="unstorable")})
    if not title:
        raise ValidationError({"title": "A title cannot be empty."})
    if len(title) > 200:
        raise ValidationError({"title": "Titles are at most 200 characters."})
    conversation.title = title
    conversation.save(update_fields=["title", "updated_at"])
    return conversation


def conversation_delete(*, conversation: Conversation) -> None:
    """Delete a conversation with all its turns."""
    conversation.delete()


def conversation_pin(*, conversation: Conversation, pinned: bool) -> Conversation:
    """Pin a conversation to the top of the sidebar, or unpin it (not activity)."""
    conversation.pinned_at = timezone.now() if pinned else None
    Conversation.objects.filter(pk=conversation.pk).update(pinned_at=conversation.pinned_at)
    return conversation


def conversation_archive(*, conversation: Conversation, archived: bool) -> Conversation:
    """Archive a conversation (it leaves the sidebar; search finds it), or bring it back.
    Archiving also unpins it."""
    conversation.archived_at = timezone.now() if archived else None
    fields: dict[str, Any] = {"archived_at": conversation.archived_at}
    if archived:
        conversation.pinned_at = fields["pinned_at"] = None
    Conversation.objects.filter(pk=conversation.pk).update(**fields)
    return conversation
