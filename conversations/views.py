"""Thin views: translate HTTP into selector and service calls."""

import asyncio
import uuid
from typing import Any
from urllib.parse import urlsplit

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db import connection
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from billing.budgets import allowances_for
from chatsite.layers import channel_layer_ping
from chatsite.outages import DATABASE, outage_over, outage_seen
from teams.sharing import conversation_share

from .actors import Actor, actor_for_user
from .forms import (
    ConversationCreateForm,
    ConversationRenameForm,
    ConversationSearchForm,
    ConversationSettingsForm,
    PresetCreateForm,
    form_error,
    form_submit,
    sampling_of,
)
from .gateway import model_available
from .models import Conversation
from .replies import reply_launch, reply_not_starting, reply_starting
from .selectors import (
    conversation_get_for,
    conversation_readable_for,
    conversation_search_for,
    preset_get_for,
    presets_for,
    sidebar_page_for,
    turns_before,
    turns_recent,
    turns_shown,
)
from .services import (
    ReplyBegun,
    SendRefused,
    conversation_archive,
    conversation_delete,
    conversation_pin,
    conversation_rename,
    conversation_start,
    conversation_update,
    preset_create_from,
    preset_delete,
    preset_may_delete,
    preset_settings,
)
from .services import conversation_create as create_conversation
from .titles import title_broadcast_sync

CONVERSATIONS_PER_PAGE = 25


def _is_htmx(request: HttpRequest) -> bool:
    return request.headers.get("HX-Request") == "true"


def _models_context(actor: Actor) -> list[dict[str, object]]:
    models = []
    for model_id, spec in settings.CHAT_MODELS.items():
        available = model_available(model_id)
        allowed = actor.may_use(model_id)
        reason = (
            ""
            if available and allowed
            else (" (not configured)" if not available else " (not allowed for your team)")
        )
        models.append(
            {"id": model_id, "label": spec["label"], "available": available and allowed,
             "reason": reason}
        )  # fmt: skip
    return models


def _get_conversation(request: HttpRequest, conversation_id: uuid.UUID) -> Conversation:
    conversation = conversation_get_for(user=request.user, conversation_id=conversation_id)
    if conversation is None:
        raise Http404("No such conversation.")
    return conversation


def _get_readable_conversation(request: HttpRequest, conversation_id: uuid.UUID) -> Conversation:
    """The owner's conversation, or a teammate's shared with them (read-only)."""
    conversation = conversation_readable_for(user=request.user, conversation_id=conversation_id)
    if conversation is None:
        raise Http404("No such conversation.")
    return conversation


@login_required
@require_GET
def conversation_list(request: HttpRequest) -> HttpResponse:
    """The home page: a new, empty chat; with `q` (or `page`), search results."""
    if "q" in request.GET or "page" in request.GET:
        return _search_page(request)
    initial: dict[str, Any] = {"model": settings.CHAT_DEFAULT_MODEL,
                               "max_tokens": settings.CHAT_DEFAULT_MAX_TOKENS}  # fmt: skip
    preset = preset_get_for(user=request.user, preset_id=request.GET.get("preset") or "")
    if preset is not None:
        initial.update(preset_settings(preset))
        initial["sampling"] = sampling_of(preset)
    return _new_chat_page(request, ConversationCreateForm(initial=initial), preset=preset)


def _new_chat_page(
    request: HttpRequest,
    form: ConversationCreateForm,
    *,
    preset: Any = None,
    error: str = "",
    status: int = 200,
) -> HttpResponse:
    actor = actor_for_user(request.user)  # once per request: team, models, budgets
    context = {
        "form": form,
        "preset": preset,
        "error": error,
        "models": _models_context(actor),
        "presets": presets_for(user=request.user),
        "allowances": allowances_for(actor=actor),
        "membership": actor.membership,
        "default_model": form["model"].value() or settings.CHAT_DEFAULT_MODEL,
        "cloudflare_configured": settings.CLOUDFLARE_CONFIGURED,
    }
    return render(request, "conversations/new.html", context, status=status)


def _search_page(request: HttpRequest) -> HttpResponse:
    status = 200
    search = ConversationSearchForm(request.GET)
    if search.is_valid():
        query = search.cleaned_data["q"]
        conversations: Any = conversation_search_for(user=request.user, query=query)
        if request.GET.get("source") == "api":
            conversations = conversations.filter(api_origin__isnull=False)
        search_error = ""
    else:
        # A query nothing can be stored as finds nothing; say why instead.
        query, conversations = "", []
        search_error = form_error(search)
        status = 400
    page = Paginator(conversations, CONVERSATIONS_PER_PAGE).get_page(request.GET.get("page"))
    context = {
        "page_obj": page,
        "query": query,
        "search_error": search_error,
        "source": request.GET.get("source", ""),
    }
    template = (
        "conversations/partials/conversation_list.html"
        if _is_htmx(request) and request.GET.get("fragment") == "list"
        else "conversations/list.html"
    )
    return render(request, template, context, status=status)


@login_required
@require_GET
def sidebar_more(request: HttpRequest) -> HttpResponse:
    """The sidebar's next page of conversations (loaded as the list scrolls)."""
    try:
        page = max(1, int(request.GET.get("page", "1")))
    except ValueError:
        return HttpResponse("Give `page` as a number.", status=400)
    return render(
        request,
        "conversations/partials/sidebar_sections.html",
        {
            "sidebar": sidebar_page_for(user=request.user, page=page),
            "sidebar_current": request.GET.get("current", ""),
            "continues": request.GET.get("after", ""),
        },
    )


def _create_sync(request: HttpRequest) -> HttpResponse:
    """A conversation without a first message (scripts, and presets' buttons)."""
    preset_id = request.POST.get("preset")
    if preset_id:
        preset = preset_get_for(user=request.user, preset_id=preset_id)
        if preset is None:
            raise Http404("No such preset.")
        try:
            conversation = create_conversation(owner=request.user, **preset_settings(preset))
        except ValidationError as exc:
            form = ConversationCreateForm(initial={"model": settings.CHAT_DEFAULT_MODEL})
            return _new_chat_page(request, form, error=" ".join(exc.messages), status=400)
        return redirect("conversation-detail", conversation_id=conversation.pk)
    form = ConversationCreateForm(request.POST)
    if form.is_valid():
        try:
            fields = {k: v for k, v in form.cleaned_data.items() if k != "message"}
            conversation = create_conversation(owner=request.user, **fields)
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            return redirect("conversation-detail", conversation_id=conversation.pk)
    return _new_chat_page(request, form, status=400)


def _start_sync(request: HttpRequest) -> ReplyBegun | HttpResponse:
    """Store a new conversation with its first message and begin the reply; or the
    new chat again, with the error and what was typed (nothing stored)."""
    form = ConversationCreateForm(request.POST)
    if not form.is_valid():
        return _new_chat_page(request, form, status=400)
    fields = dict(form.cleaned_data)
    text = fields.pop("message")
    try:
        begun = conversation_start(actor=actor_for_user(request.user), text=text, **fields)
    except SendRefused as exc:
        return _new_chat_page(request, form, error=exc.message, status=400)
    except ValidationError as exc:
        form.add_error(None, exc)
        return _new_chat_page(request, form, status=400)
    reply_starting(begun.reply.pk)
    return begun


@login_required
@require_POST
async def conversation_create(request: HttpRequest) -> HttpResponse:
    """With a `message`: the new chat's first send (the conversation is stored with it,
    its reply starts on this server, and the page moves to the chat, where the reply
    streams). Without one: an empty conversation, as scripts make them."""
    if not request.POST.get("message", "").strip():
        return await sync_to_async(_create_sync)(request)
    begun = await sync_to_async(_start_sync)(request)
    if isinstance(begun, HttpResponse):
        return begun
    try:
        runner = await reply_launch(turn=begun.reply, request=begun.request)
    finally:
        reply_not_starting(begun.reply.pk)
    runner.announced.set()  # no page shows it yet: the chat page catches up from the start
    return redirect("conversation-detail", conversation_id=begun.conversation.pk)


@login_required
@require_GET
def conversation_detail(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponse:
    """The chat page; a teammate's shared conversation opens read-only."""
    conversation = _get_readable_conversation(request, conversation_id)
    read_only = conversation.owner_id != request.user.pk
    window = _turn_window(conversation)
    actor = actor_for_user(request.user)
    context = {
        "conversation": conversation,
        **window,
        # Stop is offered while a reply is written, on the path shown or another one.
        "active_turn": next((t for t in window["turns"] if t.is_active), None)
        or conversation.reply_in_progress,  # type: ignore[attr-defined]
        "read_only": read_only,
        "settings_form": None if read_only else _settings_form(conversation),
        "models": _models_context(actor),
        "membership": actor.membership,
        "review_accesses": []
        if read_only
        else conversation.review_accesses.select_related("reviewer")[:5],
    }
    template = (
        "conversations/partials/chat.html" if _is_htmx(request) else "conversations/page.html"
    )
    return render(request, template, context)


@login_required
@require_GET
def conversation_turns_earlier(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponse:
    """The active path's latest turns (as the chat page shows them: a page loads them
    again when another version is shown), or with `before` older ones, for the "load
    earlier" button of a long conversation."""
    conversation = _get_readable_conversation(request, conversation_id)
    before: int | None = None
    if "before" in request.GET:
        try:
            before = int(request.GET["before"])
        except ValueError:
            return HttpResponse("Give `before` as a turn position.", status=400)
    return render(
        request,
        "conversations/partials/turns_earlier.html",
        {
            "conversation": conversation,
            **_turn_window(conversation, before=before),
            "read_only": conversation.owner_id != request.user.pk,
        },
    )


@login_required
@require_GET
def conversation_turn(
    request: HttpRequest, conversation_id: uuid.UUID, turn_id: int
) -> HttpResponse:
    """One turn as the chat shows it: a reply too large for one socket frame loads here."""
    conversation = _get_readable_conversation(request, conversation_id)
    turn = turns_shown(conversation.turns.filter(pk=turn_id)).first()
    if turn is None:
        raise Http404("No such turn.")
    return render(
        request,
        "conversations/partials/turn.html",
        {"turn": turn, "oob": False, "read_only": conversation.owner_id != request.user.pk},
    )


def _turn_window(conversation: Conversation, *, before: int | None = None) -> dict[str, Any]:
    """The latest `CHAT_VISIBLE_TURNS` turns (before a position, for "load earlier"),
    whether there are earlier ones, and where the window starts."""
    limit = settings.CHAT_VISIBLE_TURNS
    if before is None:
        turns = turns_recent(conversation=conversation, limit=limit + 1)
    else:
        turns = turns_before(conversation=conversation, position=before, limit=limit + 1)
    has_earlier = len(turns) > limit
    turns = turns[-limit:]
    return {
        "turns": turns,
        "has_earlier": has_earlier,
        "earliest_position": turns[0].position if turns else (before or 0),
    }


def _settings_form(conversation: Conversation) -> ConversationSettingsForm:
    initial: dict[str, Any] = {name: getattr(conversation, name) for name in Conversation.FIELDS}
    initial["sampling"] = sampling_of(conversation)
    return ConversationSettingsForm(initial=initial)


def _settings_panel(
    request: HttpRequest,
    conversation: Conversation,
    form: ConversationSettingsForm,
    *,
    saved: str = "",
    preset_error: str = "",
    status: int = 200,
) -> HttpResponse:
    return render(
        request,
        "conversations/partials/settings.html",
        {
            "conversation": conversation,
            "settings_form": form,
            "saved": saved,
            "preset_error": preset_error,
            "models": _models_context(actor_for_user(request.user)),
        },
        status=status,
    )


@login_required
@require_POST
def conversation_settings(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponse:
    conversation = _get_conversation(request, conversation_id)
    form = ConversationSettingsForm(request.POST)
    if form.is_valid():
        try:
            conversation_update(conversation=conversation, **form.cleaned_data)
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            if not _is_htmx(request):
                return redirect("conversation-detail", conversation_id=conversation.pk)
            return _settings_panel(
                request,
                conversation,
                _settings_form(conversation),
                saved="Saved: applies to the next reply.",
            )
    return _settings_panel(request, conversation, form, status=400)


@login_required
@require_POST
def conversation_rename_view(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponse:
    conversation = _get_conversation(request, conversation_id)
    _, error = form_submit(
        ConversationRenameForm(request.POST),
        lambda data: conversation_rename(conversation=conversation, title=data["title"]),
    )
    if not error:
        title_broadcast_sync(conversation)  # the person's other tabs follow
    if not _is_htmx(request):
        if error:
            return HttpResponse(error, status=400)
        return HttpResponseRedirect(_next_on_this_site(request))
    return render(
        request,
        "conversations/partials/title.html",
        {"conversation": conversation, "error": error, "link": request.POST.get("link") == "1"},
        status=400 if error else 200,
    )


def _next_on_this_site(request: HttpRequest) -> str:
    """The posted `next` when it is a URL on this site, else the conversation list.

    Never another host or scheme (nor http from an https page), and never a URL
    name to resolve: a bare word is not taken as a relative path either.
    """
    next_url = request.POST.get("next", "").strip()
    if url_has_allowed_host_and_scheme(
        next_url, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ) and (next_url.startswith("/") or urlsplit(next_url).netloc):
        return next_url
    return reverse("conversation-list")


@login_required
@require_http_methods(["GET", "POST"])
def conversation_delete_view(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponse:
    """GET asks for confirmation; POST deletes."""
    conversation = _get_conversation(request, conversation_id)
    if request.method == "POST":
        conversation_delete(conversation=conversation)
        return redirect("conversation-list")
    return render(request, "conversations/delete.html", {"conversation": conversation})


@login_required
@require_POST
def preset_create(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponse:
    conversation = _get_conversation(request, conversation_id)
    preset, error = form_submit(
        PresetCreateForm(request.POST),
        lambda data: preset_create_from(
            actor=actor_for_user(request.user),
            conversation=conversation,
            name=data["name"],
            for_team=data["for_team"],
        ),
    )
    if error:
        return _settings_panel(
            request, conversation, _settings_form(conversation), preset_error=error, status=400
        )
    return _settings_panel(
        request,
        conversation,
        _settings_form(conversation),
        saved=f"Saved as preset “{preset.name}”: start new chats from it on the list page.",
    )


@login_required
@require_POST
def preset_delete_view(request: HttpRequest, preset_id: int) -> HttpResponse:
    preset = preset_get_for(user=request.user, preset_id=preset_id)
    if preset is None or not preset_may_delete(preset=preset, actor=actor_for_user(request.user)):
        raise Http404("No such preset.")
    preset_delete(preset=preset)
    return redirect("preset-list")


@login_required
@require_POST
def conversation_share_view(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponse:
    """The owner shares a conversation read-only with their team, or stops sharing it."""
    conversation = _get_conversation(request, conversation_id)
    actor = actor_for_user(request.user)
    try:
        conversation_share(
            actor=actor, conversation=conversation, shared=request.POST.get("shared") == "1"
        )
    except ValidationError as exc:
        return HttpResponse(" ".join(exc.messages), status=400)
    return render(
        request,
        "conversations/partials/share.html",
        {"conversation": conversation, "membership": actor.membership},
    )


def _sidebar_response(request: HttpRequest, conversation: Conversation) -> HttpResponse:
    """After a change from the sidebar: its list again (htmx), or back where it was."""
    if not _is_htmx(request):
        return HttpResponseRedirect(_next_on_this_site(request))
    return render(
        request,
        "conversations/partials/sidebar_conversations.html",
        {
            "sidebar": sidebar_page_for(user=request.user),
            "sidebar_current": request.POST.get("current", ""),
        },
    )


@login_required
@require_POST
def conversation_pin_view(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponse:
    """`pinned=1` pins a conversation to the top of the sidebar; `pinned=0` unpins it."""
    conversation = _get_conversation(request, conversation_id)
    conversation_pin(conversation=conversation, pinned=request.POST.get("pinned") == "1")
    return _sidebar_response(request, conversation)


@login_required
@require_POST
def conversation_archive_view(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponse:
    """`archived=1` takes a conversation out of the sidebar (search finds it); `0` brings
    it back."""
    conversation = _get_conversation(request, conversation_id)
    conversation_archive(conversation=conversation, archived=request.POST.get("archived") == "1")
    return _sidebar_response(request, conversation)


@login_required
@require_GET
def preset_list(request: HttpRequest) -> HttpResponse:
    """The person's presets and their team's: start a chat from one, or delete it."""
    return render(
        request,
        "conversations/presets.html",
        {"presets": presets_for(user=request.user),
         "membership": actor_for_user(request.user).membership},
    )  # fmt: skip


def _database_ok() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        return cursor.fetchone() == (1,)


# A probe answers within this whatever a dependency does: a stopped PostgreSQL or a
# Redis that stopped answering must not hold the load balancer's probe.
HEALTH_TIMEOUT = 3.0


async def _database_answers() -> bool:
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT):
            answered = await database_sync_to_async(_database_ok)()
    except Exception as exc:
        outage_seen(DATABASE, exc)
        return False
    if answered:
        outage_over(DATABASE)
    return answered


async def _channel_layer_answers() -> bool:
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT):
            return await channel_layer_ping(get_channel_layer())
    except Exception:
        return False  # the layer itself logs when Redis goes and comes back


@never_cache
async def healthz(request: HttpRequest) -> JsonResponse:
    """No login: the database and the channel layer answer, or 503 names the part that did not."""
    database, channel_layer = await asyncio.gather(_database_answers(), _channel_layer_answers())
    result = {
        "status": "ok" if database and channel_layer else "error",
        "database": "ok" if database else "error",
        "channel_layer": "ok" if channel_layer else "error",
    }
    # A 503 adds no log line of its own (chatsite.logs.QuietHealthProbes).
    return JsonResponse(result, status=200 if database and channel_layer else 503)
