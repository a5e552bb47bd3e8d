"""Who is acting: the person, their team and its rules, read once per request or frame.

A socket stays open for hours; the person behind it may sign out, change their
password, be deactivated or move team meanwhile. `actor_for_socket` re-reads all
of that in one query, with the conversation the frame acts on, so every frame
that causes work is checked against the truth of now.
"""

import uuid
from dataclasses import dataclass
from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.sessions.models import Session
from django.db.models import Subquery
from django.utils import timezone
from django.utils.crypto import constant_time_compare

from teams.models import Membership, Team

from .models import Conversation

_DB_SESSIONS = "django.contrib.sessions.backends.db"


@dataclass(frozen=True, slots=True)
class Actor:
    """A signed-in, active person and their team membership (None: no team)."""

    user: Any
    membership: Membership | None

    @property
    def team(self) -> Team | None:
        return self.membership.team if self.membership is not None else None

    @property
    def team_admin_of(self) -> int | None:
        """The id of the team this person is an admin of, if they are one."""
        membership = self.membership
        if membership is None or membership.role != Membership.Role.ADMIN:
            return None
        return membership.team_id

    def may_use(self, model: str) -> bool:
        """Whether the person's team may use `model` (no team, or an empty list: all)."""
        team = self.team
        return team is None or not team.allowed_models or model in team.allowed_models


@dataclass(frozen=True, slots=True)
class SocketCredentials:
    """What a socket was opened with: its session and the person it signed in."""

    user_id: int
    session_key: str

    @classmethod
    def from_scope(cls, scope: dict[str, Any]) -> "SocketCredentials":
        return cls(user_id=scope["user"].pk, session_key=scope["session"].session_key or "")


def _membership_of(user: Any) -> Membership | None:
    try:
        membership: Membership = user.membership
    except Membership.DoesNotExist:
        return None
    return membership


def actor_for_user(user: Any) -> Actor:
    """A signed-in person with their membership and team, in one query."""
    membership = Membership.objects.filter(user_id=user.pk).select_related("team").first()
    return Actor(user=user, membership=membership)


def _session_signs_in(user: Any, data: dict[str, Any] | None) -> bool:
    """The session still signs this user in, with their current password (as
    `django.contrib.auth.get_user` decides it)."""
    if not data or str(data.get(SESSION_KEY)) != str(user.pk):
        return False
    if data.get(BACKEND_SESSION_KEY) not in settings.AUTHENTICATION_BACKENDS:
        return False
    stored = data.get(HASH_SESSION_KEY)
    return isinstance(stored, str) and constant_time_compare(stored, user.get_session_auth_hash())


def _session_data(session_key: str, encoded: str | None) -> dict[str, Any] | None:
    store = import_module(settings.SESSION_ENGINE).SessionStore
    if settings.SESSION_ENGINE == _DB_SESSIONS:
        return None if encoded is None else store().decode(encoded)
    session = store(session_key)
    return dict(session.items()) if session.exists(session_key) else None


def actor_for_socket(
    *, credentials: SocketCredentials, conversation_id: uuid.UUID | str
) -> tuple[Actor | None, Conversation | None]:
    """The socket's person, if still signed in and active, and their conversation
    (None: deleted), in one query: conversation, owner, membership, team, session."""
    live_session = Session.objects.filter(
        session_key=credentials.session_key, expire_date__gt=timezone.now()
    ).values("session_data")[:1]
    conversation = (
        Conversation.objects.filter(
            pk=conversation_id, owner_id=credentials.user_id, owner__is_active=True
        )
        .select_related("owner__membership__team")
        .annotate(session_data=Subquery(live_session))
        .first()
    )
    user: Any
    if conversation is not None:
        user, encoded = conversation.owner, conversation.session_data
    else:
        user = (
            get_user_model()
            .objects.filter(pk=credentials.user_id, is_active=True)
            .select_related("membership__team")
            .annotate(session_data=Subquery(live_session))
            .first()
        )
        if user is None:
            return None, None
        encoded = user.session_data
    data = _session_data(credentials.session_key, encoded)
    if not _session_signs_in(user, data):
        return None, None
    return Actor(user=user, membership=_membership_of(user)), conversation
