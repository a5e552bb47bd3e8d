"""Conversations, their turns and presets: data and invariants only."""

import math
import uuid
from collections.abc import Callable
from typing import Any, ClassVar

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import F, Q, Value
from django.db.models.functions import Coalesce

from teams.models import Team


def validate_finite(value: float) -> None:
    if value is not None and not math.isfinite(value):
        raise ValidationError("Enter a finite number.", code="invalid")


UNIT_INTERVAL: list[Callable[[Any], None]] = [
    validate_finite,
    MinValueValidator(0.0),
    MaxValueValidator(1.0),
]


def check_chat_settings(obj: Any) -> None:
    """Rules across fields of a conversation's or a preset's settings."""
    errors: dict[str, str] = {}
    spec = settings.CHAT_MODELS.get(obj.model)
    if spec is None:
        errors["model"] = "Choose one of the offered models."
    elif obj.max_tokens and obj.max_tokens > spec["max_output_tokens"]:
        errors["max_tokens"] = f"{spec['label']} writes at most {spec['max_output_tokens']} tokens."
    if obj.temperature is not None and obj.top_p is not None:
        errors["top_p"] = "Set temperature or top_p, not both: these models refuse both."
    if errors:
        raise ValidationError(errors)


class ChatSettings(models.Model):
    """A model, system prompt and sampling settings: a conversation's, or a preset's.

    The fields, their checks in Python (`clean`) and in the database, written once.
    """

    FIELDS: ClassVar[tuple[str, ...]] = (
        "model", "system_prompt", "temperature", "top_p", "top_k", "max_tokens",
    )  # fmt: skip

    model = models.CharField(max_length=64)
    system_prompt = models.TextField(blank=True)
    temperature = models.FloatField(null=True, blank=True, validators=UNIT_INTERVAL)
    top_p = models.FloatField(null=True, blank=True, validators=UNIT_INTERVAL)
    top_k = models.PositiveIntegerField(null=True, blank=True, validators=[MinValueValidator(1)])
    max_tokens = models.PositiveIntegerField(default=1024, validators=[MinValueValidator(1)])

    class Meta:
        abstract = True
        # `%(class)s`: conversation_temperature_range, preset_temperature_range, …
        constraints = [
            models.CheckConstraint(
                condition=Q(temperature__isnull=True) | Q(temperature__gte=0, temperature__lte=1),
                name="%(class)s_temperature_range",
            ),
            models.CheckConstraint(
                condition=Q(top_p__isnull=True) | Q(top_p__gte=0, top_p__lte=1),
                name="%(class)s_top_p_range",
            ),
            models.CheckConstraint(
                condition=Q(temperature__isnull=True) | Q(top_p__isnull=True),
                name="%(class)s_temperature_or_top_p",
            ),
            models.CheckConstraint(
                condition=Q(top_k__isnull=True) | Q(top_k__gt=0), name="%(class)s_top_k_positive"
            ),
            models.CheckConstraint(
                condition=Q(max_tokens__gt=0), name="%(class)s_max_tokens_positive"
            ),
        ]

    def clean(self) -> None:
        check_chat_settings(self)


class Conversation(ChatSettings):
    """One chat: its owner, model, system prompt and sampling settings."""

    class Flag(models.TextChoices):
        NONE = "", "not flagged"
        QUALITY = "quality"
        MISUSE = "misuse"
        COST = "cost"
        OTHER = "other"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations"
    )
    title = models.CharField(max_length=200, blank=True)
    # Set by the owner: the team can read (never write) this conversation.
    shared_with = models.ForeignKey(
        Team, null=True, blank=True, on_delete=models.SET_NULL, related_name="shared_conversations"
    )
    # Set by reviewers in the admin.
    flag = models.CharField(max_length=16, choices=Flag.choices, blank=True, default="")
    # Set by the owner from the sidebar: pinned ones come first, archived ones leave the
    # list (search still finds them). Neither counts as activity.
    pinned_at = models.DateTimeField(null=True, blank=True)
    archived_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta(ChatSettings.Meta):
        ordering = ["-updated_at"]
        permissions = [("review_conversation", "Can review every conversation")]
        indexes = [
            models.Index(fields=["owner", "-updated_at"], name="conversation_owner_recent"),
        ]

    def __str__(self) -> str:
        return self.title or "New chat"

    @property
    def display_title(self) -> str:
        return self.title or "New chat"


# Turn.ACTIVE_STATES, for its Meta (a class body cannot see its class's names).
_ACTIVE_STATE_VALUES = ["pending", "streaming"]


class Turn(models.Model):
    """A message in a conversation: the user's, or an assistant reply with its own record."""

    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"

    class State(models.TextChoices):
        PENDING = "pending"
        STREAMING = "streaming"
        COMPLETE = "complete"
        ERROR = "error"
        CANCELLED = "cancelled"
        INTERRUPTED = "interrupted"

    # The reply state machine, defined here only. A reply is written (pending, then
    # streaming) and ends once, in a final state; an ended reply may be written again
    # (Retry, Regenerate), which starts it anew.
    ACTIVE_STATES = (State.PENDING, State.STREAMING)
    FINAL_STATES = (State.COMPLETE, State.ERROR, State.CANCELLED, State.INTERRUPTED)
    FAILED_STATES = (State.ERROR, State.INTERRUPTED)  # ended without the whole reply
    TRANSITIONS: dict[str, tuple[str, ...]] = {
        State.PENDING: (State.STREAMING, *FINAL_STATES),
        State.STREAMING: FINAL_STATES,
        State.COMPLETE: ACTIVE_STATES,
        State.ERROR: ACTIVE_STATES,
        State.CANCELLED: ACTIVE_STATES,
        State.INTERRUPTED: ACTIVE_STATES,
    }

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="turns")
    # A conversation is a tree of turns: a turn answers (or follows) its parent; a first
    # message has none. Versions of a turn (an edited message, a regenerated reply) are
    # siblings: the same parent, the same position, in the order they were made.
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="children"
    )
    # The depth in the tree: every turn of a path has its own.
    position = models.PositiveIntegerField()
    # The version shown among its siblings (one per sibling group); on the active path
    # when it and all its ancestors are (`on_path`, kept up to date on every change, so
    # the path is read in one query: the turns `on_path`, by position).
    chosen = models.BooleanField(default=True)
    on_path = models.BooleanField(default=True)
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField(blank=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.COMPLETE)
    error_message = models.CharField(max_length=500, blank=True)
    # What this reply was actually made with (the conversation may change later).
    model = models.CharField(max_length=64, blank=True)
    system_prompt = models.TextField(blank=True)
    temperature = models.FloatField(null=True, blank=True)
    top_p = models.FloatField(null=True, blank=True)
    top_k = models.PositiveIntegerField(null=True, blank=True)
    max_tokens = models.PositiveIntegerField(null=True, blank=True)
    input_tokens = models.PositiveIntegerField(null=True, blank=True)
    output_tokens = models.PositiveIntegerField(null=True, blank=True)
    stop_reason = models.CharField(max_length=32, blank=True)
    gateway_log_id = models.CharField(max_length=100, blank=True)
    # The most this reply can cost, held against budgets while it is written.
    cost_reserved = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Written with every checkpoint: a stale heartbeat means the process died.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # Set by Stop from any process; the runner sees it at its next heartbeat.
    stop_requested_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["conversation", "position", "pk"]
        indexes = [models.Index(fields=["conversation", "position"], name="turn_depth")]
        constraints = [
            # One turn at each depth of the active path.
            models.UniqueConstraint(
                fields=["conversation", "position"],
                condition=Q(on_path=True),
                name="turn_path_position",
            ),
            # One chosen version among siblings (first messages have no parent: 0).
            models.UniqueConstraint(
                F("conversation"),
                F("position"),
                Coalesce(F("parent"), Value(0)),
                condition=Q(chosen=True),
                name="turn_one_chosen_version",
            ),
            models.UniqueConstraint(
                fields=["conversation"],
                condition=Q(state__in=_ACTIVE_STATE_VALUES),
                name="turn_one_active_reply",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.role} #{self.position}"

    @property
    def is_active(self) -> bool:
        return self.state in self.ACTIVE_STATES

    @property
    def is_final(self) -> bool:
        return self.state in self.FINAL_STATES

    @classmethod
    def states_that_may_become(cls, state: str) -> tuple[str, ...]:
        """The states a reply may be in to move to `state` (for a guarded UPDATE)."""
        return tuple(old for old, new in cls.TRANSITIONS.items() if state in new)


class Preset(ChatSettings):
    """A named model + system prompt + settings that new chats can start from.

    A person's own, or (with `team` set) their team's, made by a team admin.
    """

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="presets"
    )
    team = models.ForeignKey(
        Team, null=True, blank=True, on_delete=models.CASCADE, related_name="presets"
    )
    name = models.CharField(max_length=100)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta(ChatSettings.Meta):
        ordering = ["name"]
        constraints = [
            *ChatSettings.Meta.constraints,
            models.UniqueConstraint(fields=["owner", "name"], name="preset_unique_name"),
        ]

    def __str__(self) -> str:
        return self.name


assert list(Turn.ACTIVE_STATES) == _ACTIVE_STATE_VALUES  # the constraint names the same states
