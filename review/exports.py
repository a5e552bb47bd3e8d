"""The exports reviewers and owners take away: JSON, Markdown, JSON Lines."""

import json
from collections.abc import Iterable
from typing import Any

from conversations.models import Conversation, Turn
from conversations.selectors import turn_cost, turns_in_order


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
