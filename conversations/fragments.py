"""Every message the chat socket sends, rendered from templates: one place.

Each is an HTML fragment for htmx's out-of-band swaps (templates/conversations/
partials/); nothing here writes HTML itself.
"""

import re
from collections.abc import Sequence
from functools import cache
from typing import Any

from django.template.loader import render_to_string
from django.utils.html import conditional_escape
from django.utils.safestring import mark_safe

from .models import Conversation, Turn
from .selectors import SidebarPage

_PARTIALS = "conversations/partials/"


def _render(name: str, context: dict[str, Any]) -> str:
    return render_to_string(_PARTIALS + name, context)


_SLOT = re.compile("\x00slot([0-9]+)\x00")


@cache
def _skeleton(name: str, fixed: tuple[tuple[str, Any], ...], slots: tuple[str, ...]) -> list[str]:
    """A template rendered once with markers in place of the `slots` variables, cut at
    them: literal, slot index, literal, … For the pieces a reply sends many times a
    second, where the template engine's own cost would show. The slot variables may only
    be printed (`{{ name }}`) in the template, never tested or filtered."""
    markers = {slot: mark_safe(f"\x00slot{i}\x00") for i, slot in enumerate(slots)}  # noqa: S308
    return _SLOT.split(_render(name, dict(fixed) | markers))


def _fill(skeleton: list[str], *values: Any) -> str:
    """The skeleton with each slot's value, escaped as the template would (safe strings
    as they are)."""
    parts = skeleton[:]
    for at in range(1, len(parts), 2):
        parts[at] = conditional_escape(values[int(parts[at])])
    return "".join(parts)


def error_fragment(message: str) -> str:
    """An error under the message box, for this socket only."""
    return _render("composer_status.html", {"error": message})


def ack_fragment(warnings: list[str]) -> str:
    """The message was stored: the page clears its box; budget warnings, if any."""
    return _render("composer_status.html", {"ack": True, "warnings": warnings})


def text_fragment(turn_id: int, text: str, *, replace: bool) -> str:
    """Escaped text for a streaming reply: appended, or replacing what the page has."""
    skeleton = _skeleton("text_piece.html", (("replace", replace),), ("turn_id", "text"))
    return _fill(skeleton, turn_id, text)


def stream_view_fragment(turn_id: int, blocks: str, tail: str | None, *, whole: bool) -> str:
    """A streaming reply's rendered Markdown: finished blocks appended and the tail
    replaced, or (`whole`) the view replaced. `blocks` and `tail` are sanitised HTML
    (conversations.rendering)."""
    has_tail = tail is not None
    fixed = (("whole", whole), ("oob", True), ("has_blocks", bool(blocks)), ("has_tail", has_tail))
    skeleton = _skeleton("stream_view.html", fixed, ("turn_id", "blocks", "tail"))
    return _fill(skeleton, turn_id, mark_safe(blocks), mark_safe(tail or ""))  # noqa: S308 - sanitised by nh3


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


def path_fragment(conversation_id: Any) -> str:
    """Another version is shown: the page loads the active path again over HTTP (it may
    be longer than a frame carries) and then syncs its socket."""
    return _render("path_changed.html", {"conversation_id": conversation_id, "oob": True})


def frame_too_large_fragment() -> str:
    return _render("frame_too_large.html", {})


def title_fragment(*, title: str, current: bool, sidebar: SidebarPage, sidebar_current: str) -> str:
    """A conversation's new title: the header of the page that shows it (`current`),
    and the sidebar's list of conversations read again."""
    context = {
        "title": title,
        "current": current,
        "sidebar": sidebar,
        "sidebar_current": sidebar_current,
        "sidebar_oob": True,
    }
    return _render("title_update.html", context)
