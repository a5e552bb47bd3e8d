"""Titles written in the background: after a conversation's first reply completes,
the cheapest configured model names it, in a task of its own in the process that
ran the reply; every open page of the owner is shown the new title.

A title never delays, fails or refuses the chat: whatever goes wrong (rate limit,
budget, upstream, timeout), the first message's words stay the title.
"""

import asyncio
import contextvars
import logging
import uuid
from contextlib import aclosing

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from accounts.services import user_group
from chatsite.outages import CHANNEL_LAYER, reached

from .gateway import Finished, ReplyError, Response, provider_for
from .models import Conversation, Turn
from .services.titles import TitleCall, title_begin, title_finish

logger = logging.getLogger("conversations.titles")

# A conversation starts with its first message at position 1, its reply at 2.
FIRST_REPLY_POSITION = 2
_writing: set[asyncio.Task[str | None]] = set()


def title_write_later(*, turn: Turn) -> None:
    """After a reply ended: if it completed, maybe title its conversation (`title_begin`
    decides), in a task of its own on the running loop."""
    if not settings.CHAT_TITLES or turn.state != Turn.State.COMPLETE:
        return
    if turn.position != FIRST_REPLY_POSITION:
        return  # not a first reply: no need to ask the database
    task = asyncio.get_running_loop().create_task(
        title_write(turn_id=turn.pk), name=f"title-{turn.pk}", context=contextvars.Context()
    )
    _writing.add(task)
    task.add_done_callback(_writing.discard)


async def title_write(*, turn_id: int) -> str | None:
    """Write the title the reply's conversation is due, if any; the title stored, or None."""
    try:
        call = await database_sync_to_async(title_begin)(turn_id=turn_id)
    except Exception as exc:
        logger.warning("title_failed turn=%s step=begin error=%s", turn_id, type(exc).__name__)
        return None
    if call is None:
        return None
    response = await _title_call(call)
    try:
        title = await database_sync_to_async(title_finish)(call=call, response=response)
    except Exception as exc:
        logger.warning(
            "title_failed conversation=%s step=finish error=%s",
            call.conversation_id,
            type(exc).__name__,
        )
        return None
    if title is not None:
        await reached(
            CHANNEL_LAYER,
            title_broadcast(
                owner_id=call.owner_id, conversation_id=call.conversation_id, title=title
            ),
        )
    return title


async def _title_call(call: TitleCall) -> Response:
    """The model's answer, within CHAT_TITLE_TIMEOUT; failures are logged (without
    content or secrets) and leave the response unfinished."""
    response = Response()
    try:
        async with asyncio.timeout(settings.CHAT_TITLE_TIMEOUT):
            provider = provider_for(call.request.model)
            async with aclosing(provider.stream(call.request)) as events:
                async for event in events:
                    response.add(event)
                    if isinstance(event, Finished | ReplyError):
                        break
    except TimeoutError:
        logger.warning("title_timeout conversation=%s model=%s", call.conversation_id,
                       call.request.model)  # fmt: skip
    except Exception as exc:
        logger.warning("title_failed conversation=%s step=call error=%s", call.conversation_id,
                       type(exc).__name__)  # fmt: skip
    if response.error is not None:
        error = response.error
        logger.warning(
            "title_error conversation=%s kind=%s status=%s code=%s log_id=%s",
            call.conversation_id,
            error.kind,
            error.status,
            error.code,
            response.log_id,
        )
    return response


async def title_broadcast(*, owner_id: int, conversation_id: uuid.UUID, title: str) -> None:
    """Show every open chat page of the owner a conversation's new title."""
    await get_channel_layer().group_send(
        user_group(owner_id),
        {"type": "conversation.titled", "conversation_id": str(conversation_id), "title": title},
    )


def title_broadcast_sync(conversation: Conversation) -> None:
    """`title_broadcast` from synchronous code (a rename); silent while the channel
    layer is down (pages show the title when they load)."""
    async_to_sync(reached)(
        CHANNEL_LAYER,
        title_broadcast(
            owner_id=conversation.owner_id,
            conversation_id=conversation.pk,
            title=conversation.display_title,
        ),
    )
