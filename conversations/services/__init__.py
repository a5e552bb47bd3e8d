"""Writes: every change to conversations and turns goes through here."""

from .conversations import conversation_create, conversation_update
from .turns import (
    ReplyInProgress,
    ReplyOutcome,
    message_send,
    reply_finish,
    reply_request,
    reply_start,
    turn_checkpoint,
)

__all__ = [
    "ReplyInProgress",
    "ReplyOutcome",
    "conversation_create",
    "conversation_update",
    "message_send",
    "reply_finish",
    "reply_request",
    "reply_start",
    "turn_checkpoint",
]
