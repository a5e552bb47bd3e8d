"""A deactivated account's tokens stop working at once."""

from typing import Any

from django.conf import settings
from django.db.models.signals import post_save
from django.dispatch import receiver

from .tokens import revoke_tokens


@receiver(post_save, sender=settings.AUTH_USER_MODEL, dispatch_uid="api-revoke-on-deactivate")
def revoke_on_deactivate(sender: Any, instance: Any, update_fields: Any = None, **_: Any) -> None:
    if update_fields is not None and "is_active" not in update_fields:
        return
    if not instance.is_active:
        revoke_tokens(instance)
