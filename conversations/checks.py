"""System checks: settings that would break a promise are refused at start."""

from typing import Any

from django.conf import settings
from django.core.checks import Error, register

# daphne closes a socket whose message passes this size, with no word to the page;
# the app's own limit must sit below it so an oversized frame gets an answer.
TRANSPORT_MAX_MESSAGE_BYTES = 1024 * 1024


@register()
def check_socket_limits(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    errors = []
    if settings.CHAT_MAX_FRAME_BYTES >= TRANSPORT_MAX_MESSAGE_BYTES:
        errors.append(
            Error(
                f"CHAT_MAX_FRAME_BYTES ({settings.CHAT_MAX_FRAME_BYTES}) must be below the "
                f"server's WebSocket message limit ({TRANSPORT_MAX_MESSAGE_BYTES} bytes).",
                id="conversations.E001",
            )
        )
    return errors
