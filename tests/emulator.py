"""A small Cloudflare Workers AI / AI Gateway emulator for tests and local runs.

Standard library only.  It speaks just enough HTTP/1.1 (keep-alive, Content-Length or
chunked request bodies, chunked streamed responses) to stand in for the two upstream routes
the product calls:

* AI Gateway: ``POST /v1/{account}/{gateway}/workers-ai/{model...}``
* Workers AI REST: ``POST /client/v4/accounts/{account}/ai/run/{model...}``

Use it in-process (``GatewayEmulator().start_in_thread()`` or ``await emulator.start()``),
or standalone::

    python -m tests.emulator --port 8787

Replies and faults are scripted with :class:`Behaviour` objects (``emulator.enqueue(...)``,
``emulator.default = ...``); every request is recorded in ``emulator.requests``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import re
import ssl
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Final, Literal, Self
from urllib.parse import unquote

__all__ = [
    "SEED_REPLIES",
    "Behaviour",
    "GatewayEmulator",
    "RecordedRequest",
    "reply_for",
    "split_tokens",
]

logger = logging.getLogger(__name__)

Shape = Literal["anthropic", "workers", "openai"]
Route = Literal["gateway", "rest", "unknown"]
ErrorFormat = Literal["cloudflare", "anthropic"]

# Example prompts and replies of the Claude Sonnet 4 model page, verbatim.  Keys are the last
# user message of the example; values are the example's reply.
SEED_REPLIES: Final[dict[str, str]] = {
    "What are the three laws of thermodynamics?": (
        "The three laws of thermodynamics are fundamental principles that govern "
        "energy and heat:\n"
        "\n"
        "## First Law of Thermodynamics\n"
        "**Energy cannot be created or destroyed, only converted from one form to "
        "another.**\n"
        "- Also known as the law of conservation of energy\n"
        "- The total energy of an isolated system remains constant\n"
        "- Mathematically: ΔU = Q - W (change in internal energy equals heat added "
        "minus work done by the system)\n"
        "\n"
        "## Second Law of Thermodynamics\n"
        "**The entropy (disorder) of an isolated system always increases over time.**\n"
        "- Heat flows naturally from hot to cold objects, never the reverse (without "
        "external work)\n"
        "- No heat engine can be 100% efficient\n"
        "- It's impossible to convert heat completely into work without some energy "
        "being lost as waste heat\n"
        "\n"
        "## Third Law of Thermodynamics\n"
        "**The entropy of a perfect crystal approaches zero as temperature approaches "
        "absolute zero.**\n"
        "- Absolute zero (0 Kelvin or -273.15°C) represents the theoretical point "
        "where molecular motion stops\n"
        "- It's impossible to reach absolute zero in a finite number of steps\n"
        "\n"
        '*Note: Some formulations include a "zeroth law" about thermal equilibrium, '
        "making it technically four laws, but the three above are the classical "
        "formulation.*"
    ),
    "How do I read a JSON file in Python?": (
        "Here are several ways to read a JSON file in Python:\n"
        "\n"
        "## Basic Method\n"
        "\n"
        "```python\n"
        "import json\n"
        "\n"
        "# Read JSON file\n"
        "with open('data.json', 'r') as file:\n"
        "    data = json.load(file)\n"
        "    print(data)\n"
        "```\n"
        "\n"
        "## With Error Handling\n"
        "\n"
        "```python\n"
        "import json\n"
        "\n"
        "try:\n"
        "    with open('data.json', 'r') as file:\n"
        "        data = json.load(file)\n"
        "        print(data)\n"
        "except FileNotFoundError:\n"
        '    print("File not found!")\n'
        "except json.JSONDecodeError:\n"
        '    print("Invalid JSON format!")\n'
        "except Exception as e:\n"
        '    print(f"An error occurred: {e}")\n'
        "```\n"
        "\n"
        "## Specifying Encoding\n"
        "\n"
        "```python\n"
        "import json\n"
        "\n"
        "with open('data.json', 'r', encoding='utf-8') as file:\n"
        "    data = json.load(file)\n"
        "    print(data)\n"
        "```\n"
        "\n"
        "## Reading JSON String (if you have JSON as a string)\n"
        "\n"
        "```python\n"
        "import json\n"
        "\n"
        'json_string = \'{"name": "John", "age": 30}\'\n'
        "data = json.loads(json_string)  # Note: loads() not load()\n"
        "print(data)\n"
        "```\n"
        "\n"
        "## Example with Sample Data\n"
        "\n"
        "Let's say you have a file called `example.json`:\n"
        "```json\n"
        "{\n"
        '    "name": "Alice",\n'
        '    "age": 25,\n'
        '    "city": "New York",\n'
        '    "hobbies": ["reading", "swimming"]\n'
        "}\n"
        "```\n"
        "\n"
        "Reading and accessing the data:\n"
        "```python\n"
        "import json\n"
        "\n"
        "with open('example.json', 'r') as file:\n"
        "    data = json.load(file)\n"
        "    \n"
        "    print(f\"Name: {data['name']}\")\n"
        "    print(f\"Age: {data['age']}\")\n"
        "    print(f\"Hobbies: {', '.join(data['hobbies'])}\")\n"
        "```\n"
        "\n"
        "## Key Points:\n"
        "- Use `json.load()` for files\n"
        "- Use `json.loads()` for strings\n"
        "- Always use `with open()` for proper file handling\n"
        "- Add error handling for production code\n"
        "- The JSON data becomes a Python dictionary/list after loading"
    ),
    "Yes, what are some good places to stop?": (
        "Here are some great stops along the SF to LA route:\n"
        "\n"
        "**If taking the coastal route (Highway 1/PCH):**\n"
        "- **Monterey/Carmel** - Monterey Bay Aquarium, charming Carmel-by-the-Sea\n"
        "- **Big Sur** - Stunning coastal views, McWay Falls, Bixby Creek Bridge\n"
        "- **Hearst Castle** - Historic mansion in San Simeon\n"
        "- **Morro Bay** - Iconic Morro Rock and waterfront\n"
        "- **San Luis Obispo** - Charming downtown and historic mission\n"
        "- **Pismo Beach** - Beautiful beaches and dunes\n"
        "\n"
        "**If taking the faster inland route (I-5):**\n"
        "- **Gilroy** - Famous garlic capital\n"
        "- **Paso Robles** - Wine country with great tastings\n"
        "- **Santa Ynez Valley** - More wine regions, Danish-style Solvang\n"
        "\n"
        "**Mixed route option:** Take Highway 1 partway for scenery, then cut inland "
        "via Highway 46 or 101.\n"
        "\n"
        "The coastal route takes 7-9 hours with stops but offers incredible views. The "
        "inland route is faster (5-6 hours) but less scenic.\n"
        "\n"
        "What type of experience are you looking for - scenic beauty, food, wine, or "
        "quick travel time?"
    ),
    "Write a short story opening about a detective finding an unusual clue.": (
        "Detective Sarah Chen crouched beside the mahogany desk, her latex gloves "
        "squeaking against the wood as she carefully lifted what appeared to be an "
        "ordinary paper clip. But this one was different—twisted into an intricate "
        "knot that seemed to defy the laws of physics, its metal curves flowing "
        "impossibly through themselves like a three-dimensional puzzle.\n"
        "\n"
        '"Henderson, come look at this," she called to her partner, who was dusting '
        "for prints near the shattered window. The morning light caught the paper "
        "clip's surface, revealing tiny etchings along its length—symbols that looked "
        "almost like writing, but in no alphabet she recognized.\n"
        "\n"
        "The victim, renowned mathematician Dr. Marcus Webb, lay slumped in his chair "
        "just inches away, no visible wounds, no signs of struggle. Just him, his "
        "cluttered study, and this impossible piece of bent metal that hurt her eyes "
        "to look at directly.\n"
        "\n"
        "Henderson whistled low as he peered over her shoulder. \"That's... that's not "
        "possible. Metal doesn't bend that way.\"\n"
        "\n"
        "Sarah felt a chill run down her spine as she realized the paper clip was warm "
        "to the touch, despite the October morning air seeping through the broken "
        "window. Whatever had happened in this room last night, she was certain this "
        "strange little object held the key to understanding it."
    ),
    "Explain the concept of recursion with a simple example.": (
        "# Recursion Explained\n"
        "\n"
        "**Recursion** is a programming technique where a function calls itself to "
        "solve a problem by breaking it down into smaller, similar subproblems.\n"
        "\n"
        "## Key Components of Recursion\n"
        "\n"
        "1. **Base case**: A condition that stops the recursion\n"
        "2. **Recursive case**: The function calling itself with a modified input\n"
        "\n"
        "## Simple Example: Calculating Factorial\n"
        "\n"
        "Let's calculate the factorial of a number (n! = n \u00d7 (n-1) \u00d7 (n-2) "
        "\u00d7 ... \u00d7 1):\n"
        "\n"
        "```python\n"
        "def factorial(n):\n"
        "    # Base case: stop the recursion\n"
        "    if n == 0 or n == 1:\n"
        "        return 1\n"
        "    \n"
        "    # Recursive case: function calls itself\n"
        "    else:\n"
        "        return n * factorial(n - 1)\n"
        "\n"
        "# Example usage\n"
        "print(factorial(5))  # Output: 120\n"
        "```\n"
        "\n"
        "## How it works step by step:\n"
        "\n"
        "```\n"
        "factorial(5)\n"
        "├── 5 * factorial(4)\n"
        "    ├── 5 * 4 * factorial(3)\n"
        "        ├── 5 * 4 * 3 * factorial(2)\n"
        "            ├── 5 * 4 * 3 * 2 * factorial(1)\n"
        "                └── 5 * 4 * 3 * 2 * 1 = 120\n"
        "```\n"
        "\n"
        "## Real-world Analogy\n"
        "\n"
        "Think of **Russian nesting dolls**: To see what's inside, you open one doll, "
        "then another smaller doll inside, and so on, until you reach the smallest "
        "doll (base case). Then you put them back together in reverse order.\n"
        "\n"
        "## Why Use Recursion?\n"
        "\n"
        "- Makes complex problems simpler to understand and code\n"
        "- Natural fit for problems with repetitive, self-similar structure\n"
        "- Common in tree traversal, mathematical sequences, and divide-and-conquer "
        "algorithms\n"
        "\n"
        "**Remember**: Always ensure you have a proper base case to avoid infinite "
        "recursion!"
    ),
}

GATEWAY_PATH: Final = re.compile(
    r"^/v1/(?P<account>[^/]+)/(?P<gateway>[^/]+)/workers-ai/(?P<model>[^?#]+)$"
)
REST_PATH: Final = re.compile(r"^/client/v4/accounts/(?P<account>[^/]+)/ai/run/(?P<model>[^?#]+)$")

# The API token the emulator expects by default.
TEST_CREDENTIAL: Final = "test-token"
MAX_OUTPUT_TOKENS: Final = 64_000
MAX_BODY_BYTES: Final = 32 * 1024 * 1024

_CLOUDFLARE_ERRORS: Final[dict[int, tuple[int, str]]] = {
    400: (5007, "No such model"),
    401: (10000, "Authentication error"),
    403: (10000, "Authentication error"),
    408: (3007, "Request timeout"),
    429: (3040, "Capacity temporarily exceeded"),
    500: (3043, "Internal server error"),
}
_CLOUDFLARE_DEFAULT_ERROR: Final = (3000, "Unknown internal error")

_ANTHROPIC_ERRORS: Final[dict[int, tuple[str, str]]] = {
    400: ("invalid_request_error", "Invalid request"),
    401: ("authentication_error", "Invalid authentication credentials"),
    403: ("permission_error", "Permission denied"),
    404: ("not_found_error", "Not found"),
    413: ("request_too_large", "Request exceeds the maximum allowed size"),
    429: ("rate_limit_error", "Rate limited"),
    500: ("api_error", "Internal server error"),
    503: ("overloaded_error", "Overloaded"),
    529: ("overloaded_error", "Overloaded"),
}
_ANTHROPIC_DEFAULT_ERROR: Final = ("api_error", "Internal server error")

_EXTRA_REASONS: Final[dict[int, str]] = {529: "Site Overloaded"}


@dataclass
class Behaviour:
    """How the emulator answers one request.

    Text: ``text`` (None: a seed reply for a seed prompt, else ``"You said: <last user
    message>"``) or ``tokens`` (exactly that many ``"tok<i>"`` pieces).  ``shape`` picks the
    wire format.  Faults that count pieces (``drop_after``, ``stall_after``,
    ``error_event_after``) fire after ``min(n, number of pieces)`` text pieces were sent.
    """

    text: str | None = None
    shape: Shape = "anthropic"
    tokens: int | None = None
    first_token_delay: float = 0.0
    token_delay: float = 0.0
    headers_delay: float = 0.0
    input_tokens: int | None = None
    output_tokens: int | None = None
    stop_reason: str = "end_turn"
    envelope: bool | None = None
    # Error response instead of a reply.
    status: int | None = None
    error_format: ErrorFormat = "cloudflare"
    error_code: int | None = None
    error_message: str | None = None
    retry_after: float | None = None
    # Faults of a streamed reply.
    drop_after: int | None = None
    stall_after: int | None = None
    stall_seconds: float = 3600.0
    error_event_after: int | None = None
    unterminated: bool = False
    split_bytes: int | None = None
    crlf: bool = False
    comments: bool = False
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class RecordedRequest:
    """One request as the emulator received it, plus what it did with it."""

    method: str
    path: str
    route: Route
    model: str
    headers: dict[str, str]
    body: Any
    account: str = ""
    gateway: str | None = None
    log_id: str = ""
    received_at: float = field(default_factory=time.monotonic)
    behaviour: Behaviour | None = None
    status: int = 0
    streamed: bool = False
    sent_text: str = ""
    # pending | complete | unterminated | error | dropped | stalled | disconnected
    outcome: str = "pending"


class _ClientGone(Exception):
    """The client closed its side of the connection while a reply was in progress."""


class _BadRequest(Exception):
    pass


@dataclass
class _Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]
    raw_body: bytes


def split_tokens(text: str) -> list[str]:
    """Split text into word-sized pieces whose concatenation is exactly ``text``."""
    pieces = re.findall(r"\s*\S+\s*", text)
    if not pieces and text:
        return [text]
    return pieces


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            str(block.get("text", ""))
            for block in content
            if isinstance(block, dict) and block.get("type", "text") == "text"
        ]
        return "".join(parts)
    return ""


def _last_user_message(body: Any) -> str:
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _content_text(message.get("content"))
    return ""


def reply_for(body: Any) -> str:
    """The default reply to a request body: a seed reply, or an echo of the last user turn."""
    last = _last_user_message(body)
    return SEED_REPLIES.get(last.strip(), f"You said: {last}")


def _count_input_tokens(body: Any) -> int:
    if not isinstance(body, dict):
        return 1
    texts = [_content_text(body.get("system"))]
    messages = body.get("messages")
    if isinstance(messages, list):
        texts.extend(_content_text(m.get("content")) for m in messages if isinstance(m, dict))
    return max(1, sum(len(t.split()) for t in texts))


def _validate(model: str, body: Any) -> str | None:
    """The reason Workers AI would reject this body, or None when it is acceptable."""
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty array"
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            return "each message needs a role 'user' or 'assistant'"
        if not isinstance(message.get("content"), str | list):
            return "each message needs a content"
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens <= 0:
        return "'max_tokens' is required and must be an integer > 0"
    if max_tokens > MAX_OUTPUT_TOKENS:
        return f"'max_tokens' must be at most {MAX_OUTPUT_TOKENS}"
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1
        ):
            return f"'{name}' must be a number between 0 and 1"
    top_k = body.get("top_k")
    if top_k is not None and (
        isinstance(top_k, bool) or not isinstance(top_k, int | float) or top_k <= 0
    ):
        return "'top_k' must be a number > 0"
    if "stream" in body and not isinstance(body["stream"], bool):
        return "'stream' must be a boolean"
    if "system" in body and not isinstance(body["system"], str | list):
        return "'system' must be a string"
    if "haiku" in model and body.get("temperature") is not None and body.get("top_p") is not None:
        return "`temperature` and `top_p` cannot both be specified for this model."
    return None


def _cloudflare_error(code: int, message: str) -> dict[str, Any]:
    return {
        "success": False,
        "errors": [{"code": code, "message": message}],
        "result": None,
        "messages": [],
    }


def _error_payload(behaviour: Behaviour, status: int) -> dict[str, Any]:
    if behaviour.error_format == "anthropic":
        kind, message = _ANTHROPIC_ERRORS.get(status, _ANTHROPIC_DEFAULT_ERROR)
        return {
            "type": "error",
            "error": {"type": kind, "message": behaviour.error_message or message},
            "request_id": f"req_{uuid.uuid4().hex[:24]}",
        }
    code, message = _CLOUDFLARE_ERRORS.get(status, _CLOUDFLARE_DEFAULT_ERROR)
    return _cloudflare_error(behaviour.error_code or code, behaviour.error_message or message)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return _EXTRA_REASONS.get(status, "Unknown")


def _dumps(payload: Any) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def _format_seconds(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else str(seconds)


class _ChunkedBody:
    """Writes a chunked response body, optionally cut into raw pieces of ``split`` bytes."""

    def __init__(self, writer: asyncio.StreamWriter, split: int | None) -> None:
        self.writer = writer
        self.split = split if split and split > 0 else None

    async def send(self, data: bytes) -> None:
        if not data:
            return
        if self.split is None:
            self.writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await self.writer.drain()
            return
        for start in range(0, len(data), self.split):
            piece = data[start : start + self.split]
            self.writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await self.writer.drain()
            await asyncio.sleep(0)

    async def end(self) -> None:
        self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()


Event = tuple[str | None, str]


class _Reply:
    """Everything needed to render one reply in any shape."""

    def __init__(self, behaviour: Behaviour, model: str, body: Any) -> None:
        self.behaviour = behaviour
        self.model = model
        if behaviour.tokens is not None:
            self.pieces = [
                f"tok{i}" if i == behaviour.tokens - 1 else f"tok{i} "
                for i in range(max(0, behaviour.tokens))
            ]
        else:
            text = behaviour.text if behaviour.text is not None else reply_for(body)
            self.pieces = split_tokens(text)
        self.text = "".join(self.pieces)
        self.input_tokens = (
            behaviour.input_tokens
            if behaviour.input_tokens is not None
            else _count_input_tokens(body)
        )
        self.output_tokens = (
            behaviour.output_tokens if behaviour.output_tokens is not None else len(self.pieces)
        )
        self.message_id = f"msg_{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())

    @property
    def finish_reason(self) -> str:
        return {"end_turn": "stop", "max_tokens": "length", "stop_sequence": "stop"}.get(
            self.behaviour.stop_reason, self.behaviour.stop_reason
        )

    # Non-streamed bodies -------------------------------------------------------------
    def anthropic_message(self) -> dict[str, Any]:
        return {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [{"type": "text", "text": self.text}],
            "stop_reason": self.behaviour.stop_reason,
            "stop_sequence": None,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens},
        }

    def workers_usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.input_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.input_tokens + self.output_tokens,
        }

    def openai_completion(self) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-{self.message_id[4:]}",
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": self.text},
                    "finish_reason": self.finish_reason,
                }
            ],
            "usage": self.workers_usage(),
        }

    def non_streamed(self, route: Route) -> dict[str, Any]:
        shape = self.behaviour.shape
        result: dict[str, Any]
        if shape == "workers":
            result = {"response": self.text, "usage": self.workers_usage()}
        elif shape == "openai":
            result = self.openai_completion()
        else:
            result = self.anthropic_message()
        envelope = self.behaviour.envelope
        if envelope is None:
            envelope = route == "rest" or shape == "workers"
        if not envelope:
            return result
        return {"result": result, "success": True, "errors": [], "messages": []}

    # Streamed events -----------------------------------------------------------------
    def preamble(self) -> list[Event]:
        shape = self.behaviour.shape
        if shape == "anthropic":
            message = self.anthropic_message()
            message.update(content=[], stop_reason=None)
            message["usage"] = {"input_tokens": self.input_tokens, "output_tokens": 1}
            return [
                ("message_start", _dumps({"type": "message_start", "message": message})),
                ("ping", _dumps({"type": "ping"})),
                (
                    "content_block_start",
                    _dumps(
                        {
                            "type": "content_block_start",
                            "index": 0,
                            "content_block": {"type": "text", "text": ""},
                        }
                    ),
                ),
            ]
        if shape == "openai":
            return [(None, _dumps(self._openai_chunk({"role": "assistant", "content": ""})))]
        return []

    def piece(self, text: str) -> Event:
        shape = self.behaviour.shape
        if shape == "anthropic":
            delta = {"type": "text_delta", "text": text}
            payload = {"type": "content_block_delta", "index": 0, "delta": delta}
            return ("content_block_delta", _dumps(payload))
        if shape == "openai":
            return (None, _dumps(self._openai_chunk({"content": text})))
        return (None, _dumps({"response": text}))

    def closing(self) -> list[Event]:
        """The closing events; the last one is the terminator."""
        shape = self.behaviour.shape
        if shape == "anthropic":
            delta = {"stop_reason": self.behaviour.stop_reason, "stop_sequence": None}
            return [
                ("content_block_stop", _dumps({"type": "content_block_stop", "index": 0})),
                (
                    "message_delta",
                    _dumps(
                        {
                            "type": "message_delta",
                            "delta": delta,
                            "usage": {"output_tokens": self.output_tokens},
                        }
                    ),
                ),
                ("message_stop", _dumps({"type": "message_stop"})),
            ]
        if shape == "openai":
            last = self._openai_chunk({}, finish_reason=self.finish_reason)
            last["usage"] = self.workers_usage()
            return [(None, _dumps(last)), (None, "[DONE]")]
        return [(None, _dumps({"response": "", "usage": self.workers_usage()})), (None, "[DONE]")]

    @staticmethod
    def error_event() -> Event:
        error = {"type": "overloaded_error", "message": "Overloaded"}
        return ("error", _dumps({"type": "error", "error": error}))

    def _openai_chunk(
        self, delta: dict[str, Any], finish_reason: str | None = None
    ) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-{self.message_id[4:]}",
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }


class GatewayEmulator:
    """An HTTP/1.1 server that answers like Cloudflare AI Gateway / Workers AI.

    ``api_token=None`` accepts any (or no) ``Authorization``; ``account=None`` accepts any
    account id; ``strict=False`` skips the request-body validation (max_tokens, ranges, ...).
    ``tls``: a server-side SSL context; the emulator then serves HTTPS, as Cloudflare does
    (the benchmark uses a throwaway ``trustme`` certificate). Plain HTTP by default.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_token: str | None = TEST_CREDENTIAL,
        gateway_token: str | None = None,
        account: str | None = "acct-test",
        strict: bool = True,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.tls = tls
        self.port = port
        self.api_token = api_token
        self.gateway_token = gateway_token
        self.account = account
        self.strict = strict
        self.default = Behaviour()
        self.requests: list[RecordedRequest] = []
        self.connection_count = 0
        self._queue: deque[Behaviour] = deque()
        self._lock = threading.Lock()
        self._log_ids = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None

    # Addresses --------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{host}:{self.port}"

    @property
    def gateway_base_url(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def api_base_url(self) -> str:
        return f"{self.base_url}/client/v4"

    def env(self, *, gateway: str = "default") -> dict[str, str]:
        """Environment for a product process using this emulator (``gateway=""``: REST)."""
        env = {
            "CLOUDFLARE_ACCOUNT_ID": self.account or "acct-test",
            "CLOUDFLARE_API_TOKEN": self.api_token or TEST_CREDENTIAL,
            "CLOUDFLARE_AI_GATEWAY": gateway,
            "CLOUDFLARE_API_BASE_URL": self.api_base_url,
            "CLOUDFLARE_AI_GATEWAY_BASE_URL": self.gateway_base_url,
        }
        if self.gateway_token:
            env["CLOUDFLARE_AI_GATEWAY_TOKEN"] = self.gateway_token
        return env

    # Scripting ----------------------------------------------------------------------------
    def enqueue(self, *behaviours: Behaviour) -> None:
        """Queue behaviours, consumed one per accepted request (FIFO) before ``default``."""
        with self._lock:
            self._queue.extend(behaviours)

    @property
    def queued(self) -> int:
        with self._lock:
            return len(self._queue)

    def clear(self) -> None:
        """Forget recorded requests and queued behaviours (``default`` is kept)."""
        with self._lock:
            self._queue.clear()
            self.requests.clear()

    def _next_behaviour(self) -> Behaviour:
        with self._lock:
            return self._queue.popleft() if self._queue else self.default

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Poll ``predicate`` from another thread until it holds or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    async def wait_for_async(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Like :meth:`wait_for`, for tests running in the emulator's own loop."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    def wait_for_requests(self, count: int = 1, timeout: float = 5.0) -> bool:
        return self.wait_for(lambda: len(self.requests) >= count, timeout)

    # Life cycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Start listening in the running loop; ``port`` is known afterwards."""
        self._closing = False
        self._server = await asyncio.start_server(
            self._handle_connection,
            self.host,
            self.port,
            backlog=2048,
            limit=1024 * 1024,
            ssl=self.tls,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and close every open connection, stalled ones included."""
        server, self._server = self._server, None
        self._closing = True
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        current = asyncio.current_task()
        tasks = [task for task in self._tasks if task is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        if server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), timeout=1.0)

    def start_in_thread(self) -> Self:
        """Run the emulator in its own event loop in a daemon thread; returns when listening."""
        if self._thread is not None:
            raise RuntimeError("the emulator is already running in a thread")
        loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        thread = threading.Thread(target=run, name="gateway-emulator", daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.start(), loop).result(timeout=10)
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=5)
            raise
        self._thread, self._thread_loop = thread, loop
        return self

    def stop_thread(self) -> None:
        """Stop an emulator started with :meth:`start_in_thread` (closes all connections)."""
        thread, loop = self._thread, self._thread_loop
        self._thread = self._thread_loop = None
        if thread is None or loop is None:
            return
        future = asyncio.run_coroutine_threadsafe(self.stop(), loop)
        try:
            future.result(timeout=5)
        except Exception:
            logger.exception("gateway emulator: stop failed")
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start_in_thread()

    def __exit__(self, *exc_info: object) -> None:
        self.stop_thread()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # Connections --------------------------------------------------------------------------
    async def _handle_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._writers.add(writer)
        self.connection_count += 1
        try:
            while not self._closing:
                try:
                    request = await self._read_request(reader)
                except _BadRequest as exc:
                    await self._send_json(
                        writer, 400, _cloudflare_error(400, f"Bad request: {exc}"), close=True
                    )
                    break
                if request is None:
                    break
                if not await self._respond(request, reader, writer):
                    break
        except (ConnectionError, _ClientGone, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # Ended by stop().  Python 3.11's StreamReaderProtocol logs an error for a
            # cancelled connection task, so end it normally.
            pass
        except Exception:
            logger.exception("gateway emulator: connection failed")
        finally:
            self._writers.discard(writer)
            if task is not None:
                self._tasks.discard(task)
            if not writer.transport.is_closing():
                writer.close()

    async def _read_request(self, reader: asyncio.StreamReader) -> _Request | None:
        try:
            line = await reader.readline()
            while line in (b"\r\n", b"\n"):
                line = await reader.readline()
        except ValueError as exc:  # line longer than the reader's limit
            raise _BadRequest("request line too long") from exc
        if not line:
            return None
        parts = line.decode("latin-1").strip().split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            raise _BadRequest("malformed request line")
        method, target, version = parts
        headers: dict[str, str] = {}
        while True:
            try:
                raw = await reader.readline()
            except ValueError as exc:
                raise _BadRequest("header line too long") from exc
            if not raw:
                return None
            if raw in (b"\r\n", b"\n"):
                break
            name, sep, value = raw.decode("utf-8", "replace").partition(":")
            if not sep or not name.strip():
                raise _BadRequest("malformed header line")
            key, value = name.strip().lower(), value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = await self._read_chunked(reader)
        else:
            try:
                length = int(headers.get("content-length", "0") or "0")
            except ValueError as exc:
                raise _BadRequest("bad content-length") from exc
            if length < 0 or length > MAX_BODY_BYTES:
                raise _BadRequest("bad content-length")
            body = await reader.readexactly(length)
        return _Request(method.upper(), target, version, headers, body)

    @staticmethod
    async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
        body = bytearray()
        while True:
            size_line = await reader.readline()
            try:
                size = int(size_line.split(b";", 1)[0].strip() or b"x", 16)
            except ValueError as exc:
                raise _BadRequest("bad chunk size") from exc
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return bytes(body)
            body += await reader.readexactly(size)
            await reader.readexactly(2)
            if len(body) > MAX_BODY_BYTES:
                raise _BadRequest("body too large")

    # Responses --------------------------------------------------------------------------------
    async def _send_json(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        payload: Any,
        headers: dict[str, str] | None = None,
        *,
        close: bool = False,
    ) -> None:
        body = _dumps(payload).encode()
        lines = [
            f"HTTP/1.1 {status} {_reason(status)}",
            "content-type: application/json",
            f"content-length: {len(body)}",
        ]
        lines.extend(f"{name}: {value}" for name, value in (headers or {}).items())
        if close:
            lines.append("connection: close")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await writer.drain()

    async def _sleep(self, seconds: float, reader: asyncio.StreamReader) -> None:
        """Sleep, but notice when the client goes away meanwhile."""
        if seconds <= 0:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            if reader.at_eof():
                raise _ClientGone
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            await asyncio.sleep(min(remaining, 0.05))

    async def _respond(
        self, request: _Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request; returns whether the connection may serve another one."""
        path = request.target.split("?", 1)[0]
        log_id = f"log-{next(self._log_ids):06d}"
        route: Route = "unknown"
        account, gateway, model = "", None, ""
        if match := GATEWAY_PATH.match(path):
            route, gateway = "gateway", unquote(match["gateway"])
            account, model = unquote(match["account"]), unquote(match["model"])
        elif match := REST_PATH.match(path):
            route, account, model = "rest", unquote(match["account"]), unquote(match["model"])
        body: Any = None
        body_error = False
        if request.raw_body:
            try:
                body = json.loads(request.raw_body)
            except (ValueError, UnicodeDecodeError):
                body_error = True
        record = RecordedRequest(
            method=request.method,
            path=request.target,
            route=route,
            model=model,
            headers=dict(request.headers),
            body=body,
            account=account,
            gateway=gateway,
            log_id=log_id,
        )
        self._record(record)
        keep_alive = (
            request.version == "HTTP/1.1"
            and request.headers.get("connection", "").lower() != "close"
        )
        headers = {"cf-aig-log-id": log_id}
        if route == "gateway":
            headers["cf-aig-cache-status"] = "MISS"

        async def reject(status: int, code: int, message: str) -> bool:
            record.status, record.outcome = status, "error"
            await self._send_json(
                writer, status, _cloudflare_error(code, message), headers, close=not keep_alive
            )
            return keep_alive

        if route == "unknown" or request.method != "POST":
            return await reject(404, 7000, "No route for that URI")
        if self.api_token is not None and (
            request.headers.get("authorization") != f"Bearer {self.api_token}"
        ):
            return await reject(401, 10000, "Authentication error")
        if (
            route == "gateway"
            and self.gateway_token is not None
            and request.headers.get("cf-aig-authorization") != f"Bearer {self.gateway_token}"
        ):
            return await reject(401, 2009, "Unauthorized")
        if self.account is not None and account != self.account:
            return await reject(403, 10000, "Authentication error")
        if body_error:
            return await reject(400, 5006, "Bad input: the body is not valid JSON")
        if self.strict and (problem := _validate(model, body)):
            return await reject(400, 5006, f"Bad input: {problem}")

        behaviour = self._next_behaviour()
        record.behaviour = behaviour
        headers.update(behaviour.headers)
        try:
            await self._sleep(behaviour.headers_delay, reader)
            if behaviour.status is not None:
                if behaviour.retry_after is not None:
                    headers["retry-after"] = _format_seconds(behaviour.retry_after)
                record.status, record.outcome = behaviour.status, "error"
                payload = _error_payload(behaviour, behaviour.status)
                await self._send_json(
                    writer, behaviour.status, payload, headers, close=not keep_alive
                )
                return keep_alive
            reply = _Reply(behaviour, model, body)
            if isinstance(body, dict) and body.get("stream") is True:
                record.streamed = True
                return await self._stream(reply, record, headers, keep_alive, reader, writer)
            if behaviour.drop_after is not None:
                record.outcome = "dropped"
                writer.transport.abort()
                return False
            if behaviour.stall_after is not None:
                record.outcome = "stalled"
                await self._sleep(behaviour.stall_seconds, reader)
                writer.transport.abort()
                return False
            await self._sleep(behaviour.first_token_delay, reader)
            record.status, record.sent_text = 200, reply.text
            payload = reply.non_streamed(route)
            await self._send_json(writer, 200, payload, headers, close=not keep_alive)
            record.outcome = "complete"
            return keep_alive
        except (_ClientGone, ConnectionError):
            record.outcome = "disconnected"
            raise

    async def _stream(
        self,
        reply: _Reply,
        record: RecordedRequest,
        headers: dict[str, str],
        keep_alive: bool,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        behaviour = reply.behaviour
        eol = "\r\n" if behaviour.crlf else "\n"
        out = _ChunkedBody(writer, behaviour.split_bytes)

        async def emit(event: Event) -> None:
            if reader.at_eof():
                raise _ClientGone
            name, data = event
            text = f": keep-alive{eol}{eol}" if behaviour.comments else ""
            if name is not None:
                text += f"event: {name}{eol}"
            text += f"data: {data}{eol}{eol}"
            await out.send(text.encode())

        lines = [
            "HTTP/1.1 200 OK",
            "content-type: text/event-stream",
            "cache-control: no-cache",
            "transfer-encoding: chunked",
        ]
        lines.extend(f"{name}: {value}" for name, value in headers.items())
        if not keep_alive:
            lines.append("connection: close")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        record.status = 200
        for event in reply.preamble():
            await emit(event)

        count = len(reply.pieces)

        def fires_at(after: int | None) -> int | None:
            return None if after is None else min(max(after, 0), count)

        drop_at = fires_at(behaviour.drop_after)
        stall_at = fires_at(behaviour.stall_after)
        error_at = fires_at(behaviour.error_event_after)
        for index in range(count + 1):
            if drop_at == index:
                record.outcome = "dropped"
                writer.transport.abort()
                return False
            if stall_at == index:
                record.outcome = "stalled"
                await self._sleep(behaviour.stall_seconds, reader)
                writer.transport.abort()
                return False
            if error_at == index:
                await emit(reply.error_event())
                await out.end()
                record.outcome = "error"
                return keep_alive
            if index == count:
                break
            delay = behaviour.first_token_delay if index == 0 else behaviour.token_delay
            await self._sleep(delay, reader)
            await emit(reply.piece(reply.pieces[index]))
            record.sent_text += reply.pieces[index]
        closing = reply.closing()
        if behaviour.unterminated:
            closing = closing[:-1]
        for event in closing:
            await emit(event)
        await out.end()
        record.outcome = "unterminated" if behaviour.unterminated else "complete"
        return keep_alive


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.emulator",
        description="Emulate Cloudflare AI Gateway / Workers AI for local runs.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8787)
    parser.add_argument("--first-token-delay", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--token-delay", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--tokens", type=int, default=None, help="answer with N dummy tokens")
    parser.add_argument("--shape", choices=["anthropic", "workers", "openai"], default="anthropic")
    parser.add_argument("--api-token", default="test-token", help='"" accepts any token')
    parser.add_argument("--gateway-token", default=None)
    parser.add_argument("--account", default="acct-test", help='"" accepts any account')
    parser.add_argument("--tls-cert", default=None, help="serve HTTPS with this PEM chain")
    parser.add_argument("--tls-key", default=None, help="the private key of --tls-cert (PEM)")
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    tls = None
    if args.tls_cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert, args.tls_key)

    emulator = GatewayEmulator(
        host=args.host,
        port=args.port,
        api_token=args.api_token or None,
        gateway_token=args.gateway_token or None,
        account=args.account or None,
        tls=tls,
    )
    emulator.default = Behaviour(
        shape=args.shape,
        tokens=args.tokens,
        first_token_delay=args.first_token_delay,
        token_delay=args.token_delay,
    )

    async def serve() -> None:
        await emulator.start()
        print(f"Gateway emulator listening on {emulator.base_url}")
        print(f"  AI Gateway: {emulator.gateway_base_url}/{{account}}/{{gateway}}/workers-ai/")
        print(f"  REST:       {emulator.api_base_url}/accounts/{{account}}/ai/run/")
        print("Export for the product:")
        for name, value in emulator.env().items():
            print(f"export {name}={value}")
        print("Ctrl+C stops.", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await emulator.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
