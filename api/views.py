"""The programmatic API: OpenAI Chat Completions and Anthropic Messages over the chat's
own machinery (a conversation of the token's owner, the reply runner, the ledger).

Views only translate HTTP into calls: authenticate, read the body (`calls.py`),
begin the reply (`services.py`), answer in the caller's shape (`shapes.py`).
"""

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from conversations.actors import actor_for_user
from conversations.gateway import model_available
from conversations.models import Turn
from conversations.replies import ReplyRunner, reply_launch, reply_not_starting
from conversations.services import ReplyBegun

from .calls import ApiCall, ApiError, anthropic_call, openai_call
from .feed import ReplyFeed, in_database_thread, reply_final
from .models import ApiToken
from .services import api_reply_begin
from .shapes import AnthropicShape, OpenAIShape, anthropic_error, error_of_reply, openai_error
from .tokens import token_authenticate

Shape = OpenAIShape | AnthropicShape


@dataclass(frozen=True)
class Api:
    """What differs between the two shapes."""

    parse: Callable[..., ApiCall]
    shape: type[OpenAIShape] | type[AnthropicShape]
    error_body: Callable[[ApiError], dict[str, Any]]
    x_api_key: bool  # Anthropic's SDK sends its key in `x-api-key`
    statuses: dict[str, int]  # where the shape's status differs from `ApiError.status`


# OpenAI reports a spent quota as a 429 `insufficient_quota`; Anthropic an overloaded
# model as a 529.
OPENAI = Api(openai_call, OpenAIShape, openai_error, x_api_key=False, statuses={"budget": 429})
ANTHROPIC = Api(
    anthropic_call, AnthropicShape, anthropic_error, x_api_key=True, statuses={"overloaded": 529}
)


def _error(api: Api, error: ApiError, headers: dict[str, str] | None = None) -> JsonResponse:
    status = api.statuses.get(error.kind, error.status)
    response = JsonResponse(api.error_body(error), status=status, headers=headers)
    if error.retry_after is not None:
        response["retry-after"] = str(error.retry_after)
    if error.kind == "budget":
        response["x-should-retry"] = "false"  # the SDKs would retry a 4xx quota error
    return response


def _secret(request: HttpRequest, api: Api) -> str:
    header = request.headers.get("authorization", "")
    secret = header[7:].strip() if header[:7].lower() == "bearer " else ""
    if not secret and api.x_api_key:
        secret = request.headers.get("x-api-key", "").strip()
    return secret


def _token(secret: str) -> ApiToken:
    token = token_authenticate(secret) if secret else None
    if token is None:
        raise ApiError("authentication", "Invalid or revoked API token.")
    return token


def _begin(secret: str, call: ApiCall | ApiError) -> ReplyBegun:
    """One visit to the database thread: the token first (a bad one is a 401 whatever
    the body says), then the request's refusal or its reply."""
    token = _token(secret)
    if isinstance(call, ApiError):
        raise call
    return api_reply_begin(token=token, call=call)


def _body(request: HttpRequest) -> Any:
    try:
        raw = request.body
    except RequestDataTooBig as exc:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        raise ApiError("too_large", f"Request bodies are limited to {limit} bytes.") from exc
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ApiError("invalid_request", "The body is not valid JSON.", param="body") from exc


def _models_for(secret: str) -> list[str]:
    actor = actor_for_user(_token(secret).owner)
    return [m for m in settings.CHAT_MODELS if model_available(m) and actor.may_use(m)]


@csrf_exempt
@require_GET
async def models(request: HttpRequest) -> HttpResponse:
    """The models the token's owner may use; Anthropic's list shape when the caller
    sends `anthropic-version` (as its SDK does), OpenAI's otherwise."""
    anthropic = "anthropic-version" in request.headers
    api = ANTHROPIC if anthropic else OPENAI
    try:
        ids = await in_database_thread(_models_for, _secret(request, api))
    except ApiError as error:
        return _error(api, error)
    if anthropic:
        data = [
            {
                "type": "model",
                "id": model,
                "display_name": settings.CHAT_MODELS[model]["label"],
                "created_at": "2025-01-01T00:00:00Z",
            }
            for model in ids
        ]
        first, last = (ids[0], ids[-1]) if ids else (None, None)
        return JsonResponse({"data": data, "has_more": False, "first_id": first, "last_id": last})
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "system"} for m in ids]
    return JsonResponse({"object": "list", "data": data})


@csrf_exempt
@require_POST
async def chat_completions(request: HttpRequest) -> HttpResponseBase:
    return await _reply(request, OPENAI)


@csrf_exempt
@require_POST
async def messages(request: HttpRequest) -> HttpResponseBase:
    return await _reply(request, ANTHROPIC)


async def _reply(request: HttpRequest, api: Api) -> HttpResponseBase:
    call: ApiCall | ApiError
    try:
        call = api.parse(
            _body(request), conversation_id=request.headers.get("x-conversation-id", "")
        )
    except ApiError as error:
        call = error
    try:
        begun = await in_database_thread(_begin, _secret(request, api), call)
    except ApiError as error:
        return _error(api, error)
    assert isinstance(call, ApiCall)  # a refused one was raised by `_begin`
    try:
        # The reply runs in a context of its own (ReplyRunner.start), not this request's.
        runner = await reply_launch(turn=begun.reply, request=begun.request)
    finally:
        reply_not_starting(begun.reply.pk)
    shape = api.shape(reply_id=begun.reply.pk, model=call.model)
    headers = {"x-conversation-id": str(begun.conversation.pk)}
    if call.stream:
        return await _streamed(api, runner, shape, call, headers)
    runner.announced.set()
    try:
        # asyncio.wait, not await: a client that goes away cancels this view, which
        # must stop the reply (below), not cancel its task from under the runner.
        assert runner.task is not None
        await asyncio.wait({runner.task})
    except asyncio.CancelledError:
        runner.stop()
        raise
    turn = await in_database_thread(reply_final, runner.turn_id)
    if turn.state != Turn.State.COMPLETE:
        return _error(api, error_of_reply(turn, runner.response.error), headers)
    body = shape.completion(turn) if isinstance(shape, OpenAIShape) else shape.message(turn)
    return JsonResponse(body, headers=headers)


async def _streamed(
    api: Api, runner: ReplyRunner, shape: Shape, call: ApiCall, headers: dict[str, str]
) -> HttpResponseBase:
    """Server-sent events in the caller's shape. The answer waits for the first text:
    a reply that fails before its first word is an HTTP error the SDKs raise."""
    feed = ReplyFeed(conversation_id=runner.conversation_id)
    try:
        await feed.subscribe()
        runner.announced.set()
        pieces = feed.pieces(runner)
        first = await anext(pieces, "")
    except BaseException:
        runner.stop()
        await feed.unsubscribe()
        raise
    if not first and feed.final is not None and feed.final.state != Turn.State.COMPLETE:
        await feed.unsubscribe()
        return _error(api, error_of_reply(feed.final, runner.response.error), headers)
    events = _events(shape, runner, feed, pieces, first, include_usage=call.include_usage)
    return StreamingHttpResponse(
        events,
        content_type="text/event-stream; charset=utf-8",
        headers={**headers, "cache-control": "no-cache", "x-accel-buffering": "no"},
    )


async def _events(
    shape: Shape,
    runner: ReplyRunner,
    feed: ReplyFeed,
    pieces: AsyncIterator[str],
    first: str,
    *,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    try:
        yield shape.start()
        if first:
            yield shape.text(first)
        async for piece in pieces:
            yield shape.text(piece)
        final = feed.final
        if final is not None and final.state == Turn.State.COMPLETE:
            yield shape.end(final, include_usage=include_usage)
        else:
            failed = (
                final
                if final is not None
                else await in_database_thread(reply_final, runner.turn_id)
            )
            yield shape.failure(error_of_reply(failed, runner.response.error))
    finally:
        # A client that went away mid-stream: the reply ends `cancelled`, its text kept
        # and billed. (Once the reply has ended this does nothing.)
        runner.stop()
        await feed.unsubscribe()
