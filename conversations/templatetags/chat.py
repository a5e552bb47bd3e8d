from typing import Any

from django import template
from django.conf import settings
from django.utils.safestring import SafeString, mark_safe

from ..rendering import render_markdown, render_partial_markdown
from ..selectors import TurnVersions, turn_cost, turn_versions

register = template.Library()


@register.filter
def markdown(text: str) -> SafeString:
    """Assistant text as sanitised HTML."""
    return mark_safe(render_markdown(text or ""))  # noqa: S308 - sanitised by nh3


@register.filter
def partial_markdown(text: str) -> SafeString:
    """A reply still being written, as its page shows it while it streams."""
    return mark_safe(render_partial_markdown(text or ""))  # noqa: S308 - sanitised by nh3


@register.filter
def model_label(model_id: str) -> str:
    spec = settings.CHAT_MODELS.get(model_id)
    return str(spec["label"]) if spec else model_id


@register.filter
def cost(turn: Any) -> str:
    """What the ledger billed for a reply, e.g. "$0.0042" or "$0.0042 (estimated)"; ""
    when nothing was billed. The turn comes from `turns_with_cost` (no query here)."""
    billed = turn_cost(turn)
    return str(billed) if billed else ""


@register.filter
def versions(turn: Any) -> TurnVersions | None:
    """Where a turn stands among its versions (None: it has no other); the turn comes
    from `turns_shown` (no query here)."""
    return turn_versions(turn)


@register.simple_tag
def chat_limit(name: str) -> int:
    """A socket limit the page enforces before sending (`max_frame_bytes`, `max_message_chars`)."""
    return int({"max_frame_bytes": settings.CHAT_MAX_FRAME_BYTES,
                "max_message_chars": settings.CHAT_MAX_MESSAGE_CHARS}[name])  # fmt: skip
