"""Money: budgets, the ledger of what replies cost, and the calls the rate limit counts."""

from django.conf import settings
from django.db import models

from conversations.models import Turn
from teams.models import Team


class UserBudget(models.Model):
    """A person's own monthly budget in USD."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="budget"
    )
    monthly_budget_usd = models.DecimalField(max_digits=10, decimal_places=2)

    class Meta:
        db_table = "conversations_userbudget"

    def __str__(self) -> str:
        return f"{self.user}: ${self.monthly_budget_usd}/month"


class Spend(models.Model):
    """What one model call cost (a reply, or a conversation's title): a ledger row that
    outlives edits and deleted conversations."""

    class Kind(models.TextChoices):
        REPLY = "reply"
        TITLE = "title"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    team = models.ForeignKey(
        Team, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    turn = models.ForeignKey(
        Turn, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.REPLY)
    model = models.CharField(max_length=64)
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    estimated = models.BooleanField(default=False, help_text="Usage not reported: from the text.")
    cost_usd = models.DecimalField(max_digits=12, decimal_places=6)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        db_table = "conversations_spend"
        indexes = [
            models.Index(fields=["user", "created_at"], name="spend_user_month"),
            models.Index(fields=["team", "created_at"], name="spend_team_month"),
        ]

    def __str__(self) -> str:
        return f"{self.user} ${self.cost_usd} ({self.model})"


class UpstreamCall(models.Model):
    """One model call a person caused (send, retry, edit, a title): the rate limit
    counts these."""

    class Kind(models.TextChoices):
        SEND = "send"
        RETRY = "retry"
        EDIT = "edit"
        TITLE = "title"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "conversations_upstreamcall"
        indexes = [models.Index(fields=["user", "created_at"], name="upstream_call_user_recent")]

    def __str__(self) -> str:
        return f"{self.kind} by {self.user} at {self.created_at:%H:%M:%S}"
