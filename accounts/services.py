"""Every write of the accounts app: invitations, profiles, ending a person's sessions,
and the team a single sign-on puts a new person in."""

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from allauth.account.models import EmailAddress
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth import SESSION_KEY, get_user_model
from django.contrib.auth.password_validation import validate_password
from django.contrib.sessions.models import Session
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from chatsite.outages import CHANNEL_LAYER, reached
from teams.models import Membership, Team, email_domains_parse

from .models import Invitation, Profile
from .signals import signed_out_everywhere

logger = logging.getLogger("accounts")


def user_group(user_id: int) -> str:
    """The channel-layer group every open chat socket of one person is in."""
    return f"user.{user_id}"


# --- invitations -----------------------------------------------------------------


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def teams_invitable_by(user: Any) -> QuerySet[Team]:
    """Teams `user` may invite into: any (superusers, staff allowed to add invitations),
    their own (team admins), or none."""
    if not (user.is_authenticated and user.is_active):
        return Team.objects.none()
    if user.is_superuser or (user.is_staff and user.has_perm("accounts.add_invitation")):
        return Team.objects.all()
    return Team.objects.filter(
        memberships__user_id=user.pk, memberships__role=Membership.Role.ADMIN
    )


@dataclass(frozen=True)
class NewInvitation:
    invitation: Invitation
    token: str  # shown and sent once; only its hash is stored


def invitation_create(*, invited_by: Any, email: str, team: Team) -> NewInvitation:
    """Invite `email` into `team`; refused unless `invited_by` may invite there."""
    if not teams_invitable_by(invited_by).filter(pk=team.pk).exists():
        raise PermissionDenied("You may invite people only into your own team.")
    email = email.strip().lower()
    if get_user_model().objects.filter(email__iexact=email).exists():
        raise ValidationError({"email": "Someone with this e-mail address already has an account."})
    token = secrets.token_urlsafe(32)
    invitation = Invitation.objects.create(
        email=email,
        team=team,
        token_hash=token_hash(token),
        expires_at=timezone.now() + timedelta(days=settings.INVITATION_DAYS),
        invited_by=invited_by,
    )
    return NewInvitation(invitation, token)


class InvitationUnusable(Exception):
    """The link is unknown, used or expired: `message` says which, for the page."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def invitation_get(*, token: str) -> Invitation:
    """The invitation behind a link, if it may still be used."""
    invitation = (
        Invitation.objects.filter(token_hash=token_hash(token)).select_related("team").first()
    )
    if invitation is None:
        raise InvitationUnusable("This invitation link is not valid.")
    if invitation.used_at is not None:
        raise InvitationUnusable("This invitation has already been used.")
    if invitation.expired:
        raise InvitationUnusable("This invitation has expired. Ask for a new one.")
    return invitation


def invitation_accept(*, invitation: Invitation, user: Any) -> None:
    """Use the invitation (once) and put `user` in its team."""
    with transaction.atomic():
        used = Invitation.objects.filter(
            pk=invitation.pk, used_at__isnull=True, expires_at__gt=timezone.now()
        ).update(used_at=timezone.now(), used_by=user)
        if not used:
            raise InvitationUnusable("This invitation has already been used or has expired.")
        membership = Membership.objects.filter(user_id=user.pk).select_related("team").first()
        if membership is not None and membership.team_id != invitation.team_id:
            raise InvitationUnusable(
                f"You are already in the team {membership.team.name}; ask an admin to move you."
            )
        if membership is None:
            Membership.objects.create(user=user, team=invitation.team)


def invitation_sign_up(*, invitation: Invitation, username: str, password: str) -> Any:
    """A new account with a password, for the invitation's address, in its team."""
    User = get_user_model()
    with transaction.atomic():
        user = User(username=username, email=invitation.email)
        validate_password(password, user)
        user.set_password(password)
        user.save()
        # The link reached this address, so it counts as verified.
        EmailAddress.objects.create(user=user, email=invitation.email, primary=True, verified=True)
        invitation_accept(invitation=invitation, user=user)
    return user


# --- the profile -----------------------------------------------------------------


def profile_update(*, user: Any, display_name: str, email: str) -> None:
    """Change a person's display name and e-mail address (unverified until proven)."""
    email = email.strip().lower()
    User = get_user_model()
    if email and User.objects.filter(email__iexact=email).exclude(pk=user.pk).exists():
        raise ValidationError({"email": "Another account uses this e-mail address."})
    with transaction.atomic():
        Profile.objects.update_or_create(user=user, defaults={"display_name": display_name.strip()})
        if email != user.email:
            EmailAddress.objects.filter(user=user).delete()
            user.email = email
            user.save(update_fields=["email"])


# --- sign out everywhere ---------------------------------------------------------


def sign_out_everywhere(*, user: Any) -> int:
    """End every session of `user`, close their open chat sockets at once, and tell
    listeners (`signed_out_everywhere`). Returns how many sessions were ended."""
    ended = 0
    live = Session.objects.filter(expire_date__gt=timezone.now())
    for session in live.iterator():
        if str(session.get_decoded().get(SESSION_KEY)) == str(user.pk):
            session.delete()
            ended += 1
    # Sockets also refuse their next frame once the session is gone; this closes idle ones.
    async_to_sync(_close_sockets)(user.pk)
    signed_out_everywhere.send(sender=sign_out_everywhere, user=user)
    logger.info("signed_out_everywhere user=%s sessions=%d", user.pk, ended)
    return ended


async def _close_sockets(user_id: int) -> None:
    layer = get_channel_layer()
    if layer is not None:
        await reached(
            CHANNEL_LAYER, layer.group_send(user_group(user_id), {"type": "user.revoked"})
        )


# --- teams from the identity provider ---------------------------------------------


def team_join_from_provider(*, user: Any, claims: dict[str, Any]) -> Team | None:
    """On a first single sign-on, put the person in a team: the first whose name the
    OIDC_TEAM_CLAIM claim lists, else the one whose e-mail domains include their
    address (when the provider says it is verified). Always as a member, never as team
    admin; someone already in a team stays where they are."""
    if Membership.objects.filter(user_id=user.pk).exists():
        return None
    team = _team_from_claim(claims) or _team_from_domain(claims)
    if team is None:
        return None
    Membership.objects.create(user=user, team=team, role=Membership.Role.MEMBER)
    logger.info("team_joined_from_provider user=%s team=%s", user.pk, team.pk)
    return team


def _team_from_domain(claims: dict[str, Any]) -> Team | None:
    email = claims.get("email")
    if not isinstance(email, str) or "@" not in email:
        return None
    verified = claims.get("email_verified")
    if not (verified is True or (isinstance(verified, str) and verified.lower() == "true")):
        return None
    domain = email.rpartition("@")[2].strip().lower()
    for team in Team.objects.exclude(email_domains="").order_by("name"):
        if domain in email_domains_parse(team.email_domains):
            return team
    return None


def _team_from_claim(claims: dict[str, Any]) -> Team | None:
    if not settings.OIDC_TEAM_CLAIM:
        return None
    groups = claims.get(settings.OIDC_TEAM_CLAIM)
    if isinstance(groups, str):
        groups = [groups]
    if not isinstance(groups, list):
        return None
    names = [group for group in groups if isinstance(group, str) and group.strip()]
    teams = {team.name: team for team in Team.objects.filter(name__in=names)}
    return next((teams[name] for name in names if name in teams), None)
