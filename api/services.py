"""Starting a reply for an API call: the token's owner, through `reply_begin`."""

import math
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from billing.models import UpstreamCall
from conversations.actors import Actor, actor_for_user
from conversations.gateway import model_available
from conversations.replies import reply_starting
from conversations.selectors import conversation_get_for
from conversations.services import (
    ReplyBegun,
    ReplyInProgress,
    Send,
    SendRateLimited,
    conversation_create,
    conversation_update,
    reply_begin,
)
from conversations.services.begin import Transcript
from conversations.services.turns import OverBudget

from .calls import ApiCall, ApiError
from .models import ApiConversation, ApiToken


def _check_model(actor: Actor, model: str) -> None:
    if model not in settings.CHAT_MODELS or not model_available(model):
        raise ApiError("not_found", f"The model {model!r} is not offered here.", param="model")
    if not actor.may_use(model):
        raise ApiError("permission", "Your team may not use this model.", param="model")


def rate_limit_wait(*, user_id: int) -> int:
    """Whole seconds until the person's next call fits in the rate window (at least 1)."""
    window = timedelta(seconds=settings.CHAT_SEND_RATE_WINDOW)
    now = timezone.now()
    recent = list(
        UpstreamCall.objects.filter(user_id=user_id, created_at__gte=now - window)
        .order_by("-created_at")
        .values_list("created_at", flat=True)[: settings.CHAT_SEND_RATE_LIMIT]
    )
    if len(recent) < settings.CHAT_SEND_RATE_LIMIT:
        return 1
    # The oldest of the last `limit` calls must leave the window.
    return max(1, math.ceil((recent[-1] + window - now).total_seconds()))


def _field_error(exc: ValidationError) -> ApiError:
    errors = getattr(exc, "error_dict", None) or {}
    name = next(iter(errors), "")
    param = {"system_prompt": "system", "message": "messages"}.get(name, name) or None
    return ApiError("invalid_request", " ".join(exc.messages), param=param)


def _settings_of(call: ApiCall) -> dict[str, Any]:
    return {
        "model": call.model,
        "system_prompt": call.system,
        "temperature": call.temperature,
        "top_p": call.top_p,
        "top_k": call.top_k,
        "max_tokens": call.max_tokens,
    }


def _begin(actor: Actor, token: ApiToken, call: ApiCall) -> ReplyBegun:
    if call.conversation_id:
        # Only the owner's own conversations; anyone else's is "not found".
        conversation = conversation_get_for(user=actor.user, conversation_id=call.conversation_id)
        if conversation is None:
            raise ApiError("not_found", "No such conversation.", param="x-conversation-id")
        with transaction.atomic():
            conversation_update(conversation=conversation, **_settings_of(call))
            return reply_begin(actor=actor, conversation=conversation, action=Send(call.text))
    with transaction.atomic():
        conversation = conversation_create(owner=actor.user, **_settings_of(call))
        ApiConversation.objects.create(conversation=conversation, token=token)
        return reply_begin(
            actor=actor,
            conversation=conversation,
            action=Transcript(earlier=call.earlier, text=call.text),
        )


def api_reply_begin(*, token: ApiToken, call: ApiCall) -> ReplyBegun:
    """Store the call as the token owner's conversation and start its reply (stored
    streaming; launch its runner next), or refuse with an `ApiError` and nothing stored.

    The reply is this process's from here on (no sweep takes it) until it is launched.
    """
    actor = actor_for_user(token.owner)
    _check_model(actor, call.model)
    try:
        begun = _begin(actor, token, call)
    except SendRateLimited as exc:
        raise ApiError(
            "rate_limit", exc.message, retry_after=rate_limit_wait(user_id=actor.user.pk)
        ) from exc
    except ReplyInProgress as exc:
        raise ApiError("conflict", exc.message) from exc
    except OverBudget as exc:
        raise ApiError("budget", exc.message) from exc
    except ValidationError as exc:
        raise _field_error(exc) from exc
    reply_starting(begun.reply.pk)
    return begun
