from typing import Any

from django.core.exceptions import ValidationError

from conversations.models import Turn
from conversations.text import validate_storable_text

from .models import Feedback


def feedback_give(*, user: Any, turn: Turn, rating: Any, comment: str = "") -> Feedback:
    """Rate a reply up (1) or down (-1), once per person; rating again replaces it."""
    try:
        rating = int(rating)
    except (TypeError, ValueError):
        rating = 0
    if rating not in (1, -1) or turn.role != Turn.Role.ASSISTANT:
        raise ValidationError("Rate a reply up or down.")
    comment = (comment or "").strip()
    validate_storable_text(comment)
    if len(comment) > 2000:
        raise ValidationError("Comments are at most 2,000 characters.")
    feedback, _ = Feedback.objects.update_or_create(
        turn=turn,
        user=user,
        defaults={"rating": rating, "comment": comment, "status": Feedback.Status.OPEN},
    )
    return feedback
