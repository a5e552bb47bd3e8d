"""Writes: every change to conversations and turns goes through here."""

from .conversations import conversation_create, conversation_update
from .turns import (
    INTERRUPTED_MESSAGE,
    NotRetryable,
    ReplyInProgress,
    ReplyOutcome,
    SendRateLimited,
    SendRefused,
    message_send,
    reply_finish,
    reply_request,
    reply_retry,
    reply_start,
    reply_stop_request,
    reply_sweep_stale,
    turn_checkpoint,
)

__all__ = [
    "INTERRUPTED_MESSAGE",
    "NotRetryable",
    "ReplyInProgress",
    "ReplyOutcome",
    "SendRateLimited",
    "SendRefused",
    "conversation_create",
    "conversation_update",
    "message_send",
    "reply_finish",
    "reply_request",
    "reply_retry",
    "reply_start",
    "reply_stop_request",
    "reply_sweep_stale",
    "turn_checkpoint",
]
