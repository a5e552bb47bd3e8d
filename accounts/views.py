"""The sign-in page, single sign-on's entry points, the account settings page and
invitations: each translates HTTP into a call of `services`."""

import logging
from typing import Any

import requests
from allauth.socialaccount.providers.openid_connect import views as oidc_views
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login as auth_login
from django.contrib.auth import logout as auth_logout
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import LoginView
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import urlencode
from django.views.decorators.http import require_POST

from .adapters import INVITATION_SESSION_KEY, nonce_issue
from .forms import InvitationForm, InvitationSignUpForm, ProfileForm
from .models import Invitation, Profile
from .services import (
    InvitationUnusable,
    invitation_accept,
    invitation_create,
    invitation_get,
    invitation_sign_up,
    profile_update,
    sign_out_everywhere,
    teams_invitable_by,
)

logger = logging.getLogger("accounts")
SSO_PROVIDER_ID = "sso"


def sso_context(request: HttpRequest) -> dict[str, Any]:
    """What the sign-in and invitation pages show of single sign-on."""
    return {
        "sso": settings.OIDC_CONFIGURED,
        "sso_name": settings.OIDC_NAME,
        "oidc_only": settings.OIDC_ONLY,
    }


class SignInView(LoginView):
    """Django's sign-in page (throttled by django-axes), with the single sign-on button
    first when a provider is configured. With OIDC_ONLY the password form is for staff,
    behind a link."""

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        context.update(sso_context(self.request))
        context["password_form"] = (
            not settings.OIDC_ONLY or "staff" in self.request.GET or self.request.method == "POST"
        )
        return context


def _provider_unavailable(request: HttpRequest) -> HttpResponse:
    logger.warning("sso_provider_unreachable")
    context = {**sso_context(request), "password_allowed": not settings.OIDC_ONLY}
    return render(request, "accounts/sso_unavailable.html", context, status=503)


def _start_sso(request: HttpRequest) -> HttpResponse:
    """allauth's OpenID Connect login, asking for an ID token bound to this session by a
    nonce (allauth's `auth_params`; `SocialAccountAdapter` checks it). A provider that
    does not answer gets a page that says so, not an error."""
    # allauth reads extra authorization parameters from the query (as its
    # `provider_login_url ... auth_params=` does); this one is made here, not by the page.
    params = request.GET.copy()
    params["auth_params"] = urlencode({"nonce": nonce_issue(request)})
    request.GET = params  # type: ignore[assignment]
    try:
        return oidc_views.login(request, provider_id=SSO_PROVIDER_ID)
    except requests.RequestException:
        return _provider_unavailable(request)


@require_POST
def sso_login(request: HttpRequest) -> HttpResponse:
    """Start single sign-on: the button on the sign-in page."""
    return _start_sso(request)


def sso_callback(request: HttpRequest) -> HttpResponse:
    """The provider sends the browser back here (allauth checks state and PKCE)."""
    try:
        return oidc_views.callback(request, provider_id=SSO_PROVIDER_ID)
    except requests.RequestException:
        return _provider_unavailable(request)


@login_required
def account_settings(request: HttpRequest) -> HttpResponse:
    """The person's display name and e-mail, and links to what else they manage."""
    user: Any = request.user
    profile = Profile.objects.filter(user=user).first()
    initial = {"display_name": profile.display_name if profile else "", "email": user.email}
    form = ProfileForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            profile_update(user=user, **form.cleaned_data)
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, "Your profile was saved.")
            return redirect("account-settings")
    context = {
        "form": form,
        "has_password": user.has_usable_password(),
        "may_invite": teams_invitable_by(user).exists(),
    }
    return render(request, "accounts/settings.html", context, status=400 if form.errors else 200)


@login_required
@require_POST
def sign_out_everywhere_view(request: HttpRequest) -> HttpResponse:
    user = request.user
    sign_out_everywhere(user=user)
    auth_logout(request)
    messages.success(request, "You were signed out on every device.")
    return redirect(settings.LOGOUT_REDIRECT_URL)


@login_required
def invitation_new(request: HttpRequest) -> HttpResponse:
    """Invite someone by e-mail: admins into any team, team admins into their own."""
    if not teams_invitable_by(request.user).exists():
        raise PermissionDenied
    form = InvitationForm(request.POST or None, inviter=request.user)
    link = None
    if request.method == "POST" and form.is_valid():
        try:
            new = invitation_create(invited_by=request.user, **form.cleaned_data)
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            link = request.build_absolute_uri(reverse("invitation-accept", args=[new.token]))
            _send_invitation(new.invitation, link)
            form = InvitationForm(inviter=request.user)
    invitations = Invitation.objects.filter(team__in=teams_invitable_by(request.user))
    context = {"form": form, "link": link, "invitations": invitations.select_related("team")[:50]}
    return render(
        request, "accounts/invitation_new.html", context, status=400 if form.errors else 200
    )


def _send_invitation(invitation: Invitation, link: str) -> None:
    from django.core.mail import send_mail

    send_mail(
        subject=f"You are invited to the team {invitation.team.name}",
        message=(
            f"You are invited to join the team {invitation.team.name} on Claude chat.\n\n"
            f"Open this link to set your password or sign in (it works once, until "
            f"{invitation.expires_at:%Y-%m-%d %H:%M} UTC):\n\n{link}\n"
        ),
        from_email=None,
        recipient_list=[invitation.email],
    )


def invitation_accept_view(request: HttpRequest, token: str) -> HttpResponse:
    """The invitation link: set a password, sign in by single sign-on, or (signed in
    already) join the team."""
    try:
        invitation = invitation_get(token=token)
    except InvitationUnusable as exc:
        return render(request, "accounts/invitation_unusable.html", {"message": exc.message},
                      status=410)  # fmt: skip
    form = InvitationSignUpForm()
    if request.method == "POST":
        action = request.POST.get("action")
        if action == "sso" and settings.OIDC_CONFIGURED:
            request.session[INVITATION_SESSION_KEY] = invitation.pk
            return _start_sso(request)
        try:
            if action == "join" and request.user.is_authenticated:
                invitation_accept(invitation=invitation, user=request.user)
                messages.success(request, f"You joined the team {invitation.team.name}.")
                return redirect(settings.LOGIN_REDIRECT_URL)
            form = InvitationSignUpForm(request.POST)
            if form.is_valid():
                try:
                    user = invitation_sign_up(
                        invitation=invitation,
                        username=form.cleaned_data["username"],
                        password=form.cleaned_data["password1"],
                    )
                except ValidationError as exc:
                    form.add_error("password1", exc)
                else:
                    auth_login(request, user, backend="accounts.backends.SignInBackend")
                    return redirect(settings.LOGIN_REDIRECT_URL)
        except InvitationUnusable as exc:
            return render(request, "accounts/invitation_unusable.html", {"message": exc.message},
                          status=410)  # fmt: skip
    context = {**sso_context(request), "invitation": invitation, "form": form}
    return render(
        request, "accounts/invitation_accept.html", context, status=400 if form.errors else 200
    )
