"""Review: the record of every look, and people's ratings of replies."""

from django.conf import settings
from django.db import models

from conversations.models import Conversation, Turn


class ReviewAccess(models.Model):
    """Who opened a conversation for review, when and why: shown to its owner, never edited."""

    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="review_accesses"
    )
    reason = models.CharField(max_length=300, blank=True)
    opened_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "conversations_reviewaccess"
        ordering = ["-opened_at"]
        verbose_name_plural = "review accesses"

    def __str__(self) -> str:
        return f"{self.reviewer} opened {self.conversation_id} at {self.opened_at:%Y-%m-%d %H:%M}"


class Feedback(models.Model):
    """A person's rating of a reply, and what a reviewer made of it."""

    class Status(models.TextChoices):
        OPEN = "open"
        RESOLVED = "resolved"

    turn = models.ForeignKey(Turn, on_delete=models.CASCADE, related_name="feedback")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    rating = models.SmallIntegerField(choices=[(1, "up"), (-1, "down")])
    comment = models.TextField(blank=True, max_length=2000)
    created_at = models.DateTimeField(auto_now_add=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    reviewer_note = models.TextField(blank=True)
    flag = models.CharField(
        max_length=16, choices=Conversation.Flag.choices, blank=True, default=""
    )

    class Meta:
        db_table = "conversations_feedback"
        constraints = [
            models.UniqueConstraint(fields=["turn", "user"], name="feedback_once_per_reply"),
        ]
        verbose_name_plural = "feedback"

    def __str__(self) -> str:
        return f"{'+' if self.rating > 0 else '-'} on {self.turn_id} by {self.user}"
