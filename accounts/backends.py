"""How people sign in: passwords (throttled by django-axes ahead of this backend) and,
after single sign-on, the backend allauth records in the session."""

from typing import Any

from allauth.account.auth_backends import AuthenticationBackend
from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest


def password_sign_in_allowed(user: Any) -> bool:
    """With OIDC_ONLY, only staff may sign in with a password."""
    return not settings.OIDC_ONLY or bool(user.is_staff)


class SignInBackend(AuthenticationBackend):
    """allauth's username-and-password backend, which also refuses passwords of
    non-staff when OIDC_ONLY is set (the admin's sign-in included)."""

    def authenticate(self, request: HttpRequest | None, **credentials: Any) -> Any:
        user = super().authenticate(request, **credentials)
        if not credentials.get("password"):
            return user
        if user is None or not password_sign_in_allowed(user):
            # Its answer on a password is final: Django's ModelBackend, listed after it
            # only so that sessions it signed in stay valid, does not try again.
            raise PermissionDenied
        return user
