"""Reads, always scoped to the person asking."""

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
from django.db.models import Count, Exists, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from billing.models import Spend
from teams.sharing import shared_with_viewer

from .models import Conversation, Preset, Turn


def conversation_list_for(*, user: Any) -> QuerySet[Conversation]:
    """The user's conversations, newest activity first."""
    if not user.is_authenticated:
        return Conversation.objects.none()
    return Conversation.objects.filter(owner=user).order_by("-updated_at")


SIDEBAR_PAGE = 30


@dataclass(frozen=True)
class SidebarSection:
    label: str
    conversations: list[Conversation] = field(default_factory=list)


@dataclass(frozen=True)
class SidebarPage:
    """One page of the sidebar: sections by recency, and where the next page starts."""

    sections: list[SidebarSection]
    next_page: int | None


def recency_label(moment: Any, today: date) -> str:
    day = timezone.localtime(moment).date()
    if day >= today:
        return "Today"
    if day == today - timedelta(days=1):
        return "Yesterday"
    if day > today - timedelta(days=8):
        return "Previous 7 days"
    return "Older"


def sidebar_page_for(*, user: Any, page: int = 1) -> SidebarPage:
    """The user's conversations for the sidebar, without archived ones: pinned first
    (on the first page), then by last activity in Today, Yesterday, Previous 7 days and
    Older. A page's first section may continue the previous page's last one."""
    # Made through the API: found by search and under the "API conversations" filter.
    mine = conversation_list_for(user=user).filter(
        archived_at__isnull=True, api_origin__isnull=True
    )
    mine = mine.only("id", "title", "pinned_at", "updated_at")
    page = max(1, page)
    sections: list[SidebarSection] = []
    if page == 1:
        pinned = list(mine.filter(pinned_at__isnull=False).order_by("-pinned_at"))
        if pinned:
            sections.append(SidebarSection("Pinned", pinned))
    start = (page - 1) * SIDEBAR_PAGE
    rows = list(mine.filter(pinned_at__isnull=True)[start : start + SIDEBAR_PAGE + 1])
    today = timezone.localdate()
    for conversation in rows[:SIDEBAR_PAGE]:
        label = recency_label(conversation.updated_at, today)
        if not sections or sections[-1].label != label:
            sections.append(SidebarSection(label))
        sections[-1].conversations.append(conversation)
    return SidebarPage(sections, page + 1 if len(rows) > SIDEBAR_PAGE else None)


def conversation_readable_for(
    *, user: Any, conversation_id: uuid.UUID | str
) -> Conversation | None:
    """A conversation the user owns, or one its owner shared (read-only) with the user's
    team; `reply_in_progress` says whether a reply is being written in it."""
    if not user.is_authenticated:
        return None
    readable = Conversation.objects.filter(Q(owner=user) | shared_with_viewer(user))
    writing = Turn.objects.filter(conversation=OuterRef("pk"), state__in=Turn.ACTIVE_STATES)
    try:
        return (
            readable.select_related("owner")
            .annotate(reply_in_progress=Exists(writing))
            .get(pk=conversation_id)
        )
    except (Conversation.DoesNotExist, ValueError, ValidationError):
        return None


def conversation_search_for(*, user: Any, query: str) -> QuerySet[Conversation]:
    """The user's conversations whose title or any message contains `query`."""
    conversations = conversation_list_for(user=user)
    query = query.strip()
    if not query:
        return conversations
    in_text = Turn.objects.filter(conversation=OuterRef("pk"), content__icontains=query)
    return conversations.filter(Exists(in_text) | Q(title__icontains=query))


def conversation_get_for(*, user: Any, conversation_id: uuid.UUID | str) -> Conversation | None:
    """One conversation if `user` may see it, else None (callers answer 404, never 403)."""
    try:
        return conversation_list_for(user=user).get(pk=conversation_id)
    except (Conversation.DoesNotExist, ValueError, ValidationError):
        return None


def turns_with_cost(turns: QuerySet[Turn]) -> QuerySet[Turn]:
    """`turns` with what the ledger billed for each, in the same query: its latest
    Spend row (a retried reply has one per run; a title's row is not the reply's).
    Read it with `turn_cost`."""
    latest = Spend.objects.filter(turn_id=OuterRef("pk"), kind=Spend.Kind.REPLY).order_by("-pk")
    return turns.annotate(
        ledger_cost_usd=Subquery(latest.values("cost_usd")[:1]),
        ledger_estimated=Subquery(latest.values("estimated")[:1]),
    )


def turn_billed(turn: Turn, spend: Spend | None) -> Turn:
    """`turn` as `turns_with_cost` would load it, from the ledger row just written for
    it (the end of a reply: no second read)."""
    turn.ledger_cost_usd = spend.cost_usd if spend else None  # type: ignore[attr-defined]
    turn.ledger_estimated = spend.estimated if spend else None  # type: ignore[attr-defined]
    return turn


@dataclass(frozen=True)
class TurnCost:
    usd: Decimal
    estimated: bool

    def __str__(self) -> str:
        return f"${self.usd:.4f}" + (" (estimated)" if self.estimated else "")


def turn_cost(turn: Turn) -> TurnCost | None:
    """What the ledger billed for a turn loaded by `turns_with_cost`; None when nothing
    was billed (or the turn was loaded without its cost)."""
    usd = getattr(turn, "ledger_cost_usd", None)
    if usd is None:
        return None
    return TurnCost(usd=usd, estimated=bool(getattr(turn, "ledger_estimated", False)))


def _versions_of_outer_turn() -> QuerySet[Turn]:
    """The versions of the turn of the outer query, itself included: its siblings (the
    same conversation, depth and parent; first messages have no parent)."""
    return Turn.objects.alias(branch=Coalesce("parent_id", 0)).filter(
        conversation_id=OuterRef("conversation_id"),
        position=OuterRef("position"),
        branch=Coalesce(OuterRef("parent_id"), 0),
    )


def _count(turns: QuerySet[Turn]) -> Subquery:
    return Subquery(turns.order_by().values("conversation_id").annotate(n=Count("pk")).values("n"))


def turns_shown(turns: QuerySet[Turn]) -> QuerySet[Turn]:
    """`turns` as the pages show them, in the same query: with their cost
    (`turns_with_cost`) and their versions (read them with `turn_versions`)."""
    versions = _versions_of_outer_turn()
    return turns_with_cost(turns).annotate(
        version_count=_count(versions),
        version_number=_count(versions.filter(pk__lte=OuterRef("pk"))),
        previous_version=Subquery(
            versions.filter(pk__lt=OuterRef("pk")).order_by("-pk").values("pk")[:1]
        ),
        next_version=Subquery(
            versions.filter(pk__gt=OuterRef("pk")).order_by("pk").values("pk")[:1]
        ),
    )


def turn_version_ids(turn: Turn) -> list[int]:
    """The ids of a turn's versions, itself included, oldest first (for
    `turn_versions_known`): one query on the turn's siblings."""
    return list(
        Turn.objects.filter(
            conversation_id=turn.conversation_id, position=turn.position, parent_id=turn.parent_id
        )
        .order_by("pk")
        .values_list("pk", flat=True)
    )


@dataclass(frozen=True)
class TurnVersions:
    """Where a turn stands among its versions: number `number` of `count` (from 1, in
    the order they were made), and the ids of the versions before and after it."""

    number: int
    count: int
    previous: int | None
    next: int | None


def turn_versions(turn: Turn) -> TurnVersions | None:
    """The versions of a turn loaded by `turns_shown` (or given by `turn_versions_known`);
    None when it has no other version."""
    count = getattr(turn, "version_count", None)
    if not count or count < 2:
        return None
    return TurnVersions(
        number=turn.version_number,  # type: ignore[attr-defined]
        count=count,
        previous=turn.previous_version,  # type: ignore[attr-defined]
        next=turn.next_version,  # type: ignore[attr-defined]
    )


def turn_versions_known(turn: Turn, *, versions: list[int]) -> Turn:
    """Give a turn just made the versions `turns_shown` would read: the ids of its
    siblings, itself included, oldest first."""
    at = versions.index(turn.pk)
    turn.version_count = len(versions)  # type: ignore[attr-defined]
    turn.version_number = at + 1  # type: ignore[attr-defined]
    turn.previous_version = versions[at - 1] if at else None  # type: ignore[attr-defined]
    turn.next_version = versions[at + 1] if at + 1 < len(versions) else None  # type: ignore[attr-defined]
    return turn


def turns_in_tree_order(*, conversation: Conversation) -> list[Turn]:
    """Every turn of every version, with costs and versions, depth first: each turn,
    then what follows it, versions in the order they were made (review and exports)."""
    turns = list(turns_shown(conversation.turns.order_by("position", "pk")))
    children: dict[int | None, list[Turn]] = {}
    for turn in turns:
        children.setdefault(turn.parent_id, []).append(turn)
    ordered: list[Turn] = []
    stack = list(reversed(children.get(None, [])))
    while stack:
        turn = stack.pop()
        ordered.append(turn)
        stack.extend(reversed(children.get(turn.pk, [])))
    return ordered


def turns_on_path(*, conversation: Conversation) -> list[Turn]:
    """The active path, with costs and versions, oldest first."""
    return list(turns_shown(conversation.turns.filter(on_path=True).order_by("position")))


def turns_recent(*, conversation: Conversation, limit: int) -> list[Turn]:
    """The latest `limit` turns of the active path with their costs and versions, oldest
    first."""
    path = conversation.turns.filter(on_path=True).order_by("-position")
    turns = list(turns_shown(path)[:limit])
    turns.reverse()
    return turns


def turns_before(*, conversation: Conversation, position: int, limit: int) -> list[Turn]:
    """Up to `limit` turns of the active path just before `position`, oldest first (for
    "load earlier")."""
    earlier = conversation.turns.filter(on_path=True, position__lt=position).order_by("-position")
    turns = list(turns_shown(earlier)[:limit])
    turns.reverse()
    return turns


def presets_for(*, user: Any) -> QuerySet[Preset]:
    """The user's own presets and their team's."""
    if not user.is_authenticated:
        return Preset.objects.none()
    return (
        Preset.objects.filter(Q(owner=user, team__isnull=True) | Q(team__memberships__user=user))
        .select_related("team")
        .order_by("team", "name")
    )


def preset_get_for(*, user: Any, preset_id: Any) -> Preset | None:
    try:
        return presets_for(user=user).get(pk=int(preset_id))
    except (Preset.DoesNotExist, TypeError, ValueError):
        return None


def turn_get_for(*, user: Any, turn_id: int) -> Turn | None:
    """A reply in one of the user's own conversations."""
    if not user.is_authenticated:
        return None
    return (
        Turn.objects.filter(pk=turn_id, conversation__owner=user, role=Turn.Role.ASSISTANT)
        .select_related("conversation")
        .first()
    )


def turn_active(*, conversation_id: uuid.UUID | str) -> Turn | None:
    """The reply being written in this conversation, if any."""
    return (
        Turn.objects.filter(conversation_id=conversation_id, state__in=Turn.ACTIVE_STATES)
        .only("id", "conversation_id", "state", "content", "position")
        .first()
    )


def reply_history(*, turn: Turn) -> list[dict[str, str]]:
    """The messages that lead up to `turn` (its ancestors), alternating user/assistant,
    oldest first.

    Assistant turns with no text (failed before the first token) are left out, and
    neighbouring messages of one role are joined, so the upstream always gets a
    well-formed alternation that starts and ends with the user.
    """
    rows = list(
        Turn.objects.filter(
            conversation_id=turn.conversation_id, on_path=True, position__lt=turn.position
        )
        .order_by("position")
        .values_list("pk", "role", "content")
    )
    if turn.parent_id is None or (rows and rows[-1][0] == turn.parent_id):
        # Its parent is on the active path, so its ancestors are the path before it.
        return history_messages((role, content) for _, role, content in rows)
    return history_messages(_ancestor_rows(turn))


def history_rows(*, conversation_id: Any, before: int) -> list[tuple[str, str]]:
    """(role, content) of the active path's turns before position `before`, oldest first."""
    return list(
        Turn.objects.filter(conversation_id=conversation_id, on_path=True, position__lt=before)
        .order_by("position")
        .values_list("role", "content")
    )


def _ancestor_rows(turn: Turn) -> list[tuple[str, str]]:
    """(role, content) of a turn's ancestors, oldest first: the tree's links are read
    first (ids only), then the texts of the ancestors."""
    parents = dict(
        Turn.objects.filter(
            conversation_id=turn.conversation_id, position__lt=turn.position
        ).values_list("pk", "parent_id")
    )
    ancestors, at = [], turn.parent_id
    while at is not None:
        ancestors.append(at)
        at = parents.get(at)
    return list(
        Turn.objects.filter(pk__in=ancestors).order_by("position").values_list("role", "content")
    )


def history_messages(rows: Iterable[tuple[str, str]]) -> list[dict[str, str]]:
    """`reply_history`'s messages from (role, content) rows, oldest first."""
    messages: list[dict[str, str]] = []
    for role, content in rows:
        if not content:
            continue
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] += "\n\n" + content
        else:
            messages.append({"role": role, "content": content})
    while messages and messages[0]["role"] != "user":
        messages.pop(0)
    return messages
