"""A person's profile, and invitations into a team."""

from django.conf import settings
from django.db import models
from django.utils import timezone

from teams.models import Team


class Profile(models.Model):
    """What a person says about themselves beyond the sign-in name."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="profile"
    )
    display_name = models.CharField(max_length=150, blank=True)

    def __str__(self) -> str:
        return self.display_name or str(self.user)


class Invitation(models.Model):
    """A single-use, expiring link into a team for one e-mail address.

    Only a hash of the link's token is stored: the link is shown and sent once."""

    email = models.EmailField()
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="invitations")
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)
    used_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
        related_name="+",
    )  # fmt: skip
    invited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
        related_name="invitations_sent",
    )  # fmt: skip
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.email} to {self.team}"

    @property
    def expired(self) -> bool:
        return self.expires_at <= timezone.now()
