"""Reads, always scoped to the person asking."""

import uuid
from typing import Any

from django.core.exceptions import ValidationError
from django.db.models import QuerySet

from .models import Conversation, Turn


def conversation_list_for(*, user: Any) -> QuerySet[Conversation]:
    """The user's conversations, newest activity first."""
    if not user.is_authenticated:
        return Conversation.objects.none()
    return Conversation.objects.filter(owner=user).order_by("-updated_at")


def conversation_get_for(*, user: Any, conversation_id: uuid.UUID | str) -> Conversation | None:
    """One conversation if `user` may see it, else None (callers answer 404, never 403)."""
    try:
        return conversation_list_for(user=user).get(pk=conversation_id)
    except (Conversation.DoesNotExist, ValueError, ValidationError):
        return None


def turns_recent(*, conversation: Conversation, limit: int) -> list[Turn]:
    """The latest `limit` turns, oldest first."""
    turns = list(conversation.turns.order_by("-position")[:limit])
    turns.reverse()
    return turns


def turn_active(*, conversation_id: uuid.UUID | str) -> Turn | None:
    """The reply being written in this conversation, if any."""
    return (
        Turn.objects.filter(conversation_id=conversation_id, state__in=Turn.ACTIVE_STATES)
        .only("id", "conversation_id", "state", "content", "position")
        .first()
    )


def reply_history(*, turn: Turn) -> list[dict[str, str]]:
    """The messages that lead up to `turn`, alternating user/assistant, oldest first.

    Assistant turns with no text (failed before the first token) are left out, and
    neighbouring messages of one role are joined, so the upstream always gets a
    well-formed alternation that starts and ends with the user.
    """
    rows = (
        Turn.objects.filter(conversation_id=turn.conversation_id, position__lt=turn.position)
        .order_by("position")
        .values_list("role", "content")
    )
    messages: list[dict[str, str]] = []
    for role, content in rows:
        if not content:
            continue
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] += "\n\n" + content
        else:
            messages.append({"role": role, "content": content})
    while messages and messages[0]["role"] != "user":
        messages.pop(0)
    return messages
