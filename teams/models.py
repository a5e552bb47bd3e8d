"""Teams and who is in them."""

import re

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models

_DOMAIN = re.compile(r"(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}", re.ASCII)


def email_domains_parse(text: str) -> list[str]:
    """A team's e-mail domains, one per line, lower case, without a leading `@`."""
    return [line.strip().lstrip("@").lower() for line in text.splitlines() if line.strip()]


def validate_email_domains(text: str) -> None:
    bad = [domain for domain in email_domains_parse(text) if not _DOMAIN.fullmatch(domain)]
    if bad:
        raise ValidationError(f"Not an e-mail domain: {', '.join(bad)}. Put one per line.")


class Team(models.Model):
    """People who share presets, read-only conversations, a budget and a list of models."""

    name = models.CharField(max_length=100, unique=True)
    monthly_budget_usd = models.DecimalField(
        max_digits=10, decimal_places=2, null=True, blank=True,
        help_text="Empty: no team budget.",
    )  # fmt: skip
    allowed_models = models.JSONField(
        default=list, blank=True, help_text="Model ids the team may use; empty: all offered."
    )
    email_domains = models.TextField(
        blank=True, validators=[validate_email_domains],
        help_text="One e-mail domain per line (example.com): whoever first signs in by "
        "single sign-on with a verified address there joins this team, as a member.",
    )  # fmt: skip
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "conversations_team"
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    """A person's place in their team (one team per person)."""

    class Role(models.TextChoices):
        MEMBER = "member"
        ADMIN = "admin", "team admin"

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="membership"
    )
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)

    class Meta:
        db_table = "conversations_membership"

    def __str__(self) -> str:
        return f"{self.user} in {self.team} ({self.role})"
