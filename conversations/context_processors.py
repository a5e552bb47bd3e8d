"""What every signed-in page's sidebar shows, read only when a page renders it."""

from typing import Any

from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject

from teams.sharing import conversations_shared_with

from .selectors import sidebar_page_for

SHARED_IN_SIDEBAR = 20


def sidebar(request: HttpRequest) -> dict[str, Any]:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    match = request.resolver_match
    current = match.kwargs.get("conversation_id") if match else None
    return {
        "sidebar": SimpleLazyObject(lambda: sidebar_page_for(user=user)),
        "sidebar_shared": SimpleLazyObject(
            lambda: list(conversations_shared_with(user=user)[:SHARED_IN_SIDEBAR])
        ),
        "sidebar_current": str(current) if current else "",
    }
