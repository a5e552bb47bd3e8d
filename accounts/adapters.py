"""django-allauth's adapters: who may sign up, and what a first single sign-on does."""

import logging
import secrets
from typing import Any

from allauth.account.adapter import DefaultAccountAdapter
from allauth.account.adapter import get_adapter as get_account_adapter
from allauth.account.utils import user_username
from allauth.core.exceptions import ImmediateHttpResponse
from allauth.socialaccount.adapter import DefaultSocialAccountAdapter
from django.contrib import messages
from django.http import HttpRequest
from django.shortcuts import render
from django.urls import reverse
from django.utils.crypto import constant_time_compare

from .models import Invitation, Profile
from .services import InvitationUnusable, invitation_accept, team_join_from_provider

logger = logging.getLogger("accounts")

# The invitation a person opened before signing in through the provider.
INVITATION_SESSION_KEY = "accounts_invitation"
# Nonces of the sign-ins this session started, the newest last.
NONCE_SESSION_KEY = "accounts_sso_nonces"
NONCES_KEPT = 5
QUIET_MESSAGES = frozenset({"account/messages/logged_in.txt", "account/messages/logged_out.txt"})


class AccountAdapter(DefaultAccountAdapter):
    """No self-service sign-up with a password: accounts come from the admin, an
    invitation or the identity provider."""

    def is_open_for_signup(self, request: HttpRequest) -> bool:
        return False

    def get_password_change_redirect_url(self, request: HttpRequest) -> str:
        return reverse("account-settings")

    def add_message(
        self,
        request: HttpRequest,
        level: int,
        message_template: str | None = None,
        message_context: dict[str, Any] | None = None,
        extra_tags: str = "",
        message: str | None = None,
    ) -> None:
        # Signing in and out shows where it leads; these would surface on a later page.
        if message_template in QUIET_MESSAGES:
            return
        super().add_message(request, level, message_template, message_context, extra_tags, message)


class SocialAccountAdapter(DefaultSocialAccountAdapter):
    """Anyone the identity provider signs in gets an account (that is what the provider
    is for); an invitation they opened first, or their address, puts them in a team."""

    def is_open_for_signup(self, request: HttpRequest, sociallogin: Any) -> bool:
        return True

    def populate_user(self, request: HttpRequest, sociallogin: Any, data: dict[str, Any]) -> Any:
        user = super().populate_user(request, sociallogin, data)
        local_part = (user.email or "").partition("@")[0]
        candidates = [data.get("username"), local_part, "user"]
        user_username(user, get_account_adapter(request).generate_unique_username(candidates))
        return user

    def save_user(self, request: HttpRequest, sociallogin: Any, form: Any = None) -> Any:
        user = super().save_user(request, sociallogin, form)
        claims = _claims(sociallogin)
        name = claims.get("name")
        if isinstance(name, str) and name.strip():
            Profile.objects.update_or_create(user=user, defaults={"display_name": name[:150]})
        if not _accept_invitation(request, user):
            team_join_from_provider(user=user, claims=claims)
        return user

    def pre_social_login(self, request: HttpRequest, sociallogin: Any) -> None:
        id_token = (sociallogin.account.extra_data or {}).get("id_token") or {}
        if not nonce_redeem(request, id_token.get("nonce")):
            logger.warning("sso_failed error=nonce")
            raise ImmediateHttpResponse(
                render(request, "socialaccount/authentication_error.html",
                       {"auth_error": {"provider": sociallogin.provider}}, status=401)
            )  # fmt: skip
        if sociallogin.is_existing:
            _accept_invitation(request, sociallogin.user)

    def on_authentication_error(
        self,
        request: HttpRequest,
        provider: Any,
        error: Any = None,
        exception: Any = None,
        extra_context: Any = None,
    ) -> None:
        # The kind of failure only: an exception's text may quote a token or a secret.
        logger.warning(
            "sso_failed error=%s exception=%s", error, type(exception).__name__ if exception else ""
        )


def nonce_issue(request: HttpRequest) -> str:
    """A nonce for the ID token of one sign-in started from this session (a few may be
    under way at once, in several tabs)."""
    nonce = secrets.token_urlsafe(24)
    recent = request.session.get(NONCE_SESSION_KEY, [])[-(NONCES_KEPT - 1) :]
    request.session[NONCE_SESSION_KEY] = [*recent, nonce]
    return nonce


def nonce_redeem(request: HttpRequest, nonce: Any) -> bool:
    """Whether the ID token carries a nonce this session was given; each works once."""
    issued = request.session.get(NONCE_SESSION_KEY, [])
    if not isinstance(nonce, str) or not any(
        constant_time_compare(nonce, candidate) for candidate in issued
    ):
        return False
    request.session[NONCE_SESSION_KEY] = [n for n in issued if n != nonce]
    return True


def _claims(sociallogin: Any) -> dict[str, Any]:
    """The provider's claims about the person: its userinfo, else the ID token's."""
    extra = sociallogin.account.extra_data or {}
    return dict(extra.get("id_token") or {}) | dict(extra.get("userinfo") or {})


def _accept_invitation(request: HttpRequest, user: Any) -> bool:
    invitation_id = request.session.pop(INVITATION_SESSION_KEY, None)
    invitation = Invitation.objects.filter(pk=invitation_id).first() if invitation_id else None
    if invitation is None:
        return False
    try:
        invitation_accept(invitation=invitation, user=user)
    except InvitationUnusable as exc:
        messages.warning(request, exc.message)
        return False
    messages.success(request, f"You joined the team {invitation.team.name}.")
    return True
