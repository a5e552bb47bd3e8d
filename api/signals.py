"""A deactivated account's tokens, and those of a person who signed out everywhere,
stop working at once."""

from typing import Any

from django.conf import settings
from django.db.models.signals import post_save
from django.dispatch import receiver

from accounts.signals import signed_out_everywhere

from .tokens import revoke_tokens


@receiver(post_save, sender=settings.AUTH_USER_MODEL, dispatch_uid="api-revoke-on-deactivate")
def revoke_on_deactivate(sender: Any, instance: Any, update_fields: Any = None, **_: Any) -> None:
    if update_fields is not None and "is_active" not in update_fields:
        return
    if not instance.is_active:
        revoke_tokens(instance)


@receiver(signed_out_everywhere, dispatch_uid="api-revoke-on-sign-out-everywhere")
def revoke_on_sign_out_everywhere(sender: Any, user: Any, **_: Any) -> None:
    revoke_tokens(user)
