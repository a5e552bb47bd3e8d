"""Personal API tokens: made, checked, revoked. Only a SHA-256 of each is stored.

A token is `cct_` and 43 characters of `secrets.token_urlsafe` (256 bits): too many
to guess, so a fast hash is enough and a lookup is one indexed query.
"""

import hashlib
import secrets
from datetime import timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.utils import timezone

from conversations.text import UNSTORABLE_MESSAGE, text_is_storable

from .models import ApiToken

PREFIX = "cct_"
# last_used_at is written at most this often per token (not on every call).
LAST_USED_PRECISION = timedelta(seconds=60)
NAME_LENGTH = 100


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def token_create(*, owner: Any, name: str) -> tuple[ApiToken, str]:
    """A new token of `owner`'s and its secret, which is not stored and shown only now."""
    name = " ".join((name or "").split())
    if not text_is_storable(name):
        raise ValidationError({"name": UNSTORABLE_MESSAGE})
    if not name:
        raise ValidationError({"name": "Give the token a name."})
    if len(name) > NAME_LENGTH:
        raise ValidationError({"name": f"Names are at most {NAME_LENGTH} characters."})
    body = secrets.token_urlsafe(32)
    secret = PREFIX + body
    token = ApiToken.objects.create(
        owner=owner, name=name, secret_hash=_hash(secret), hint=body[:6]
    )
    return token, secret


def token_authenticate(secret: str) -> ApiToken | None:
    """The live token with this secret, its owner active (loaded with it); None otherwise."""
    if not secret.startswith(PREFIX) or len(secret) > 200:
        return None
    token = (
        ApiToken.objects.filter(
            secret_hash=_hash(secret), revoked_at__isnull=True, owner__is_active=True
        )
        .select_related("owner")
        .first()
    )
    if token is None:
        return None
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at >= LAST_USED_PRECISION:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token


def tokens_for(*, user: Any) -> QuerySet[ApiToken]:
    """A person's tokens, live ones first, newest first."""
    return ApiToken.objects.filter(owner_id=user.pk).order_by("revoked_at", "-created_at")


def token_revoke(*, owner: Any, token_id: Any) -> bool:
    """Revoke one of `owner`'s tokens; False when there is no such live token."""
    try:
        token_id = int(token_id)
    except (TypeError, ValueError):
        return False
    return bool(
        ApiToken.objects.filter(pk=token_id, owner_id=owner.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
    )


def revoke_tokens(user: Any) -> int:
    """Revoke every live token of `user` (deactivation, signing out everywhere)."""
    return ApiToken.objects.filter(owner_id=user.pk, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
