"""Each API's own bodies: errors, whole replies, and streamed events."""

import json
import time
from typing import Any

from conversations.gateway import ReplyError
from conversations.models import Turn

from .calls import ApiError

# --- errors ------------------------------------------------------------------

_OPENAI_TYPES = {
    "invalid_request": ("invalid_request_error", None),
    "authentication": ("invalid_request_error", "invalid_api_key"),
    "permission": ("invalid_request_error", "model_not_allowed"),
    "not_found": ("invalid_request_error", "not_found"),
    "conflict": ("invalid_request_error", "conflict"),
    "too_large": ("invalid_request_error", "request_too_large"),
    "rate_limit": ("rate_limit_error", "rate_limit_exceeded"),
    "budget": ("insufficient_quota", "insufficient_quota"),
    "upstream": ("server_error", "upstream_error"),
    "overloaded": ("server_error", "overloaded"),
    "timeout": ("server_error", "timeout"),
    "unavailable": ("server_error", "unavailable"),
}
_ANTHROPIC_TYPES = {
    "invalid_request": "invalid_request_error",
    "authentication": "authentication_error",
    "permission": "permission_error",
    "not_found": "not_found_error",
    "conflict": "invalid_request_error",
    "too_large": "request_too_large",
    "rate_limit": "rate_limit_error",
    "budget": "billing_error",
    "upstream": "api_error",
    "overloaded": "overloaded_error",
    "timeout": "api_error",
    "unavailable": "api_error",
}


def openai_error(error: ApiError) -> dict[str, Any]:
    kind, code = _OPENAI_TYPES[error.kind]
    if error.kind == "not_found" and error.param == "model":
        code = "model_not_found"
    return {"error": {"message": error.message, "type": kind, "param": error.param, "code": code}}


def anthropic_error(error: ApiError) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": _ANTHROPIC_TYPES[error.kind], "message": error.message},
    }


def error_of_reply(turn: Turn, failure: ReplyError | None) -> ApiError:
    """A reply that ended without its whole text, as an error for the caller: the
    message a person would see, never the upstream's body."""
    message = turn.error_message or "The reply ended before it was complete."
    if failure is None:
        return ApiError("upstream", message)
    if failure.status in (429, 503, 529):
        retry = None if failure.retry_after is None else max(1, round(failure.retry_after))
        return ApiError("overloaded", message, retry_after=retry)
    if failure.kind in ("first_token_timeout", "headers_timeout", "stall"):
        return ApiError("timeout", message)
    return ApiError("upstream", message)


# --- OpenAI Chat Completions -----------------------------------------------------

FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}


def _openai_usage(turn: Turn) -> dict[str, int]:
    prompt, completion = turn.input_tokens or 0, turn.output_tokens or 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


class OpenAIShape:
    def __init__(self, *, reply_id: int, model: str) -> None:
        self.id = f"chatcmpl-{reply_id}"
        self.model = model
        self.created = int(time.time())

    def completion(self, turn: Turn) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": turn.content, "refusal": None},
                    "finish_reason": FINISH_REASONS.get(turn.stop_reason, "stop"),
                    "logprobs": None,
                }
            ],
            "usage": _openai_usage(turn),
        }

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }

    @staticmethod
    def _event(payload: dict[str, Any] | str) -> bytes:
        data = payload if isinstance(payload, str) else json.dumps(payload)
        return f"data: {data}\n\n".encode()

    def start(self) -> bytes:
        return self._event(self._chunk({"role": "assistant", "content": ""}))

    def text(self, piece: str) -> bytes:
        return self._event(self._chunk({"content": piece}))

    def end(self, turn: Turn, *, include_usage: bool) -> bytes:
        finish = FINISH_REASONS.get(turn.stop_reason, "stop")
        events = [self._event(self._chunk({}, finish))]
        if include_usage:
            usage = {**self._chunk({}), "choices": [], "usage": _openai_usage(turn)}
            events.append(self._event(usage))
        events.append(self._event("[DONE]"))
        return b"".join(events)

    def failure(self, error: ApiError) -> bytes:
        return self._event(openai_error(error))


# --- Anthropic Messages -----------------------------------------------------------


class AnthropicShape:
    def __init__(self, *, reply_id: int, model: str) -> None:
        self.id = f"msg_{reply_id}"
        self.model = model

    def _message(self, turn: Turn | None) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [{"type": "text", "text": turn.content}] if turn is not None else [],
            "stop_reason": (turn.stop_reason or "end_turn") if turn is not None else None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": (turn.input_tokens or 0) if turn is not None else 0,
                "output_tokens": (turn.output_tokens or 0) if turn is not None else 0,
            },
        }

    def message(self, turn: Turn) -> dict[str, Any]:
        return self._message(turn)

    @staticmethod
    def _event(name: str, payload: dict[str, Any]) -> bytes:
        return f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode()

    def start(self) -> bytes:
        block = {"type": "text", "text": ""}
        return b"".join(
            [
                self._event(
                    "message_start", {"type": "message_start", "message": self._message(None)}
                ),
                self._event(
                    "content_block_start",
                    {"type": "content_block_start", "index": 0, "content_block": block},
                ),
                self._event("ping", {"type": "ping"}),
            ]
        )

    def text(self, piece: str) -> bytes:
        delta = {"type": "text_delta", "text": piece}
        return self._event(
            "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
        )

    def end(self, turn: Turn, *, include_usage: bool = True) -> bytes:
        delta = {"stop_reason": turn.stop_reason or "end_turn", "stop_sequence": None}
        usage = {"input_tokens": turn.input_tokens or 0, "output_tokens": turn.output_tokens or 0}
        return b"".join(
            [
                self._event("content_block_stop", {"type": "content_block_stop", "index": 0}),
                self._event(
                    "message_delta", {"type": "message_delta", "delta": delta, "usage": usage}
                ),
                self._event("message_stop", {"type": "message_stop"}),
            ]
        )

    def failure(self, error: ApiError) -> bytes:
        return self._event("error", anthropic_error(error))
