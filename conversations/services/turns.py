"""Turns: storing a message, and the one place that moves a reply between states."""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from billing.budgets import (
    BudgetExceeded,
    budget_hold,
    budget_warnings,
    prompt_bound,
    reply_worst_cost,
    spend_record,
)
from billing.models import UpstreamCall

from ..actors import Actor, actor_for_user
from ..gateway import ChatRequest, model_available
from ..models import Conversation, Turn
from ..selectors import (
    history_messages,
    history_rows,
    reply_history,
    turn_billed,
    turn_version_ids,
    turn_versions_known,
    turns_shown,
)
from ..text import UNSTORABLE_MESSAGE, text_is_storable

TITLE_LENGTH = 60


class SendRefused(Exception):
    """A send that is refused as a whole; `message` is shown to the user."""

    message = "That could not be sent."


class ReplyInProgress(SendRefused):
    """A reply is still being written in this conversation."""

    message = "A reply is still being written. Wait for it, or press Stop."


class ReplyInProgressElsewhere(ReplyInProgress):
    """The reply being written belongs to another version of the conversation."""

    message = (
        "A reply is still being written in another version of this conversation, and "
        "a conversation writes one reply at a time. Wait for it, or press Stop."
    )


class SendRateLimited(SendRefused):
    message = "You are sending messages too quickly. Please wait a moment."


class NotRetryable(SendRefused):
    message = "Only the last reply can be written again, once it has ended."


class NotEditable(SendRefused):
    message = "That message cannot be edited."


class NotSwitchable(SendRefused):
    message = "That version is not in this conversation."


class OverBudget(SendRefused):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def check_message_text(text: Any) -> None:
    if not isinstance(text, str) or not text.strip():
        raise ValidationError({"message": "Type a message first."})
    if len(text) > settings.CHAT_MAX_MESSAGE_CHARS:
        raise ValidationError(
            {"message": f"Messages are limited to {settings.CHAT_MAX_MESSAGE_CHARS} characters."}
        )
    if not text_is_storable(text):
        raise ValidationError({"message": UNSTORABLE_MESSAGE})


def _lock_idle(conversation: Conversation, *, check: bool = True) -> Conversation:
    """Inside a transaction: lock the conversation (its row on PostgreSQL; SQLite's
    IMMEDIATE mode locks the file) and refuse while a reply is being written.

    `check=False` when the transaction only adds turns: the one-active-reply
    constraint then refuses the new reply, and the whole transaction with it.
    """
    locked = Conversation.objects.select_for_update().get(pk=conversation.pk)
    if check and Turn.objects.filter(conversation=locked, state__in=Turn.ACTIVE_STATES).exists():
        raise _reply_in_progress(locked.pk)
    return locked


def _reply_in_progress(conversation_id: Any) -> ReplyInProgress:
    """The refusal of a second reply: the one being written is on the path the person
    sees, or on another version of the conversation (they are told so)."""
    on_path = (
        Turn.objects.filter(conversation_id=conversation_id, state__in=Turn.ACTIVE_STATES)
        .values_list("on_path", flat=True)
        .first()
    )
    return ReplyInProgressElsewhere() if on_path is False else ReplyInProgress()


def _check_can_send(conversation: Conversation, actor: Actor | None) -> Actor:
    """Checks before anything is stored: the model and the person's team.

    Returns the owner as an `Actor` (read here for callers that have none: scripts
    and tests).
    """
    if actor is None:
        actor = actor_for_user(conversation.owner)
    _check_model(conversation, actor)
    return actor


def _check_model(conversation: Conversation, actor: Actor) -> None:
    """The model is offered here and the owner's team may use it (no query)."""
    if not model_available(conversation.model):
        raise ValidationError({"model": "This conversation's model is not configured here."})
    if not actor.may_use(conversation.model):
        raise ValidationError({"model": "Your team may not use this model. Pick another one."})


def _count_call(owner_id: int, kind: str) -> None:
    """Inside the storing transaction: count one upstream call against the person's
    rate limit, or refuse. Every way of starting a reply comes through here.

    The person's row is locked first, so their concurrent calls are counted one
    after another (PostgreSQL; SQLite's write lock already serialises them).
    """
    if not call_counted(owner_id, kind):
        raise SendRateLimited


def call_counted(owner_id: int, kind: str) -> bool:
    """Inside a transaction: count one upstream call, or False (nothing stored) when
    the person is at their rate limit."""
    list(get_user_model().objects.select_for_update().filter(pk=owner_id).values_list("pk"))
    window = timezone.now() - timedelta(seconds=settings.CHAT_SEND_RATE_WINDOW)
    recent = UpstreamCall.objects.filter(user_id=owner_id, created_at__gte=window).count()
    if recent >= settings.CHAT_SEND_RATE_LIMIT:
        return False
    UpstreamCall.objects.create(user_id=owner_id, kind=kind)
    return True


def upstream_calls_prune() -> int:
    """Forget calls older than the rate window (kept a day, for operators to look at)."""
    keep = max(settings.CHAT_SEND_RATE_WINDOW, 86_400.0)
    cutoff = timezone.now() - timedelta(seconds=keep)
    deleted, _ = UpstreamCall.objects.filter(created_at__lt=cutoff).delete()
    return deleted


@dataclass(frozen=True)
class Hold:
    cost: Decimal  # the reply's worst case, held while it is written (`cost_reserved`)
    warnings: list[str]  # budgets nearly spent, with this hold


def _hold_budget(locked: Conversation, *, actor: Actor, prompt: Iterable[str]) -> Hold:
    """Inside the storing transaction: hold the reply's worst-case cost, or refuse.

    `prompt`: the texts the upstream will read (history and new message); the
    system prompt is added here.
    """
    cost = reply_worst_cost(
        model=locked.model,
        max_tokens=locked.max_tokens,
        prompt_tokens=prompt_bound(system=locked.system_prompt, messages=prompt),
    )
    try:
        allowances = budget_hold(actor=actor, cost=cost)
    except BudgetExceeded as exc:
        raise OverBudget(exc.message) from exc
    return Hold(cost, budget_warnings(allowances))


def _settings_snapshot(conversation: Conversation) -> dict[str, Any]:
    """The settings a reply is made with, as stored on the reply."""
    return {field: getattr(conversation, field) for field in Conversation.FIELDS}


def title_from(text: str) -> str:
    line = " ".join(text.split())
    if len(line) <= TITLE_LENGTH:
        return line
    cut = line[:TITLE_LENGTH].rsplit(" ", 1)[0] or line[:TITLE_LENGTH]
    return cut + "…"


def _reply_state(started: bool) -> dict[str, Any]:
    """A new or reset reply's state: pending, or (its runner starts at once) streaming."""
    if not started:
        return {"state": Turn.State.PENDING}
    now = timezone.now()
    return {"state": Turn.State.STREAMING, "started_at": now, "heartbeat_at": now}


@dataclass(frozen=True)
class Stored:
    """What storing a send, retry or edit changed, for `reply_begin` and the pages."""

    conversation: Conversation  # as stored now (title, updated_at)
    added: list[Turn]  # new turns, oldest first (the reply last)
    changed: list[Turn]  # turns the pages already show, now different
    removed: list[int]  # turns that are gone
    reply: Turn
    history: list[dict[str, str]]  # the upstream messages, read while storing
    warnings: list[str]  # budgets nearly spent, with this reply held


def message_send(
    *, conversation: Conversation, text: str, actor: Actor | None = None
) -> tuple[Turn, Turn]:
    """Store the user's message, then a pending reply that records the settings it uses.

    Refused, with nothing stored, when the text is empty or too long, the model
    is not available, or a reply is already being written. `actor`: the owner, when
    the caller has read them already.
    """
    stored = store_send(conversation=conversation, text=text, actor=actor)
    user_turn, reply = stored.added
    return user_turn, reply


def store_send(
    *,
    conversation: Conversation,
    text: str,
    actor: Actor | None = None,
    started: bool = False,
) -> Stored:
    """`message_send`; with `started`, the reply is stored streaming and the upstream
    history is read in the same transaction (one statement fewer per send)."""
    check_message_text(text)
    actor = _check_can_send(conversation, actor)
    try:
        with transaction.atomic():
            locked = _lock_idle(conversation, check=False)
            _check_model(locked, actor)
            _count_call(locked.owner_id, UpstreamCall.Kind.SEND)
            rows = list(
                locked.turns.filter(on_path=True)
                .order_by("position")
                .values_list("pk", "position", "role", "content")
            )
            parent_id, last = rows[-1][:2] if rows else (None, 0)
            hold = _hold_budget(
                locked,
                actor=actor,
                prompt=[*(content for *_, content in rows), text],
            )
            user_turn = Turn.objects.create(
                conversation=locked,
                parent_id=parent_id,
                position=last + 1,
                role=Turn.Role.USER,
                content=text,
                state=Turn.State.COMPLETE,
            )
            reply = Turn.objects.create(
                conversation=locked,
                parent=user_turn,
                position=last + 2,
                role=Turn.Role.ASSISTANT,
                cost_reserved=hold.cost,
                **_reply_state(started),
                **_settings_snapshot(locked),
            )
            update = ["updated_at"]
            if not locked.title:
                locked.title = title_from(text)
                update.append("title")
            locked.save(update_fields=update)
    except IntegrityError as exc:
        # Two sends raced: the one-active-reply constraint let only one through.
        raise _reply_in_progress(conversation.pk) from exc
    conversation.title, conversation.updated_at = locked.title, locked.updated_at
    history = history_messages(
        [(role, content) for *_, role, content in rows] + [(Turn.Role.USER.value, text)]
    )
    return Stored(locked, [user_turn, reply], [], [], reply, history, hold.warnings)


def reply_request(*, turn: Turn, history: list[dict[str, str]] | None = None) -> ChatRequest:
    """The upstream request for a reply: its history (read here unless given) and the
    settings stored on it."""
    assert turn.max_tokens is not None
    return ChatRequest(
        model=turn.model,
        messages=history if history is not None else reply_history(turn=turn),
        system=turn.system_prompt,
        temperature=turn.temperature,
        top_p=turn.top_p,
        top_k=turn.top_k,
        max_tokens=turn.max_tokens,
        metadata={"conversation": str(turn.conversation_id), "turn": str(turn.pk)},
    )


def reply_start(*, turn_id: int) -> bool:
    """pending → streaming. False when the reply was already ended elsewhere."""
    now = timezone.now()
    return bool(
        Turn.objects.filter(pk=turn_id, state=Turn.State.PENDING).update(
            state=Turn.State.STREAMING, started_at=now, heartbeat_at=now
        )
    )


def reply_prepare(*, turn: Turn) -> ChatRequest | None:
    """Start a reply (unless it was stored streaming) and build its upstream request.

    `turn` then shows the reply as streaming. None when it was ended elsewhere first.
    """
    if turn.state == Turn.State.PENDING:
        if not reply_start(turn_id=turn.pk):
            return None
        turn.state = Turn.State.STREAMING
    elif turn.state != Turn.State.STREAMING:
        return None
    return reply_request(turn=turn)


def turn_checkpoints(*, contents: dict[int, str | None]) -> set[int]:
    """Save the text so far of many replies (None: only the heartbeat), in one
    transaction; returns the ones saved. A reply missing from the answer should
    stop: it was ended elsewhere, or Stop was pressed in another process's page.

    At most three statements whatever the number of replies, each row written
    once: lock the live ones, write the new texts (with their heartbeats) in one
    UPDATE, the heartbeats of the others in another.
    """
    now = timezone.now()
    with transaction.atomic():
        saved = set(
            Turn.objects.select_for_update()
            .filter(
                pk__in=list(contents), state=Turn.State.STREAMING, stop_requested_at__isnull=True
            )
            .values_list("pk", flat=True)
        )
        texts = [
            Turn(pk=turn_id, content=content, heartbeat_at=now)
            for turn_id, content in contents.items()
            if content is not None and turn_id in saved
        ]
        if texts:
            Turn.objects.bulk_update(texts, ["content", "heartbeat_at"])
        beats = saved.difference(turn.pk for turn in texts)
        if beats:
            Turn.objects.filter(pk__in=list(beats)).update(heartbeat_at=now)
    return saved


def reply_stop_request(*, conversation_id: Any) -> Turn | None:
    """Mark the conversation's active reply as asked to stop; returns it, if any."""
    turn = Turn.objects.filter(
        conversation_id=conversation_id, state__in=Turn.ACTIVE_STATES
    ).first()
    if turn is None:
        return None
    Turn.objects.filter(pk=turn.pk, stop_requested_at__isnull=True).update(
        stop_requested_at=timezone.now()
    )
    return turn


def _reset_reply(
    locked: Conversation, turn_id: int, states: tuple[str, ...], held: Decimal, started: bool
) -> bool:
    """Make an ended reply new again, with the conversation's current settings."""
    state = _reply_state(started)
    return bool(
        Turn.objects.filter(pk=turn_id, state__in=states).update(
            content="",
            error_message="",
            stop_reason="",
            input_tokens=None,
            output_tokens=None,
            gateway_log_id="",
            finished_at=None,
            stop_requested_at=None,
            cost_reserved=held,
            created_at=timezone.now(),
            **{"started_at": None, "heartbeat_at": None, **state},
            **_settings_snapshot(locked),
        )
    )


def reply_retry(*, conversation: Conversation, turn_id: int, actor: Actor | None = None) -> Turn:
    """Write the last reply again, with the current settings, as a new version beside
    it (Regenerate after `complete`; Retry after a failure, which keeps the text it
    had). Only a reply that ended with no text at all is written again in its place:
    there is nothing to keep.

    Only the last turn of the active path, an assistant reply that has ended.
    """
    return store_retry(conversation=conversation, turn_id=turn_id, actor=actor).reply


def _new_version(turn: Turn, **fields: Any) -> Turn:
    """A new version of a turn of the active path, which takes its place there; the
    turn and what follows it leave the path, kept."""
    versions = turn_version_ids(turn)
    Turn.objects.filter(pk=turn.pk).update(chosen=False)
    made = Turn.objects.create(
        conversation_id=turn.conversation_id,
        parent_id=turn.parent_id,
        position=turn.position,
        role=turn.role,
        **fields,
    )
    return turn_versions_known(made, versions=[*versions, made.pk])


def _leave_path(conversation: Conversation, *, from_position: int) -> list[int]:
    """Take the active path's turns from `from_position` on off it; their ids."""
    later = Turn.objects.filter(
        conversation=conversation, on_path=True, position__gte=from_position
    )
    left = list(later.values_list("pk", flat=True))
    later.update(on_path=False)
    return left


def store_retry(
    *,
    conversation: Conversation,
    turn_id: int,
    actor: Actor | None = None,
    started: bool = False,
) -> Stored:
    """`reply_retry`; with `started`, the reply is stored streaming."""
    actor = _check_can_send(conversation, actor)
    ended = Turn.states_that_may_become(Turn.State.PENDING)
    try:
        with transaction.atomic():
            locked = Conversation.objects.select_for_update().get(pk=conversation.pk)
            _check_model(locked, actor)
            last = locked.turns.filter(on_path=True).order_by("-position").first()
            if last is None or last.pk != turn_id or last.role != Turn.Role.ASSISTANT:
                raise NotRetryable
            if last.state not in ended:
                raise NotRetryable
            _count_call(locked.owner_id, UpstreamCall.Kind.RETRY)
            rows = history_rows(conversation_id=locked.pk, before=last.position)
            hold = _hold_budget(locked, actor=actor, prompt=[content for _, content in rows])
            if last.content:  # what it wrote stays, as a version
                removed = _leave_path(locked, from_position=last.position)
                reply = _new_version(
                    last,
                    cost_reserved=hold.cost,
                    **_reply_state(started),
                    **_settings_snapshot(locked),
                )
                locked.save(update_fields=["updated_at"])
                stored = Stored(
                    locked, [reply], [], removed, reply, history_messages(rows), hold.warnings
                )
            else:
                if not _reset_reply(locked, turn_id, ended, hold.cost, started):
                    raise NotRetryable
                locked.save(update_fields=["updated_at"])
                reply = turns_shown(Turn.objects.filter(pk=turn_id)).get()
                stored = Stored(
                    locked, [], [reply], [], reply, history_messages(rows), hold.warnings
                )
    except IntegrityError as exc:
        raise _reply_in_progress(conversation.pk) from exc
    return stored


@dataclass(frozen=True)
class EditResult:
    user_turn: Turn
    reply: Turn
    removed: list[int]


def message_edit(
    *,
    conversation: Conversation,
    turn_id: int,
    text: str,
    actor: Actor | None = None,
) -> EditResult:
    """Send a new version of one of the user's messages: it takes the old one's place on
    the active path, with a new reply; the old one and what followed it are kept."""
    stored = store_edit(conversation=conversation, turn_id=turn_id, text=text, actor=actor)
    return EditResult(user_turn=stored.added[0], reply=stored.reply, removed=stored.removed)


def store_edit(
    *,
    conversation: Conversation,
    turn_id: int,
    text: str,
    actor: Actor | None = None,
    started: bool = False,
) -> Stored:
    """`message_edit`; with `started`, the reply is stored streaming."""
    check_message_text(text)
    actor = _check_can_send(conversation, actor)
    try:
        with transaction.atomic():
            locked = _lock_idle(conversation)
            _check_model(locked, actor)
            user_turn = Turn.objects.filter(
                conversation=locked, pk=turn_id, role=Turn.Role.USER, on_path=True
            ).first()
            if user_turn is None:
                raise NotEditable
            _count_call(locked.owner_id, UpstreamCall.Kind.EDIT)
            rows = history_rows(conversation_id=locked.pk, before=user_turn.position)
            rows.append((Turn.Role.USER.value, text))
            hold = _hold_budget(locked, actor=actor, prompt=[content for _, content in rows])
            removed = _leave_path(locked, from_position=user_turn.position)
            edited = _new_version(user_turn, content=text, state=Turn.State.COMPLETE)
            reply = Turn.objects.create(
                conversation=locked,
                parent=edited,
                position=edited.position + 1,
                role=Turn.Role.ASSISTANT,
                cost_reserved=hold.cost,
                **_reply_state(started),
                **_settings_snapshot(locked),
            )
            locked.save(update_fields=["updated_at"])
    except IntegrityError as exc:
        raise _reply_in_progress(conversation.pk) from exc
    return Stored(
        locked, [edited, reply], [], removed, reply, history_messages(rows), hold.warnings
    )


def path_switch(*, conversation: Conversation, turn_id: int) -> list[int]:
    """Show another version: the active path goes through `turn_id`, then on down the
    versions last chosen after it (the rest of that branch). Returns the new path's
    ids, oldest first. Nothing is written for a turn already on the path.

    One read of the tree's links (ids and flags, no text) and at most four UPDATEs,
    however long the conversation.
    """
    with transaction.atomic():
        locked = Conversation.objects.select_for_update().get(pk=conversation.pk)
        links = {
            pk: (parent, position, chosen, on_path)
            for pk, parent, position, chosen, on_path in locked.turns.order_by("pk").values_list(
                "pk", "parent_id", "position", "chosen", "on_path"
            )
        }
        if turn_id not in links:
            raise NotSwitchable
        path, at = [], links[turn_id][0]
        while at is not None:  # the ancestors
            path.append(at)
            at = links[at][0]
        path.reverse()
        followers: dict[int | None, list[int]] = {}
        versions: dict[tuple[int | None, int], list[int]] = {}
        for pk, (parent, position, _, _) in links.items():
            followers.setdefault(parent, []).append(pk)
            versions.setdefault((parent, position), []).append(pk)
        at = turn_id
        while True:
            path.append(at)
            after = followers.get(at)
            if not after:
                break
            at = next((pk for pk in after if links[pk][2]), after[-1])
        chosen = [pk for pk in path if not links[pk][2]]
        unchosen = [
            other
            for pk in chosen
            for other in versions[links[pk][:2]]
            if other != pk and links[other][2]
        ]
        on = set(path)
        leaving = [pk for pk, link in links.items() if link[3] and pk not in on]
        joining = [pk for pk in path if not links[pk][3]]
        # Off first: the constraints allow one chosen version, one turn per depth of the path.
        for ids, fields in (
            (unchosen, {"chosen": False}),
            (chosen, {"chosen": True}),
            (leaving, {"on_path": False}),
            (joining, {"on_path": True}),
        ):
            if ids:
                Turn.objects.filter(pk__in=ids).update(**fields)
    return path


INTERRUPTED_MESSAGE = "The server stopped while writing this reply."


def reply_sweep_stale(*, stale_after: float, alive: Iterable[int] = ()) -> list[Turn]:
    """Mark replies whose process died (stale heartbeat) `interrupted`, keeping their text.

    `alive`: replies this process is running; late heartbeats under load are not death.
    """
    cutoff = timezone.now() - timedelta(seconds=stale_after)
    stale = Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, created_at__lt=cutoff)
    ending = Turn.states_that_may_become(Turn.State.INTERRUPTED)
    candidates = Turn.objects.filter(stale, state__in=ending).exclude(pk__in=alive)
    swept = []
    for turn_id in candidates.values_list("pk", flat=True):
        with transaction.atomic():
            if Turn.objects.filter(stale, pk=turn_id, state__in=ending).update(
                state=Turn.State.INTERRUPTED,
                error_message=INTERRUPTED_MESSAGE,
                finished_at=timezone.now(),
            ):
                spend_record(Turn.objects.select_related("conversation__owner").get(pk=turn_id))
                # Text that was streamed was billed: the pages are shown that cost.
                swept.append(turns_shown(Turn.objects.all()).get(pk=turn_id))
    return swept


@dataclass(frozen=True)
class ReplyOutcome:
    state: str
    content: str
    error_message: str = ""
    stop_reason: str = ""
    input_tokens: int | None = None
    output_tokens: int | None = None
    gateway_log_id: str = ""


def reply_finish(*, turn_id: int, outcome: ReplyOutcome) -> Turn | None:
    """Move an active reply to its final state, once. None when it had already ended."""
    if outcome.state not in Turn.FINAL_STATES:
        raise ValueError(f"not a final state: {outcome.state}")
    now = timezone.now()
    fields: dict[str, Any] = {
        "state": outcome.state,
        "content": outcome.content,
        "error_message": outcome.error_message[:500],
        "stop_reason": outcome.stop_reason,
        "input_tokens": outcome.input_tokens,
        "output_tokens": outcome.output_tokens,
        "gateway_log_id": outcome.gateway_log_id[:100],
        "finished_at": now,
        "heartbeat_at": now,
    }
    with transaction.atomic():
        updated = Turn.objects.filter(
            pk=turn_id, state__in=Turn.states_that_may_become(outcome.state)
        ).update(**fields)
        if not updated:
            return None
        turn = Turn.objects.select_related("conversation__owner").get(pk=turn_id)
        spend = spend_record(turn)
        Conversation.objects.filter(pk=turn.conversation_id).update(updated_at=now)
    turn.conversation.updated_at = now
    # With what was just billed and its versions, for the pages' final fragment.
    return turn_versions_known(turn_billed(turn, spend), versions=turn_version_ids(turn))
