from django import template
from django.conf import settings
from django.utils.safestring import SafeString, mark_safe

from ..rendering import render_markdown

register = template.Library()


@register.filter
def markdown(text: str) -> SafeString:
    """Assistant text as sanitised HTML."""
    return mark_safe(render_markdown(text or ""))  # noqa: S308 - sanitised by nh3


@register.filter
def model_label(model_id: str) -> str:
    spec = settings.CHAT_MODELS.get(model_id)
    return str(spec["label"]) if spec else model_id
