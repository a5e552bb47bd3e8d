"""Beginning a reply: the one way a send, a retry or an edit starts the model.

Every place that starts a reply (the chat socket today; the API and branches
later) calls `reply_begin` once, in the database thread, and gets everything it
needs back: the turns to show, the reply (stored streaming), its upstream
request and the person's budget warnings.
"""

from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from django.db import transaction

from ..actors import Actor
from ..gateway import ChatRequest
from ..models import Conversation, Turn
from .conversations import conversation_create
from .turns import (
    NotEditable,
    Stored,
    check_message_text,
    reply_request,
    store_edit,
    store_retry,
    store_send,
    title_from,
)


@dataclass(frozen=True, slots=True)
class Send:
    """A new message."""

    text: str


@dataclass(frozen=True, slots=True)
class Retry:
    """The last reply written again: in its place after a failure (Retry), as a new
    version beside it after success (Regenerate)."""

    turn_id: int


@dataclass(frozen=True, slots=True)
class Edit:
    """A new version of a user message, sent: it and its reply take the old version's
    place on the active path; the old one and what followed it are kept."""

    turn_id: int
    text: str


@dataclass(frozen=True, slots=True)
class Transcript:
    """A new conversation's earlier messages ((role, text), oldest first: the API's
    request history) and the message to answer; stored together or not at all."""

    earlier: tuple[tuple[str, str], ...]
    text: str


ReplyAction = Send | Retry | Edit | Transcript


@dataclass(frozen=True, slots=True)
class ReplyBegun:
    conversation: Conversation  # as stored now
    added: list[Turn]  # new turns for the pages to append, oldest first
    changed: list[Turn]  # turns the pages show, to replace
    removed: list[int]  # turns the pages show, to drop (off the active path, kept)
    reply: Turn  # stored streaming; its runner is launched by the caller
    request: ChatRequest
    warnings: list[str]


def _store(*, actor: Actor, conversation: Conversation, action: ReplyAction) -> Stored:
    match action:
        case Send(text=text):
            return store_send(conversation=conversation, text=text, actor=actor, started=True)
        case Retry(turn_id=turn_id):
            return store_retry(
                conversation=conversation, turn_id=turn_id, actor=actor, started=True
            )
        case Edit(turn_id=turn_id, text=text):
            return store_edit(
                conversation=conversation,
                turn_id=turn_id,
                text=text,
                actor=actor,
                started=True,
            )
        case Transcript(earlier=earlier, text=text):
            return _store_transcript(
                actor=actor, conversation=conversation, earlier=earlier, text=text
            )


def _store_transcript(
    *, actor: Actor, conversation: Conversation, earlier: tuple[tuple[str, str], ...], text: str
) -> Stored:
    """The earlier turns first, then a send: its history and budget hold include them."""
    for _, content in earlier:
        check_message_text(content)
    with transaction.atomic():
        if conversation.turns.exists():
            raise NotEditable
        made = Turn.objects.bulk_create(
            Turn(conversation=conversation, position=number, role=role, content=content)
            for number, (role, content) in enumerate(earlier, start=1)
        )
        for parent, turn in pairwise(made):  # each follows the one before
            turn.parent = parent
        Turn.objects.bulk_update(made[1:], ["parent"])
        first = next((content for role, content in earlier if role == Turn.Role.USER), text)
        Conversation.objects.filter(pk=conversation.pk, title="").update(title=title_from(first))
        stored = store_send(conversation=conversation, text=text, actor=actor, started=True)
    return stored


def reply_begin(*, actor: Actor, conversation: Conversation, action: ReplyAction) -> ReplyBegun:
    """Store what `action` asks for and start its reply, or refuse with nothing stored
    (`SendRefused`, `ValidationError`).

    `actor` is the conversation's owner, as they are now (`actor_for_socket`).
    """
    stored = _store(actor=actor, conversation=conversation, action=action)
    return ReplyBegun(
        conversation=stored.conversation,
        added=stored.added,
        changed=stored.changed,
        removed=stored.removed,
        reply=stored.reply,
        request=reply_request(turn=stored.reply, history=stored.history),
        warnings=stored.warnings,
    )


@transaction.atomic
def conversation_start(*, actor: Actor, text: str, **fields: Any) -> ReplyBegun:
    """A new conversation (settings as for `conversation_create`), stored with its first
    message and that message's reply begun; refused as a whole, leaving nothing behind."""
    conversation = conversation_create(owner=actor.user, **fields)
    return reply_begin(actor=actor, conversation=conversation, action=Send(text))
