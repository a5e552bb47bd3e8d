"""What an API request asks for, read from either shape and checked like the chat's
settings: one `ApiCall`, or an `ApiError` that names the parameter at fault."""

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from conversations.text import UNSTORABLE_MESSAGE, text_is_storable


class ApiError(Exception):
    """A refusal, as each API shape reports it (see `shapes.py`).

    `kind`: invalid_request, authentication, permission, not_found, conflict,
    rate_limit, budget, too_large, overloaded, timeout, upstream, unavailable.
    """

    STATUS = {
        "invalid_request": 400,
        "authentication": 401,
        "budget": 402,
        "permission": 403,
        "not_found": 404,
        "conflict": 409,
        "too_large": 413,
        "rate_limit": 429,
        "upstream": 502,
        "unavailable": 503,
        "overloaded": 503,
        "timeout": 504,
    }

    def __init__(
        self, kind: str, message: str, *, param: str | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.kind, self.message, self.param, self.retry_after = kind, message, param, retry_after

    @property
    def status(self) -> int:
        return self.STATUS[self.kind]


def invalid(param: str, message: str) -> ApiError:
    return ApiError("invalid_request", message, param=param)


@dataclass(frozen=True)
class ApiCall:
    """One request for a reply, whichever shape it came in."""

    model: str
    messages: list[tuple[str, str]]  # (role, text), oldest first; the last is the user's
    max_tokens: int
    system: str = ""
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stream: bool = False
    include_usage: bool = False
    conversation_id: str = ""  # continue this conversation (x-conversation-id)

    @property
    def earlier(self) -> tuple[tuple[str, str], ...]:
        return tuple(self.messages[:-1])

    @property
    def text(self) -> str:
        return self.messages[-1][1]


def _number(body: dict[str, Any], name: str, *, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise invalid(name, f"{name} must be a number from {low:g} to {high:g}.")
    if not low <= value <= high:
        raise invalid(name, f"{name} must be from {low:g} to {high:g}; {value!r} is out of range.")
    return float(value)


def _integer(body: dict[str, Any], name: str, *, low: int, high: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(name, f"{name} must be a whole number.")
    if value < low or (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise invalid(name, f"{name} must be {bound}; {value} is out of range.")
    return value


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise invalid(name, f"{name} must be true or false.")
    return value


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("model", "model is required: one of the ids GET /v1/models lists.")
    return model


def _max_output(model: str) -> int | None:
    spec = settings.CHAT_MODELS.get(model)
    return int(spec["max_output_tokens"]) if spec else None


def _text(content: Any, param: str) -> str:
    """A message's text: a string, or a list of text blocks (joined)."""
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        parts = []
        for number, block in enumerate(content):
            if not isinstance(block, dict) or block.get("type") != "text":
                raise invalid(f"{param}[{number}]", "Only text content is supported.")
            if not isinstance(block.get("text"), str):
                raise invalid(f"{param}[{number}].text", "text must be a string.")
            parts.append(block["text"])
        text = "\n\n".join(parts)
    else:
        raise invalid(param, "content must be a string or a list of text blocks.")
    if not text_is_storable(text):
        raise invalid(param, UNSTORABLE_MESSAGE)
    if len(text) > settings.CHAT_MAX_MESSAGE_CHARS:
        raise invalid(
            param, f"Messages are limited to {settings.CHAT_MAX_MESSAGE_CHARS} characters."
        )
    return text


def _conversation(messages: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """User and assistant messages as the upstream takes them: neighbours of one role
    joined, empty ones left out; it starts with the user and ends with the user."""
    joined: list[tuple[str, str]] = []
    for role, text in messages:
        if not text.strip():
            continue
        if joined and joined[-1][0] == role:
            joined[-1] = (role, joined[-1][1] + "\n\n" + text)
        else:
            joined.append((role, text))
    if not joined or joined[-1][0] != "user":
        raise invalid("messages", "The last message must be a non-empty user message.")
    if joined[0][0] != "user":
        raise invalid(
            "messages", "The first message (after any system message) must be the user's."
        )
    return joined


def _sampling(body: dict[str, Any]) -> tuple[float | None, float | None, int | None]:
    temperature = _number(body, "temperature", low=0, high=1)
    top_p = _number(body, "top_p", low=0, high=1)
    if temperature is not None and top_p is not None:
        raise invalid(
            "top_p",
            "Set temperature or top_p, not both: these models refuse both. "
            "Drop top_p (or temperature).",
        )
    return temperature, top_p, _integer(body, "top_k", low=1)


def _unsupported(body: dict[str, Any], *names: str) -> None:
    for name in names:
        if body.get(name) not in (None, [], {}, ""):
            raise invalid(name, f"{name} is not supported by this server.")


def _max_tokens(body: dict[str, Any], name: str, model: str, *, required: bool) -> int:
    high = _max_output(model)
    value = _integer(body, name, low=1, high=high)
    if value is None:
        if required:
            raise invalid(name, f"{name} is required.")
        value = min(settings.CHAT_DEFAULT_MAX_TOKENS, high or settings.CHAT_DEFAULT_MAX_TOKENS)
    return value


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise invalid("body", "The request body must be a JSON object.")
    return body


def _messages(body: dict[str, Any], roles: tuple[str, ...]) -> Iterator[tuple[str, str, Any]]:
    """Each message of a request: its parameter name (for errors), its role (one of
    `roles`) and its content, unchecked."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("messages", "messages must be a non-empty list.")
    for number, message in enumerate(messages):
        param = f"messages[{number}]"
        if not isinstance(message, dict):
            raise invalid(param, "Each message must be an object with a role and content.")
        role = message.get("role")
        if role not in roles:
            named = ", ".join(roles[:-1]) + " or " + roles[-1]
            raise invalid(f"{param}.role", f"role must be {named}.")
        yield param, role, message.get("content")


def openai_call(body: Any, *, conversation_id: str = "") -> ApiCall:
    """An OpenAI Chat Completions request."""
    body = _object(body)
    model = _model(body)
    _unsupported(body, "tools", "functions", "tool_choice", "stop", "logprobs", "audio")
    _integer(body, "n", low=1, high=1)
    system: list[str] = []
    messages: list[tuple[str, str]] = []
    for param, role, content in _messages(body, ("system", "developer", "user", "assistant")):
        if role == "assistant" and content is None:
            content = ""
        text = _text(content, f"{param}.content")
        if role in ("system", "developer"):
            if text.strip():
                system.append(text)
        else:
            messages.append((role, text))
    name = (
        "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    )
    temperature, top_p, top_k = _sampling(body)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise invalid("stream_options", "stream_options must be an object.")
    return ApiCall(
        model=model,
        messages=_conversation(messages),
        max_tokens=_max_tokens(body, name, model, required=False),
        system="\n\n".join(system),
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        stream=_flag(body, "stream"),
        include_usage=_flag(options or {}, "include_usage"),
        conversation_id=conversation_id,
    )


def anthropic_call(body: Any, *, conversation_id: str = "") -> ApiCall:
    """An Anthropic Messages request."""
    body = _object(body)
    model = _model(body)
    _unsupported(body, "tools", "tool_choice", "stop_sequences", "thinking")
    system = "" if body.get("system") is None else _text(body["system"], "system")
    messages: list[tuple[str, str]] = []
    for param, role, content in _messages(body, ("user", "assistant")):
        messages.append((role, _text(content, f"{param}.content")))
    temperature, top_p, top_k = _sampling(body)
    return ApiCall(
        model=model,
        messages=_conversation(messages),
        max_tokens=_max_tokens(body, "max_tokens", model, required=True),
        system=system.strip() and system,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        stream=_flag(body, "stream"),
        conversation_id=conversation_id,
    )
