"""Thin views: translate HTTP into selector and service calls."""

import asyncio
import uuid

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.db import connection
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from .forms import ConversationCreateForm, ConversationSettingsForm
from .gateway import model_available
from .models import Conversation
from .selectors import conversation_get_for, conversation_list_for, turn_active, turns_recent
from .services import conversation_create as create_conversation
from .services import conversation_update


def _is_htmx(request: HttpRequest) -> bool:
    return request.headers.get("HX-Request") == "true"


def _models_context() -> list[dict[str, object]]:
    return [
        {"id": model_id, "label": spec["label"], "available": model_available(model_id)}
        for model_id, spec in settings.CHAT_MODELS.items()
    ]


def _get_conversation(request: HttpRequest, conversation_id: uuid.UUID) -> Conversation:
    conversation = conversation_get_for(user=request.user, conversation_id=conversation_id)
    if conversation is None:
        raise Http404("No such conversation.")
    return conversation


@login_required
@require_GET
def conversation_list(request: HttpRequest) -> HttpResponse:
    return _list_page(
        request, ConversationCreateForm(initial={"model": settings.CHAT_DEFAULT_MODEL})
    )


def _list_page(
    request: HttpRequest, form: ConversationCreateForm, status: int = 200
) -> HttpResponse:
    conversations = conversation_list_for(user=request.user)[:200]
    return render(
        request,
        "conversations/list.html",
        {"conversations": conversations, "form": form, "models": _models_context()},
        status=status,
    )


@login_required
@require_POST
def conversation_create(request: HttpRequest) -> HttpResponse:
    form = ConversationCreateForm(request.POST)
    if form.is_valid():
        try:
            conversation = create_conversation(owner=request.user, **form.cleaned_data)
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            return redirect("conversation-detail", conversation_id=conversation.pk)
    return _list_page(request, form, status=400)


@login_required
@require_GET
def conversation_detail(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponse:
    conversation = _get_conversation(request, conversation_id)
    context = {
        "conversation": conversation,
        "turns": turns_recent(conversation=conversation, limit=settings.CHAT_VISIBLE_TURNS),
        "active_turn": turn_active(conversation_id=conversation.pk),
        "settings_form": _settings_form(conversation),
        "models": _models_context(),
    }
    template = (
        "conversations/partials/chat.html" if _is_htmx(request) else "conversations/page.html"
    )
    return render(request, template, context)


def _settings_form(conversation: Conversation) -> ConversationSettingsForm:
    return ConversationSettingsForm(
        initial={
            name: getattr(conversation, name)
            for name in ("model", "system_prompt", "temperature", "top_p", "top_k", "max_tokens")
        }
    )


@login_required
@require_POST
def conversation_settings(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponse:
    conversation = _get_conversation(request, conversation_id)
    form = ConversationSettingsForm(request.POST)
    saved = False
    if form.is_valid():
        try:
            conversation_update(conversation=conversation, **form.cleaned_data)
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            saved = True
    if not _is_htmx(request) and saved:
        return redirect("conversation-detail", conversation_id=conversation.pk)
    return render(
        request,
        "conversations/partials/settings.html",
        {
            "conversation": conversation,
            "settings_form": form,
            "saved": saved,
            "models": _models_context(),
        },
        status=200 if saved or not form.errors else 400,
    )


def _database_ok() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        return cursor.fetchone() == (1,)


async def _channel_layer_ok() -> bool:
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "health.ping"})
    message = await asyncio.wait_for(layer.receive(channel), timeout=2)
    return bool(message.get("type") == "health.ping")


@never_cache
async def healthz(request: HttpRequest) -> JsonResponse:
    """No login: the database and the channel layer answer, or 503 names the part that did not."""
    result = {"status": "ok", "database": "ok", "channel_layer": "ok"}
    try:
        if not await database_sync_to_async(_database_ok)():
            result["database"] = "error"
    except Exception:
        result["database"] = "error"
    try:
        if not await _channel_layer_ok():
            result["channel_layer"] = "error"
    except Exception:
        result["channel_layer"] = "error"
    failed = result["database"] != "ok" or result["channel_layer"] != "ok"
    if failed:
        result["status"] = "error"
    return JsonResponse(result, status=503 if failed else 200)
