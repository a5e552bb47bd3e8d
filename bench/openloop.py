"""The open-loop run's pure parts: Poisson arrivals, the ramp of rates, the verdict.

An open loop sends on its own schedule whatever the server does (as people do), so a
slow server meets more and more work instead of a load generator that waits for it.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

# What an operator plans with: the first token within a second for 95 % of the chats.
TTFT_P95_LIMIT_MS = 1000.0
# Replies like a real model's: 400 tokens at 60 tokens a second (a 6.7 s reply).
REPLY_TOKENS = 400
TOKENS_PER_SECOND = 60.0
DEFAULT_RATES = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
DEFAULT_STEP_SECONDS = 20.0


def poisson_schedule(rate: float, duration: float, seed: int) -> list[float]:
    """Arrival times in [0, duration) of a Poisson process of `rate` per second.

    The gaps are exponential with mean 1/rate; the same seed gives the same times.
    """
    if rate <= 0 or duration <= 0:
        raise ValueError("rate and duration must be positive")
    draw = random.Random(seed)  # a load schedule, not a secret
    times: list[float] = []
    at = draw.expovariate(rate)
    while at < duration:
        times.append(at)
        at += draw.expovariate(rate)
    return times


def step_verdict(step: dict[str, Any], limit_ms: float = TTFT_P95_LIMIT_MS) -> bool:
    """Did the server sustain this step: no error and TTFT p95 within the limit?"""
    p95 = (step.get("ttft_ms") or {}).get("p95")
    return not step.get("errors") and step.get("ok", 0) > 0 and p95 is not None and p95 <= limit_ms


def highest_sustained(
    steps: Iterable[dict[str, Any]], limit_ms: float = TTFT_P95_LIMIT_MS
) -> float | None:
    """The highest rate that, with every lower rate run, was sustained (None: not the lowest).

    A lucky step above a failed one does not count: an operator cannot plan with it.
    """
    best: float | None = None
    for step in sorted(steps, key=lambda s: float(s["rate"])):
        if not step_verdict(step, limit_ms):
            break
        best = float(step["rate"])
    return best


def next_rate(
    done: list[dict[str, Any]], rates: tuple[float, ...], refine: int = 1
) -> float | None:
    """The rate to run next: up the ramp until a step fails, then `refine` halvings of the
    gap between the last good rate and the first bad one; None when there is nothing left."""
    if not done:
        return rates[0]
    good = [s["rate"] for s in done if step_verdict(s)]
    bad = [s["rate"] for s in done if not step_verdict(s)]
    if not bad:
        higher = [r for r in rates if r > done[-1]["rate"]]
        return higher[0] if higher else None
    refined = sum(1 for s in done if s.get("refined"))
    first_bad = min(bad)
    last_good = max((r for r in good if r < first_bad), default=None)
    if refined >= refine or last_good is None:
        return None
    middle = round((last_good + first_bad) / 2, 2)
    if middle in (last_good, first_bad):
        return None
    return middle
