"""Turns: storing a message, and the one place that moves a reply between states."""

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from ..gateway import ChatRequest, model_available
from ..models import Conversation, Turn
from ..selectors import reply_history

TITLE_LENGTH = 60


class ReplyInProgress(Exception):
    """A reply is still being written in this conversation."""

    message = "A reply is still being written. Wait for it, or press Stop."


def _title_from(text: str) -> str:
    line = " ".join(text.split())
    if len(line) <= TITLE_LENGTH:
        return line
    cut = line[:TITLE_LENGTH].rsplit(" ", 1)[0] or line[:TITLE_LENGTH]
    return cut + "…"


def message_send(*, conversation: Conversation, text: str) -> tuple[Turn, Turn]:
    """Store the user's message, then a pending reply that records the settings it uses.

    Refused, with nothing stored, when the text is empty or too long, the model
    is not available, or a reply is already being written.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValidationError({"message": "Type a message first."})
    if len(text) > settings.CHAT_MAX_MESSAGE_CHARS:
        raise ValidationError(
            {"message": f"Messages are limited to {settings.CHAT_MAX_MESSAGE_CHARS} characters."}
        )
    if not model_available(conversation.model):
        raise ValidationError({"model": "This conversation's model is not configured here."})
    try:
        with transaction.atomic():
            # Lock the conversation row (PostgreSQL); SQLite's IMMEDIATE mode locks the file.
            locked = Conversation.objects.select_for_update().get(pk=conversation.pk)
            if Turn.objects.filter(conversation=locked, state__in=Turn.ACTIVE_STATES).exists():
                raise ReplyInProgress
            last = locked.turns.aggregate(last=Max("position"))["last"] or 0
            user_turn = Turn.objects.create(
                conversation=locked,
                position=last + 1,
                role=Turn.Role.USER,
                content=text,
                state=Turn.State.COMPLETE,
            )
            reply = Turn.objects.create(
                conversation=locked,
                position=last + 2,
                role=Turn.Role.ASSISTANT,
                state=Turn.State.PENDING,
                model=locked.model,
                system_prompt=locked.system_prompt,
                temperature=locked.temperature,
                top_p=None if locked.temperature is not None else locked.top_p,
                top_k=locked.top_k,
                max_tokens=locked.max_tokens,
            )
            update = ["updated_at"]
            if not locked.title:
                locked.title = _title_from(text)
                update.append("title")
            locked.save(update_fields=update)
    except IntegrityError as exc:
        # Two sends raced: the one-active-reply constraint let only one through.
        raise ReplyInProgress from exc
    conversation.title, conversation.updated_at = locked.title, locked.updated_at
    return user_turn, reply


def reply_request(*, turn: Turn) -> ChatRequest:
    """The upstream request for a reply: its history and the settings stored on it."""
    assert turn.max_tokens is not None
    return ChatRequest(
        model=turn.model,
        messages=reply_history(turn=turn),
        system=turn.system_prompt,
        temperature=turn.temperature,
        top_p=turn.top_p,
        top_k=turn.top_k,
        max_tokens=turn.max_tokens,
        metadata={"conversation": str(turn.conversation_id), "turn": str(turn.pk)},
    )


def reply_start(*, turn_id: int) -> bool:
    """pending → streaming. False when the reply was already ended elsewhere."""
    now = timezone.now()
    return bool(
        Turn.objects.filter(pk=turn_id, state=Turn.State.PENDING).update(
            state=Turn.State.STREAMING, started_at=now, heartbeat_at=now
        )
    )


def turn_checkpoint(*, turn_id: int, content: str) -> bool:
    """Save the text so far with a heartbeat. False when the reply is no longer streaming."""
    return bool(
        Turn.objects.filter(pk=turn_id, state=Turn.State.STREAMING).update(
            content=content, heartbeat_at=timezone.now()
        )
    )


@dataclass(frozen=True)
class ReplyOutcome:
    state: str
    content: str
    error_message: str = ""
    stop_reason: str = ""
    input_tokens: int | None = None
    output_tokens: int | None = None
    gateway_log_id: str = ""


FINAL_STATES = {Turn.State.COMPLETE, Turn.State.ERROR, Turn.State.CANCELLED, Turn.State.INTERRUPTED}


def reply_finish(*, turn_id: int, outcome: ReplyOutcome) -> Turn | None:
    """Move an active reply to its final state, once. None when it had already ended."""
    if outcome.state not in FINAL_STATES:
        raise ValueError(f"not a final state: {outcome.state}")
    now = timezone.now()
    fields: dict[str, Any] = {
        "state": outcome.state,
        "content": outcome.content,
        "error_message": outcome.error_message[:500],
        "stop_reason": outcome.stop_reason,
        "input_tokens": outcome.input_tokens,
        "output_tokens": outcome.output_tokens,
        "gateway_log_id": outcome.gateway_log_id[:100],
        "finished_at": now,
        "heartbeat_at": now,
    }
    updated = Turn.objects.filter(pk=turn_id, state__in=Turn.ACTIVE_STATES).update(**fields)
    if not updated:
        return None
    turn = Turn.objects.select_related("conversation").get(pk=turn_id)
    Conversation.objects.filter(pk=turn.conversation_id).update(updated_at=now)
    return turn
