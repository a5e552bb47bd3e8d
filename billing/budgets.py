"""Money limits: monthly budgets per person and per team, from stored token usage.

A reply holds its worst-case cost (the whole prompt in, `max_tokens` out) while it
is written, so sends racing each other cannot overspend; once it ends, its real
cost goes into the `Spend` ledger, which edits and deletions do not touch. Sends
check under a lock of the budget rows. A conversation's title is charged its
worst-case cost in the ledger before its call and settled after it.
"""

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.db.models import Q, QuerySet, Sum
from django.utils import timezone

from conversations.actors import Actor, actor_for_user
from conversations.models import Turn
from conversations.selectors import reply_history
from teams.models import Team

from .models import Spend, UserBudget
from .prices import MILLION, reply_cost

WARN_FRACTION = Decimal("0.8")
# A token is at least one byte of UTF-8 (Claude's tokenizer works on bytes), so a
# text's byte count bounds its tokens from above whatever the script: emoji and CJK
# take 3-4 bytes a character and often a token each. Each message adds a few tokens
# of framing (role markers); the request as a whole a few more.
TOKENS_PER_MESSAGE = 8
TOKENS_PER_REQUEST = 32


def token_bound(texts: Iterable[str]) -> int:
    """At most how many tokens the upstream can bill for these messages."""
    count = TOKENS_PER_REQUEST
    for text in texts:
        count += len(text.encode("utf-8", "surrogatepass")) + TOKENS_PER_MESSAGE
    return count


def prompt_bound(*, system: str, messages: Iterable[str]) -> int:
    """`token_bound` of a request: its messages, and its system prompt when it has one
    (an empty one is not sent)."""
    return token_bound([system, *messages] if system else messages)


@dataclass(frozen=True)
class Allowance:
    """One budget: whose it is, its size, what was spent and what is held this month."""

    label: str
    budget: Decimal
    spent: Decimal
    held: Decimal

    @property
    def used(self) -> Decimal:
        return self.spent + self.held

    @property
    def left(self) -> Decimal:
        return max(Decimal(0), self.budget - self.used)

    @property
    def percent(self) -> int:
        return int(self.used * 100 / self.budget) if self.budget else 100


def month_start(now: datetime | None = None) -> datetime:
    now = now or timezone.now()
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _spent(spends: QuerySet[Spend]) -> Decimal:
    return Decimal(
        spends.filter(created_at__gte=month_start()).aggregate(c=Sum("cost_usd"))["c"] or 0
    )


def _held(turns: QuerySet[Turn]) -> Decimal:
    held = turns.aggregate(h=Sum("cost_reserved"))["h"]
    return Decimal(held or 0)


def _active_replies(scope: Q) -> QuerySet[Turn]:
    return Turn.objects.filter(scope, role=Turn.Role.ASSISTANT, state__in=Turn.ACTIVE_STATES)


def allowances_for(*, actor: Actor, lock: bool = False) -> list[Allowance]:
    """The budgets that apply to a person: their own and their team's, if set."""
    user_id = actor.user.pk
    allowances = []
    budgets = UserBudget.objects.filter(user_id=user_id)
    if lock:
        budgets = budgets.select_for_update()
    own = budgets.first()
    if own is not None:
        spent = _spent(Spend.objects.filter(user_id=user_id))
        held = _held(_active_replies(Q(conversation__owner_id=user_id)))
        allowances.append(Allowance("Your budget", own.monthly_budget_usd, spent, held))
    team = actor.team
    if team is not None and team.monthly_budget_usd is not None:
        if lock:
            team = Team.objects.select_for_update().get(pk=team.pk)
        spent = _spent(Spend.objects.filter(team_id=team.pk))
        held = _held(_active_replies(Q(conversation__owner__membership__team_id=team.pk)))
        budget = team.monthly_budget_usd or Decimal(0)
        allowances.append(Allowance(f"Team {team.name}", budget, spent, held))
    return allowances


def reply_worst_cost(*, model: str, max_tokens: int, prompt_tokens: int) -> Decimal:
    """The most a reply can cost: `prompt_tokens` (a `token_bound`) in, `max_tokens` out."""
    spec = settings.CHAT_MODELS.get(model)
    if spec is None:
        return Decimal(0)
    input_price, output_price = (Decimal(str(p)) for p in spec["price_per_million"])
    return (Decimal(prompt_tokens) * input_price + Decimal(max_tokens) * output_price) / MILLION


class BudgetExceeded(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def budget_hold(*, actor: Actor, cost: Decimal) -> list[Allowance]:
    """Refuse, with a clear message, a reply that could take a budget past its limit;
    else the budgets as they stand with it held (for `budget_warnings`).

    Call inside the transaction that stores the reply: it locks the budget rows,
    so concurrent sends are checked one after another.
    """
    allowances = allowances_for(actor=actor, lock=True)
    for allowance in allowances:
        if allowance.used + cost > allowance.budget:
            if allowance.left <= 0:
                raise BudgetExceeded(
                    f"{allowance.label} of ${allowance.budget:.2f} for this month is spent."
                )
            raise BudgetExceeded(
                f"This reply could cost up to ${cost:.4f}, more than the ${allowance.left:.4f} "
                f"left of {allowance.label.lower()} this month. Lower “Max tokens” or ask an "
                f"admin."
            )
    return [replace(allowance, held=allowance.held + cost) for allowance in allowances]


def budget_warnings(allowances: list[Allowance]) -> list[str]:
    """What a person is told of budgets nearly spent, from `allowances` as `budget_hold`
    returned them."""
    return [
        f"{a.label}: {a.percent}% used (${a.used:.2f} of ${a.budget:.2f} this month)."
        for a in allowances
        if a.budget and a.used >= a.budget * WARN_FRACTION
    ]


def output_estimate(text: str) -> int:
    """Tokens a text written by the model is estimated to have cost, cautiously: a
    third of its UTF-8 bytes (English runs near a quarter; CJK and emoji near one
    token a character)."""
    return len(text.encode("utf-8", "surrogatepass")) // 3 + 1 if text else 0


def spend_record(turn: Turn) -> Spend | None:
    """Put an ended reply's cost in the ledger: reported usage, else an estimate.

    Input is billed whenever the upstream took the prompt (it reported input tokens,
    or it sent text), also for replies stopped before their first word; where it
    never said how much (a dropped stream, a process that died), the prompt's upper
    bound. A reply that did not complete has no final output count (the stream's
    first report says 1): its output is estimated from its text.
    """
    input_tokens, output_tokens, estimated = turn.input_tokens, turn.output_tokens, False
    if input_tokens is None and output_tokens is None and not turn.content:
        return None  # failed before the upstream took the prompt: nothing was billed
    if output_tokens is None or turn.state != Turn.State.COMPLETE:
        estimate = output_estimate(turn.content)
        if output_tokens is None or estimate > output_tokens:
            estimated, output_tokens = True, estimate
    if input_tokens is None:
        estimated = True
        history = reply_history(turn=turn)
        input_tokens = prompt_bound(
            system=turn.system_prompt, messages=(m["content"] for m in history)
        )
    owner = actor_for_user(turn.conversation.owner)
    return Spend.objects.create(
        user_id=owner.user.pk,
        team_id=owner.membership.team_id if owner.membership else None,
        turn=turn,
        model=turn.model,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        estimated=estimated,
        cost_usd=reply_cost(
            model=turn.model, input_tokens=input_tokens, output_tokens=output_tokens
        ),
    )


def title_charge(
    *, actor: Actor, turn: Turn, model: str, prompt_tokens: int, max_tokens: int
) -> Spend | None:
    """Inside a transaction: charge a title call's worst-case cost to the ledger before
    the call, under the same lock as a reply's hold (`title_settle` puts in the real
    cost after it); None, with nothing stored, when a budget does not cover it."""
    cost = reply_worst_cost(model=model, max_tokens=max_tokens, prompt_tokens=prompt_tokens)
    try:
        budget_hold(actor=actor, cost=cost)
    except BudgetExceeded:
        return None
    return Spend.objects.create(
        user_id=actor.user.pk,
        team_id=actor.membership.team_id if actor.membership else None,
        turn=turn,
        kind=Spend.Kind.TITLE,
        model=model,
        input_tokens=prompt_tokens,
        output_tokens=max_tokens,
        estimated=True,
        cost_usd=cost,
    )


def title_settle(
    *, spend_id: int, input_tokens: int | None, output_tokens: int | None, text: str
) -> None:
    """A title call's real cost: reported usage, else an estimate (the prompt's bound
    in, the text out). A call the upstream never took (no usage, no text) cost
    nothing: its charge is removed."""
    spend = Spend.objects.filter(pk=spend_id, kind=Spend.Kind.TITLE).first()
    if spend is None:
        return
    if input_tokens is None and output_tokens is None and not text:
        spend.delete()
        return
    estimated = input_tokens is None or output_tokens is None
    spend.input_tokens = spend.input_tokens if input_tokens is None else input_tokens
    spend.output_tokens = output_estimate(text) if output_tokens is None else output_tokens
    spend.estimated = estimated
    spend.cost_usd = reply_cost(
        model=spend.model, input_tokens=spend.input_tokens, output_tokens=spend.output_tokens
    )
    spend.save(update_fields=["input_tokens", "output_tokens", "estimated", "cost_usd"])
