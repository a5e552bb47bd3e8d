"""Conversation review: who may look at which conversations, the record of every look,
and the exports reviewers and owners take away."""

import json
from collections.abc import Iterable
from typing import Any

from django.db.models import QuerySet

from .models import Conversation, Membership, ReviewAccess, Turn
from .selectors import turn_cost, turns_in_order

EVERYTHING = "everything"


def review_scope(user: Any) -> str | int | None:
    """What a person may review: `EVERYTHING` (superusers and holders of the `review`
    permission), their team's id (team admins), or None (anyone else)."""
    if not (user.is_authenticated and user.is_active):
        return None
    if user.is_superuser or user.has_perm("conversations.review_conversation"):
        return EVERYTHING
    membership = Membership.objects.filter(user=user, role=Membership.Role.ADMIN).first()
    return membership.team_id if membership else None


def reviewable_by(user: Any) -> QuerySet[Conversation]:
    """The conversations `user` may review, per `review_scope`."""
    scope = review_scope(user)
    if scope is None:
        return Conversation.objects.none()
    if scope == EVERYTHING:
        return Conversation.objects.all()
    return Conversation.objects.filter(owner__membership__team_id=scope)


def may_review(user: Any) -> bool:
    return review_scope(user) is not None


def review_record(*, reviewer: Any, conversation: Conversation, reason: str = "") -> ReviewAccess:
    """Every look is on the record, and its owner sees it."""
    return ReviewAccess.objects.create(
        reviewer=reviewer, conversation=conversation, reason=reason.strip()[:300]
    )


def _turn_data(turn: Turn) -> dict[str, Any]:
    data: dict[str, Any] = {
        "position": turn.position,
        "role": turn.role,
        "content": turn.content,
        "created_at": turn.created_at.isoformat(),
    }
    if turn.role == Turn.Role.ASSISTANT:
        billed = turn_cost(turn)
        data.update(
            state=turn.state,
            error_message=turn.error_message,
            model=turn.model,
            system_prompt=turn.system_prompt,
            temperature=turn.temperature,
            top_p=turn.top_p,
            top_k=turn.top_k,
            max_tokens=turn.max_tokens,
            input_tokens=turn.input_tokens,
            output_tokens=turn.output_tokens,
            # What the ledger billed (None: nothing was), not a sum at today's prices.
            cost_usd=str(billed.usd) if billed else None,
            cost_estimated=billed.estimated if billed else False,
            stop_reason=turn.stop_reason,
            gateway_log_id=turn.gateway_log_id,
            finished_at=turn.finished_at.isoformat() if turn.finished_at else None,
        )
    return data


def conversation_as_dict(conversation: Conversation) -> dict[str, Any]:
    return {
        "id": str(conversation.pk),
        "title": conversation.display_title,
        "owner": conversation.owner.get_username(),
        "model": conversation.model,
        "system_prompt": conversation.system_prompt,
        "created_at": conversation.created_at.isoformat(),
        "updated_at": conversation.updated_at.isoformat(),
        "turns": [_turn_data(turn) for turn in turns_in_order(conversation=conversation)],
    }


def conversation_as_markdown(conversation: Conversation) -> str:
    lines = [f"# {conversation.display_title}", ""]
    lines.append(f"Owner: {conversation.owner.get_username()} · model: {conversation.model}")
    if conversation.system_prompt:
        lines += ["", f"System prompt: {conversation.system_prompt}"]
    for turn in turns_in_order(conversation=conversation):
        who = "You" if turn.role == Turn.Role.USER else f"Assistant ({turn.model}, {turn.state})"
        lines += ["", f"## {who}", "", turn.content]
        if turn.error_message:
            lines += ["", f"> {turn.error_message}"]
        billed = turn_cost(turn)
        if billed:
            lines += ["", f"Cost: {billed}"]
    return "\n".join(lines) + "\n"


def conversations_as_jsonl(conversations: Iterable[Conversation]) -> Iterable[str]:
    for conversation in conversations:
        yield json.dumps(conversation_as_dict(conversation), ensure_ascii=False) + "\n"
