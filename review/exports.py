"""The exports reviewers and owners take away: JSON, Markdown, JSON Lines.

Every version of every turn is in them: JSON has each turn's `parent` (the tree) and
whether it is `on_path`; Markdown writes the active path, then the other versions.
"""

import json
from collections.abc import Iterable
from typing import Any

from conversations.models import Conversation, Turn
from conversations.selectors import turn_cost, turn_versions, turns_in_tree_order


def _turn_data(turn: Turn) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": turn.pk,
        "parent": turn.parent_id,
        "on_path": turn.on_path,
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
        "turns": [_turn_data(turn) for turn in turns_in_tree_order(conversation=conversation)],
    }


def _turn_markdown(turn: Turn, *, level: str, after: str = "") -> list[str]:
    who = "You" if turn.role == Turn.Role.USER else f"Assistant ({turn.model}, {turn.state})"
    versions = turn_versions(turn)
    if versions:
        who += f", version {versions.number} of {versions.count}"
    lines = ["", f"{level} {who}{after}", "", turn.content]
    if turn.error_message:
        lines += ["", f"> {turn.error_message}"]
    billed = turn_cost(turn)
    if billed:
        lines += ["", f"Cost: {billed}"]
    return lines


def _excerpt(text: str, length: int = 60) -> str:
    line = " ".join(text.split())
    return line if len(line) <= length else line[: length - 1] + "…"


def conversation_as_markdown(conversation: Conversation) -> str:
    """The active path, then every other version (depth first), each saying what it
    follows."""
    lines = [f"# {conversation.display_title}", ""]
    lines.append(f"Owner: {conversation.owner.get_username()} · model: {conversation.model}")
    if conversation.system_prompt:
        lines += ["", f"System prompt: {conversation.system_prompt}"]
    turns = turns_in_tree_order(conversation=conversation)
    by_id = {turn.pk: turn for turn in turns}
    for turn in turns:
        if turn.on_path:
            lines += _turn_markdown(turn, level="##")
    others = [turn for turn in turns if not turn.on_path]
    if others:
        lines += ["", "## Other versions"]
    for turn in others:
        parent = by_id.get(turn.parent_id)  # type: ignore[arg-type]
        follows = f" · after “{_excerpt(parent.content)}”" if parent else " · the first message"
        lines += _turn_markdown(turn, level="###", after=follows)
    return "\n".join(lines) + "\n"


def conversations_as_jsonl(conversations: Iterable[Conversation]) -> Iterable[str]:
    for conversation in conversations:
        yield json.dumps(conversation_as_dict(conversation), ensure_ascii=False) + "\n"
