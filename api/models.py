"""Personal API tokens, and which conversations were made through the API."""

from django.conf import settings
from django.db import models

from conversations.models import Conversation


class ApiToken(models.Model):
    """A person's token for the programmatic API: it acts as its owner.

    Only a SHA-256 of the secret is kept; the secret itself is shown once.
    """

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100)
    secret_hash = models.CharField(max_length=64, unique=True, editable=False)
    # The secret's first characters after the prefix, so people can tell tokens apart.
    hint = models.CharField(max_length=16, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.hint}…) of {self.owner}"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class ApiConversation(models.Model):
    """Marks a conversation as made through the API (and by which token, while it exists)."""

    conversation = models.OneToOneField(
        Conversation, on_delete=models.CASCADE, primary_key=True, related_name="api_origin"
    )
    token = models.ForeignKey(
        ApiToken, null=True, blank=True, on_delete=models.SET_NULL, related_name="conversations"
    )

    def __str__(self) -> str:
        return f"{self.conversation_id} through the API"
