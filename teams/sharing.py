"""Sharing: an owner lets their team read (never write) a conversation, while they are
in that team."""

from typing import Any

from django.core.exceptions import ValidationError
from django.db.models import Exists, OuterRef, Q, QuerySet

from conversations.actors import Actor
from conversations.models import Conversation

from .models import Membership


def shared_with_viewer(user: Any) -> Q:
    """Shared with the viewer's team by an owner who is still in that team: sharing
    ends when the owner moves on, whoever stays behind."""
    viewer_in_team = Membership.objects.filter(user=user, team_id=OuterRef("shared_with_id"))
    owner_in_team = Membership.objects.filter(
        user_id=OuterRef("owner_id"), team_id=OuterRef("shared_with_id")
    )
    return Q(shared_with__isnull=False) & Q(Exists(viewer_in_team)) & Q(Exists(owner_in_team))


def conversations_shared_with(*, user: Any) -> QuerySet[Conversation]:
    """Conversations teammates shared with the user's team, newest first."""
    if not user.is_authenticated:
        return Conversation.objects.none()
    return (
        Conversation.objects.filter(shared_with_viewer(user))
        .exclude(owner=user)
        .select_related("owner")
        .order_by("-updated_at")
    )


def conversation_share(*, actor: Actor, conversation: Conversation, shared: bool) -> Conversation:
    """Share a conversation read-only with its owner's team, or stop sharing it."""
    if actor.user.pk != conversation.owner_id:
        raise ValidationError("Only its owner shares a conversation.")
    team_id = None
    if shared:
        if actor.membership is None:
            raise ValidationError("You are not in a team, so there is no one to share with.")
        team_id = actor.membership.team_id
    conversation.shared_with_id = team_id
    conversation.save(update_fields=["shared_with", "updated_at"])
    return conversation
