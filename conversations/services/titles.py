"""A conversation's title, written by the cheapest configured model after its first
reply: counted against the rate limit and charged in the ledger like a reply, and
never at the cost of the chat (when anything stands in the way, the first
message's words stay the title)."""

import re
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction

from billing.budgets import prompt_bound, title_charge, title_settle
from billing.models import UpstreamCall

from ..actors import Actor, actor_for_user
from ..gateway import ChatRequest, Response, model_available
from ..models import Conversation, Turn
from ..text import text_is_storable
from .turns import call_counted, title_from

TITLE_MAX_TOKENS = 24
TITLE_MAX_CHARS = 80
# Asked for two to six; a longer answer is a sentence, not a title (small models ramble).
TITLE_MAX_WORDS = 8
# Of the first message and of the reply, the model reads at most this much.
TITLE_SOURCE_CHARS = 2000
TITLE_SYSTEM = (
    "You write titles for chat conversations. Answer with one title of two to six "
    "words that says what the conversation below is about, in its language: no "
    "quotes, no Markdown, no full stop, nothing else."
)
_PREFIX = re.compile(r"^(?:#+|[-*>•]+|title\s*:)\s*", re.IGNORECASE)
# Quotes and emphasis around a title, and punctuation after it (escapes: curly single
# quotes and dashes look like ASCII ones).
_WRAPPERS = "\"'`*_“”\u2018\u2019«»„「」『』"
_TRAILING = ".,;:!…·-\u2013\u2014"


@dataclass(frozen=True)
class TitleCall:
    """A title call that may go out: counted, charged, and its request built."""

    conversation_id: uuid.UUID
    owner_id: int
    fallback: str  # the title from the first message, which the model's replaces
    request: ChatRequest
    spend_id: int


def title_clean(text: str) -> str:
    """A model's answer as a title: its first line without quotes, Markdown or trailing
    punctuation, at most TITLE_MAX_CHARS characters; empty when nothing is left, or when
    it runs past TITLE_MAX_WORDS words (a sentence, not a title)."""
    line = next((line for line in text.splitlines() if line.strip()), "")
    line = "".join(ch if ch.isprintable() else " " for ch in line)
    line = " ".join(line.split())
    while True:
        before = line
        line = _PREFIX.sub("", line).strip(_WRAPPERS + " ").rstrip(_TRAILING + " ")
        if line == before:
            break
    if len(line.split()) > TITLE_MAX_WORDS:
        return ""
    if len(line) > TITLE_MAX_CHARS:
        cut = line[: TITLE_MAX_CHARS + 1].rsplit(" ", 1)[0]
        line = (cut if len(cut) <= TITLE_MAX_CHARS else line[:TITLE_MAX_CHARS]).rstrip(
            _TRAILING + _WRAPPERS + " "
        )
    return line if text_is_storable(line) else ""


def title_model(actor: Actor) -> str | None:
    """The cheapest model this deployment offers the person: through Cloudflare when it
    is configured (Claude Haiku 4.5), else the bundled one."""
    usable = [
        (model, spec)
        for model, spec in settings.CHAT_MODELS.items()
        if model_available(model) and actor.may_use(model)
    ]
    remote = [(model, spec) for model, spec in usable if spec["provider"] != "local"]
    candidates = remote or usable
    if not candidates:
        return None
    return min(candidates, key=lambda item: (sum(item[1]["price_per_million"]), item[0]))[0]


def title_request(*, model: str, conversation_id: uuid.UUID, first: str, reply: str) -> ChatRequest:
    text = (
        f"First message:\n{first[:TITLE_SOURCE_CHARS]}\n\n"
        f"Reply:\n{reply[:TITLE_SOURCE_CHARS]}\n\nThe title:"
    )
    return ChatRequest(
        model=model,
        messages=[{"role": "user", "content": text}],
        system=TITLE_SYSTEM,
        max_tokens=TITLE_MAX_TOKENS,
        metadata={"conversation": str(conversation_id), "purpose": "title"},
    )


def title_begin(*, turn_id: int) -> TitleCall | None:
    """After a reply completed: when it is its conversation's first and the title is
    still the first message's, count the title call and charge its worst-case cost.

    None, with nothing stored, when no title call is due: titles are off, an API
    conversation, a title given or changed by the person, no model, the person at
    their rate limit, or a budget that does not cover the call.
    """
    if not settings.CHAT_TITLES:
        return None
    reply = (
        Turn.objects.select_related("conversation__owner", "parent")
        .filter(pk=turn_id, role=Turn.Role.ASSISTANT, state=Turn.State.COMPLETE)
        .first()
    )
    if reply is None:
        return None
    conversation = reply.conversation
    # The conversation's first reply answers a message that follows nothing (whichever
    # version of it the path shows).
    first = reply.parent
    if first is None or first.parent_id is not None or first.role != Turn.Role.USER:
        return None
    fallback = title_from(first.content)
    if conversation.title != fallback:
        return None
    if Conversation.objects.filter(pk=conversation.pk, api_origin__isnull=False).exists():
        return None  # not in the sidebar: its caller names it
    actor = actor_for_user(conversation.owner)
    model = title_model(actor)
    if model is None:
        return None
    request = title_request(
        model=model, conversation_id=conversation.pk, first=first.content, reply=reply.content
    )
    prompt_tokens = prompt_bound(
        system=request.system, messages=(m["content"] for m in request.messages)
    )
    with transaction.atomic():
        if not call_counted(conversation.owner_id, UpstreamCall.Kind.TITLE):
            return None
        spend = title_charge(
            actor=actor,
            turn=reply,
            model=model,
            prompt_tokens=prompt_tokens,
            max_tokens=TITLE_MAX_TOKENS,
        )
        if spend is None:
            transaction.set_rollback(True)  # no call goes out: none is counted
            return None
    return TitleCall(conversation.pk, conversation.owner_id, fallback, request, spend.pk)


def title_finish(*, call: TitleCall, response: Response) -> str | None:
    """Settle the call's cost, and store its title unless the conversation was renamed
    meanwhile (the person's title wins). The title stored, or None."""
    title = title_clean(response.text) if response.finished and response.error is None else ""
    with transaction.atomic():
        title_settle(
            spend_id=call.spend_id,
            input_tokens=response.usage.input_tokens,
            output_tokens=response.usage.output_tokens,
            text=response.text,
        )
        if not title or title == call.fallback:
            return None
        # `update`, not `save`: a title does not move the conversation in the sidebar.
        written = Conversation.objects.filter(pk=call.conversation_id, title=call.fallback).update(
            title=title
        )
    return title if written else None
