"""Every message the chat socket sends, rendered from templates: one place.

Each is an HTML fragment for htmx's out-of-band swaps (templates/conversations/
partials/); nothing here writes HTML itself.
"""

from collections.abc import Sequence
from typing import Any

from django.template.loader import render_to_string
from django.utils.safestring import mark_safe

from .models import Conversation, Turn

_PARTIALS = "conversations/partials/"


def _render(name: str, context: dict[str, Any]) -> str:
    return render_to_string(_PARTIALS + name, context)


def error_fragment(message: str) -> str:
    """An error under the message box, for this socket only."""
    return _render("composer_status.html", {"error": message})


def ack_fragment(warnings: list[str]) -> str:
    """The message was stored: the page clears its box; budget warnings, if any."""
    return _render("composer_status.html", {"ack": True, "warnings": warnings})


def text_fragment(turn_id: int, text: str, *, replace: bool) -> str:
    """Escaped text for a streaming reply: appended, or replacing what the page has."""
    return _render("text_piece.html", {"turn_id": turn_id, "text": text, "replace": replace})


def stream_view_fragment(turn_id: int, blocks: str, tail: str | None, *, whole: bool) -> str:
    """A streaming reply's rendered Markdown: finished blocks appended and the tail
    replaced, or (`whole`) the view replaced. `blocks` and `tail` are sanitised HTML
    (conversations.rendering)."""
    context = {
        "turn_id": turn_id,
        "blocks": mark_safe(blocks),  # noqa: S308 - sanitised by nh3
        "tail": None if tail is None else mark_safe(tail),  # noqa: S308 - sanitised by nh3
        "whole": whole,
        "oob": True,
    }
    return _render("stream_view.html", context)


def turn_fragment(turn: Turn, *, oob: bool) -> str:
    return _render("turn.html", {"turn": turn, "oob": oob})


def reply_controls_fragment(*, active_turn: Turn | None) -> str:
    """Stop while a reply is written; nothing otherwise."""
    return _render("reply_controls.html", {"active_turn": active_turn, "oob": True})


def turns_fragment(
    *,
    conversation: Conversation,
    added: Sequence[Turn] = (),
    changed: Sequence[Turn] = (),
    removed: Sequence[int] = (),
    active_turn: Turn | None = None,
) -> str:
    """Turns dropped, replaced and appended, then the reply controls."""
    parts = []
    if removed:
        parts.append(_render("turns_removed.html", {"removed": removed}))
    parts += [turn_fragment(turn, oob=True) for turn in changed]
    if added:
        parts.append(_render("turns_append.html", {"turns": added, "conversation": conversation}))
    parts.append(reply_controls_fragment(active_turn=active_turn))
    return "".join(parts)


def final_fragment(turn: Turn) -> str:
    """A reply's final state, no Stop button, and its end said once to screen readers."""
    return (
        turn_fragment(turn, oob=True)
        + reply_controls_fragment(active_turn=None)
        + _render("reply_status.html", {"state": turn.state})
    )


def deferred_turn_fragment(*, conversation_id: Any, turn_id: int, state: str) -> str:
    """A reply whose rendering is too large for a frame: its state now, its text over HTTP."""
    return _render(
        "turn_deferred.html",
        {"conversation_id": conversation_id, "turn_id": turn_id, "state": state},
    ) + reply_controls_fragment(active_turn=None)


def frame_too_large_fragment() -> str:
    return _render("frame_too_large.html", {})
