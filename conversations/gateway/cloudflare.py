"""Cloudflare Workers AI / AI Gateway: the only place an HTTP request leaves the building.

One shared `httpx.AsyncClient` per process (per event loop), over a transport
whose connection reuse costs the same with 1 or 1,000 replies open. Every response
shape in the gateway notes is accepted; failures become `ReplyError` events.
Retries happen only before the first token.
"""

import asyncio
import contextlib
import email.utils
import json
import logging
import random
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import httpx
from django.conf import settings

from .events import ChatRequest, Event, Finished, ReplyError, ResponseStarted, TextDelta, Usage
from .pool import ConnectionListTransport
from .sse import SSEDecoder, SSEEvent

logger = logging.getLogger("conversations.gateway")

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504, 529})
_ERROR_BODY_LIMIT = 64 * 1024
_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient]" = (
    weakref.WeakKeyDictionary()
)


def shared_client(*, connect_timeout: float) -> httpx.AsyncClient:
    """The process's client for the running loop (read timeouts are enforced per event)."""
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None or client.is_closed:
        client = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=connect_timeout, read=None, write=30.0, pool=30.0),
            transport=ConnectionListTransport(max_idle=200),
            follow_redirects=False,
        )
        _clients[loop] = client
    return client


def request_body(request: ChatRequest, *, stream: bool = True) -> dict[str, Any]:
    """The JSON body for one call: the request's settings, those it sets."""
    body: dict[str, Any] = {"messages": request.messages, "max_tokens": request.max_tokens}
    if request.system:
        body["system"] = request.system
    body.update(request.sampling())
    if stream:
        body["stream"] = True
    return body


_USER_MESSAGES = {
    400: "The model service refused the request.",
    401: "The server's Cloudflare credentials were refused. Ask an operator to check them.",
    403: "The server's Cloudflare credentials were refused. Ask an operator to check them.",
    404: "The model service was not found at the configured address.",
    408: "The model took too long to answer. Please try again.",
    413: "This conversation is too long for the model.",
    429: "The model is busy right now (rate limited). Please try again in a moment.",
}
_OVERLOADED = "The model service is overloaded or failing. Please try again."


def _user_message(status: int, code: str) -> str:
    if code == "5007":
        return "This model is not available on the configured Cloudflare account."
    if code == "3036":
        return "The Cloudflare account's daily limit for this model is used up."
    return _USER_MESSAGES.get(status, _OVERLOADED if status >= 500 else "The model call failed.")


def retry_after_seconds(value: str | None) -> float | None:
    """`retry-after` as seconds: a number, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_from_response(status: int, body: bytes, headers: httpx.Headers) -> ReplyError:
    """Map an upstream error response (either error body shape) to a typed error."""
    code, upstream_type, upstream_message = "", "", ""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        errors = data.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            code = str(errors[0].get("code", ""))
            upstream_message = str(errors[0].get("message", ""))
        error = data.get("error")
        if isinstance(error, dict):
            upstream_type = str(error.get("type", ""))
            upstream_message = str(error.get("message", ""))
    retry_after = retry_after_seconds(headers.get("retry-after"))
    return ReplyError(
        message=_user_message(status, code),
        kind="status",
        status=status,
        code=code or upstream_type,
        detail=upstream_message[:300],
        retryable=status in RETRYABLE_STATUS,
        retry_after=retry_after,
        log_id=headers.get("cf-aig-log-id", ""),
    )


_FIRST_TOKEN_TIMEOUT = ReplyError(
    "The model did not start answering in time.", kind="first_token_timeout"
)
# Cloudflare and Anthropic send response headers at once, even when the first token
# takes long; an upstream that has not sent them soon is not answering: try again.
_HEADERS_TIMEOUT = ReplyError(
    "The model service did not answer.", kind="headers_timeout", retryable=True
)


def _connection_error(message: str, exc: Exception) -> ReplyError:
    """Transport failures before any text: worth another try."""
    return ReplyError(message, kind="connection", detail=type(exc).__name__, retryable=True)


_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens"}


@dataclass
class StreamInterpreter:
    """Turns SSE events of any of the three stream shapes into typed events.

    A `Usage` (everything known so far) comes as soon as the token counts change, so a
    reply that is stopped or fails mid-stream still knows its input tokens.
    """

    input_tokens: int | None = None
    output_tokens: int | None = None
    stop_reason: str = "end_turn"
    finished: bool = False
    got_text: bool = False
    reported: Usage | None = None

    def handle(self, sse: SSEEvent) -> Iterator[Event]:
        data = sse.data.strip()
        if data == "[DONE]":
            yield from self._finish()
            return
        try:
            payload = json.loads(data)
        except ValueError:
            return
        if not isinstance(payload, dict):
            return
        kind = payload.get("type") or sse.event
        if "choices" in payload:
            yield from self._openai(payload)
        elif "response" in payload or (kind == "message" and "usage" in payload):
            yield from self._workers(payload)
        else:
            yield from self._anthropic(str(kind), payload)

    def _text(self, text: Any) -> Iterator[Event]:
        if isinstance(text, str) and text:
            self.got_text = True
            yield TextDelta(text)

    def _usage(self, usage: Any, input_key: str, output_key: str) -> Iterator[Event]:
        if isinstance(usage, dict):
            if isinstance(usage.get(input_key), int):
                self.input_tokens = usage[input_key]
            if isinstance(usage.get(output_key), int):
                self.output_tokens = usage[output_key]
        yield from self._report()

    def _report(self, *, always: bool = False) -> Iterator[Event]:
        usage = Usage(self.input_tokens, self.output_tokens)
        if usage != self.reported and (always or usage != Usage()):
            self.reported = usage
            yield usage

    def _finish(self) -> Iterator[Event]:
        if self.finished:
            return
        self.finished = True
        yield from self._report(always=True)
        yield Finished(self.stop_reason)

    def _anthropic(self, kind: str, payload: dict[str, Any]) -> Iterator[Event]:
        if kind == "content_block_delta":
            delta = payload.get("delta") or {}
            if delta.get("type") in (None, "text_delta"):
                yield from self._text(delta.get("text"))
        elif kind == "message_start":
            message = payload.get("message")
            usage = message.get("usage") if isinstance(message, dict) else None
            yield from self._usage(usage, "input_tokens", "output_tokens")
        elif kind == "message_delta":
            reason = (payload.get("delta") or {}).get("stop_reason")
            if reason:
                self.stop_reason = str(reason)
            yield from self._usage(payload.get("usage"), "input_tokens", "output_tokens")
        elif kind == "message_stop":
            yield from self._finish()
        elif kind == "error":
            error = payload.get("error") or {}
            error_type = str(error.get("type", "error"))
            self.finished = True
            yield ReplyError(
                message=_OVERLOADED
                if error_type in ("overloaded_error", "api_error")
                else "The model service reported an error.",
                kind="stream_error",
                code=error_type,
                detail=str(error.get("message", ""))[:300],
                retryable=error_type in ("overloaded_error", "api_error", "rate_limit_error"),
            )

    def _workers(self, payload: dict[str, Any]) -> Iterator[Event]:
        yield from self._text(payload.get("response"))
        yield from self._usage(payload.get("usage"), "prompt_tokens", "completion_tokens")

    def _openai(self, payload: dict[str, Any]) -> Iterator[Event]:
        for choice in payload.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            yield from self._text((choice.get("delta") or {}).get("content"))
            reason = choice.get("finish_reason")
            if reason:
                self.stop_reason = _STOP_REASONS.get(reason, str(reason))
        yield from self._usage(payload.get("usage"), "prompt_tokens", "completion_tokens")


def events_from_message(data: Any) -> list[Event]:
    """A non-streamed reply: enveloped or bare Anthropic message, or a Workers AI result."""
    if isinstance(data, dict) and "result" in data and ("success" in data or "errors" in data):
        data = data["result"]
    if not isinstance(data, dict):
        return [ReplyError("The model service sent a reply it could not read.", kind="shape")]
    if isinstance(data.get("content"), list):
        text = "".join(
            block.get("text", "")
            for block in data["content"]
            if isinstance(block, dict) and block.get("type") == "text"
        )
        usage = data.get("usage") or {}
        return [
            TextDelta(text),
            Usage(usage.get("input_tokens"), usage.get("output_tokens")),
            Finished(str(data.get("stop_reason") or "end_turn")),
        ]
    if "response" in data:
        usage = data.get("usage") or {}
        return [
            TextDelta(str(data.get("response") or "")),
            Usage(usage.get("prompt_tokens"), usage.get("completion_tokens")),
            Finished("end_turn"),
        ]
    return [ReplyError("The model service sent a reply it could not read.", kind="shape")]


class CloudflareProvider:
    """Claude on Cloudflare, through AI Gateway or the Workers AI REST route."""

    def __init__(
        self,
        *,
        account_id: str,
        api_token: str,
        gateway: str = "default",
        gateway_token: str = "",
        api_base_url: str = "https://api.cloudflare.com/client/v4",
        gateway_base_url: str = "https://gateway.ai.cloudflare.com/v1",
        connect_timeout: float = 10.0,
        headers_timeout: float = 15.0,
        first_token_timeout: float = 60.0,
        idle_timeout: float = 30.0,
        retry_attempts: int = 4,
        retry_budget: float = 30.0,
        retry_base_delay: float = 0.5,
        retry_max_delay: float = 8.0,
    ) -> None:
        self.account_id = account_id
        self._api_token = api_token
        self.gateway = gateway
        self._gateway_token = gateway_token
        self.api_base_url = api_base_url.rstrip("/")
        self.gateway_base_url = gateway_base_url.rstrip("/")
        self.connect_timeout = connect_timeout
        self.headers_timeout = headers_timeout
        self.first_token_timeout = first_token_timeout
        self.idle_timeout = idle_timeout
        self.retry_attempts = max(1, retry_attempts)
        self.retry_budget = retry_budget
        self.retry_base_delay = retry_base_delay
        self.retry_max_delay = retry_max_delay

    def __repr__(self) -> str:  # never show the tokens
        return f"<CloudflareProvider gateway={self.gateway!r}>"

    @classmethod
    def from_settings(cls) -> "CloudflareProvider":
        return cls(
            account_id=settings.CLOUDFLARE_ACCOUNT_ID,
            api_token=settings.CLOUDFLARE_API_TOKEN,
            gateway=settings.CLOUDFLARE_AI_GATEWAY,
            gateway_token=settings.CLOUDFLARE_AI_GATEWAY_TOKEN,
            api_base_url=settings.CLOUDFLARE_API_BASE_URL,
            gateway_base_url=settings.CLOUDFLARE_AI_GATEWAY_BASE_URL,
            connect_timeout=settings.CHAT_CONNECT_TIMEOUT,
            headers_timeout=settings.CHAT_HEADERS_TIMEOUT,
            first_token_timeout=settings.CHAT_FIRST_TOKEN_TIMEOUT,
            idle_timeout=settings.CHAT_IDLE_TIMEOUT,
            retry_attempts=settings.CHAT_RETRY_ATTEMPTS,
            retry_budget=settings.CHAT_RETRY_BUDGET,
            retry_base_delay=settings.CHAT_RETRY_BASE_DELAY,
            retry_max_delay=settings.CHAT_RETRY_MAX_DELAY,
        )

    def url_for(self, model: str) -> str:
        if self.gateway:
            return f"{self.gateway_base_url}/{self.account_id}/{self.gateway}/workers-ai/{model}"
        return f"{self.api_base_url}/accounts/{self.account_id}/ai/run/{model}"

    def headers_for(self, request: ChatRequest) -> dict[str, str]:
        headers = {
            "Authorization": f"Bearer {self._api_token}",
            "Content-Type": "application/json",
            "Accept": "text/event-stream, application/json",
        }
        if self.gateway and self._gateway_token:
            headers["cf-aig-authorization"] = f"Bearer {self._gateway_token}"
        if self.gateway and request.metadata:
            headers["cf-aig-metadata"] = json.dumps(dict(list(request.metadata.items())[:5]))
        return headers

    def _retry_delay(self, attempt: int, retry_after: float | None) -> float:
        ceiling = min(self.retry_max_delay, self.retry_base_delay * 2 ** (attempt - 1))
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)
        return max(delay, retry_after) if retry_after is not None else delay

    async def stream(self, request: ChatRequest) -> AsyncGenerator[Event, None]:
        """Call the model; retry transient failures only while no text has been sent."""
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            failure: ReplyError | None = None
            sent_text = False
            async with aclosing(self._attempt(request)) as events:
                async for event in events:
                    if isinstance(event, TextDelta):
                        sent_text = True
                    if isinstance(event, ReplyError) and event.retryable and not sent_text:
                        failure = event
                        break
                    yield event
            if failure is None:
                return
            delay = self._retry_delay(attempt, failure.retry_after)
            elapsed = time.monotonic() - started
            if attempt >= self.retry_attempts or elapsed + delay > self.retry_budget:
                self._log_failure(request, failure, attempt, final=True)
                yield failure
                return
            self._log_failure(request, failure, attempt, final=False)
            await asyncio.sleep(delay)

    def _log_failure(
        self, request: ChatRequest, error: ReplyError, attempt: int, final: bool
    ) -> None:
        logger.warning(
            "upstream_failure model=%s attempt=%d final=%s kind=%s status=%s code=%s log_id=%s "
            "detail=%r",
            request.model,
            attempt,
            final,
            error.kind,
            error.status,
            error.code,
            error.log_id,
            error.detail,
        )

    async def _attempt(self, request: ChatRequest) -> AsyncGenerator[Event, None]:
        client = shared_client(connect_timeout=self.connect_timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.first_token_timeout
        headers_deadline = min(deadline, loop.time() + self.headers_timeout)
        http_request = client.build_request(
            "POST",
            self.url_for(request.model),
            headers=self.headers_for(request),
            content=json.dumps(request_body(request, stream=True)).encode(),
        )
        try:
            async with asyncio.timeout_at(headers_deadline):
                response = await client.send(http_request, stream=True)
        except TimeoutError:
            yield _HEADERS_TIMEOUT if headers_deadline < deadline else _FIRST_TOKEN_TIMEOUT
            return
        except httpx.HTTPError as exc:
            yield _connection_error("Could not reach the model service.", exc)
            return
        try:
            async for event in self._read(response, deadline):
                yield event
        finally:
            await response.aclose()

    async def _read(self, response: httpx.Response, deadline: float) -> AsyncGenerator[Event, None]:
        loop = asyncio.get_running_loop()
        log_id = response.headers.get("cf-aig-log-id", "")
        content_type = response.headers.get("content-type", "")
        try:
            if response.status_code >= 400 or "text/event-stream" not in content_type:
                async with asyncio.timeout_at(deadline):
                    body = await _read_capped(response)
                if response.status_code >= 400:
                    yield error_from_response(response.status_code, body, response.headers)
                    return
                yield ResponseStarted(log_id)
                try:
                    data = json.loads(body)
                except ValueError:
                    data = None
                for event in events_from_message(data):
                    yield event
                return
        except TimeoutError:
            yield _FIRST_TOKEN_TIMEOUT
            return
        except httpx.HTTPError as exc:
            yield _connection_error("The connection to the model was lost.", exc)
            return

        yield ResponseStarted(log_id)
        decoder = SSEDecoder()
        interpreter = StreamInterpreter()
        chunks = response.aiter_bytes()
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                break
            except TimeoutError:
                if interpreter.got_text:
                    yield ReplyError("The model stopped sending text (stalled).", kind="stall")
                else:
                    yield _FIRST_TOKEN_TIMEOUT
                return
            except httpx.HTTPError as exc:
                yield ReplyError(
                    "The connection to the model was lost before the reply finished.",
                    kind="dropped",
                    detail=type(exc).__name__,
                    retryable=not interpreter.got_text,
                )
                return
            for sse in decoder.feed(chunk):
                for event in interpreter.handle(sse):
                    if isinstance(event, TextDelta):
                        deadline = loop.time() + self.idle_timeout
                    elif isinstance(event, Finished):
                        await _drain(chunks)
                    yield event
                    if isinstance(event, ReplyError):
                        return
                if interpreter.finished:
                    return
        for sse in decoder.close():
            for event in interpreter.handle(sse):
                yield event
        if not interpreter.finished:
            yield ReplyError(
                "The reply ended before it was complete.",
                kind="unterminated",
                retryable=not interpreter.got_text,
            )


async def _drain(chunks: AsyncIterator[bytes]) -> None:
    """Read a finished stream to its end, so its connection goes back to the pool:
    the next reply then skips the TCP and TLS handshakes."""
    with contextlib.suppress(TimeoutError, httpx.HTTPError):
        async with asyncio.timeout(1.0):
            async for _ in chunks:
                pass


async def _read_capped(response: httpx.Response) -> bytes:
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > _ERROR_BODY_LIMIT:
            break
    return bytes(body)
