"""Who may review which conversations, and the record of every look."""

from typing import Any

from django.db.models import QuerySet

from conversations.actors import actor_for_user
from conversations.models import Conversation

from .models import ReviewAccess

EVERYTHING = "everything"


def review_scope(user: Any) -> str | int | None:
    """What a person may review: `EVERYTHING` (superusers and holders of the `review`
    permission), their team's id (team admins), or None (anyone else)."""
    if not (user.is_authenticated and user.is_active):
        return None
    if user.is_superuser or user.has_perm("conversations.review_conversation"):
        return EVERYTHING
    return actor_for_user(user).team_admin_of


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
