"""Where requests leave the building: one provider interface, several providers."""

from .base import Provider, model_available, provider_for, provider_override
from .events import ChatRequest, Event, Finished, ReplyError, ResponseStarted, TextDelta, Usage
from .response import Response

__all__ = [
    "ChatRequest",
    "Event",
    "Finished",
    "Provider",
    "ReplyError",
    "Response",
    "ResponseStarted",
    "TextDelta",
    "Usage",
    "model_available",
    "provider_for",
    "provider_override",
]
