"""The Cloudflare provider over real httpx against the gateway emulator."""

import asyncio
import contextlib
import time

import pytest

from conversations.gateway import (
    ChatRequest,
    Event,
    Finished,
    ReplyError,
    ResponseStarted,
    TextDelta,
    Usage,
)
from conversations.gateway.cloudflare import CloudflareProvider, events_from_message
from tests.conftest import SONNET
from tests.emulator import Behaviour, GatewayEmulator

PROMPT = "Explain the concept of recursion with a simple example."


def provider_for(emulator: GatewayEmulator, **overrides: object) -> CloudflareProvider:
    options: dict[str, object] = {
        "account_id": emulator.account,
        "api_token": "test-token",
        "gateway": "default",
        "api_base_url": emulator.api_base_url,
        "gateway_base_url": emulator.gateway_base_url,
        "retry_base_delay": 0.01,
        "retry_max_delay": 0.05,
        **overrides,
    }
    return CloudflareProvider(**options)  # type: ignore[arg-type]


def request(text: str = PROMPT, **fields: object) -> ChatRequest:
    return ChatRequest(
        model=SONNET, messages=[{"role": "user", "content": text}], max_tokens=1024, **fields
    )  # type: ignore[arg-type]


def collect(provider: CloudflareProvider, chat: ChatRequest | None = None) -> list[Event]:
    async def run() -> list[Event]:
        return [event async for event in provider.stream(chat or request())]

    return asyncio.run(run())


def text_of(events: list[Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def expected_reply(emulator: GatewayEmulator, prompt: str = PROMPT) -> str:
    from tests.emulator import reply_for

    return reply_for({"messages": [{"role": "user", "content": prompt}]})


@pytest.mark.parametrize("shape", ["anthropic", "workers", "openai"])
@pytest.mark.parametrize("wire", [{}, {"split_bytes": 1, "crlf": True, "comments": True}])
def test_every_stream_shape_gives_the_same_reply(emulator, shape, wire) -> None:
    emulator.enqueue(Behaviour(shape=shape, **wire))
    events = collect(provider_for(emulator))
    assert text_of(events) == expected_reply(emulator)
    assert isinstance(events[0], ResponseStarted) and events[0].log_id.startswith("log-")
    usage = [e for e in events if isinstance(e, Usage)][-1]  # the last one counts
    assert usage.output_tokens and usage.output_tokens > 10
    assert events[-1] == Finished("end_turn")


def test_rest_route_when_no_gateway(emulator) -> None:
    collect(provider_for(emulator, gateway=""))
    assert emulator.requests[-1].path == f"/client/v4/accounts/{emulator.account}/ai/run/{SONNET}"


def test_gateway_headers(emulator) -> None:
    emulator.gateway_token = "gw-secret"
    chat = request(metadata={"conversation": "c-1", "turn": "7"})
    events = collect(provider_for(emulator, gateway_token="gw-secret"), chat)
    headers = emulator.requests[-1].headers
    assert headers["cf-aig-authorization"] == "Bearer gw-secret"
    assert headers["cf-aig-metadata"] == '{"conversation": "c-1", "turn": "7"}'
    assert headers["content-type"] == "application/json"
    assert text_of(events)


def test_max_tokens_stop_reason_is_reported(emulator) -> None:
    emulator.enqueue(Behaviour(stop_reason="max_tokens"))
    assert collect(provider_for(emulator))[-1] == Finished("max_tokens")


def test_429_is_retried_after_retry_after(emulator) -> None:
    emulator.enqueue(Behaviour(status=429, retry_after=1), Behaviour())
    started = time.monotonic()
    events = collect(provider_for(emulator))
    assert time.monotonic() - started >= 1.0
    assert len(emulator.requests) == 2
    assert text_of(events) == expected_reply(emulator)


@pytest.mark.parametrize(("status", "error_format"), [(500, "cloudflare"), (529, "anthropic")])
def test_server_errors_are_retried_then_reported(emulator, status, error_format) -> None:
    emulator.default = Behaviour(status=status, error_format=error_format)
    events = collect(provider_for(emulator, retry_attempts=3))
    assert len(emulator.requests) == 3
    assert events == [events[-1]]
    error = events[-1]
    assert isinstance(error, ReplyError)
    assert error.status == status
    assert error.message == "The model service is overloaded or failing. Please try again."


def test_retries_stay_within_the_budget(emulator) -> None:
    emulator.default = Behaviour(status=429, retry_after=5)
    started = time.monotonic()
    events = collect(provider_for(emulator, retry_budget=2))
    assert time.monotonic() - started < 1
    assert len(emulator.requests) == 1
    assert isinstance(events[-1], ReplyError) and events[-1].status == 429


def test_bad_request_is_not_retried_and_says_what_is_wrong(emulator) -> None:
    emulator.enqueue(Behaviour(status=400))
    events = collect(provider_for(emulator))
    assert len(emulator.requests) == 1
    assert isinstance(events[-1], ReplyError)
    assert events[-1].message == "This model is not available on the configured Cloudflare account."


def test_refused_token_never_appears_in_the_error(emulator) -> None:
    events = collect(provider_for(emulator, api_token="wrong-secret-token"))
    error = events[-1]
    assert isinstance(error, ReplyError) and error.status == 401
    assert "credentials" in error.message
    assert "wrong-secret-token" not in repr(error)


def test_drop_before_first_token_is_retried(emulator) -> None:
    emulator.enqueue(Behaviour(drop_after=0), Behaviour())
    events = collect(provider_for(emulator))
    assert len(emulator.requests) == 2
    assert text_of(events) == expected_reply(emulator)


def test_drop_mid_stream_keeps_text_and_is_not_retried(emulator) -> None:
    emulator.enqueue(Behaviour(drop_after=3))
    events = collect(provider_for(emulator))
    assert len(emulator.requests) == 1
    assert expected_reply(emulator).startswith(text_of(events)) and text_of(events)
    assert isinstance(events[-1], ReplyError) and events[-1].kind == "dropped"


def test_error_event_mid_stream(emulator) -> None:
    emulator.enqueue(Behaviour(error_event_after=2))
    events = collect(provider_for(emulator))
    assert len([e for e in events if isinstance(e, TextDelta)]) == 2
    assert isinstance(events[-1], ReplyError) and events[-1].code == "overloaded_error"


@pytest.mark.parametrize("shape", ["anthropic", "workers", "openai"])
def test_stream_without_terminator_is_an_error(emulator, shape) -> None:
    emulator.enqueue(Behaviour(shape=shape, unterminated=True))
    events = collect(provider_for(emulator))
    assert text_of(events) == expected_reply(emulator)
    assert isinstance(events[-1], ReplyError) and events[-1].kind == "unterminated"


def test_stall_between_tokens_ends_in_error(emulator) -> None:
    emulator.enqueue(Behaviour(stall_after=2))
    started = time.monotonic()
    events = collect(provider_for(emulator, idle_timeout=0.3))
    assert time.monotonic() - started < 2
    assert len([e for e in events if isinstance(e, TextDelta)]) == 2
    assert isinstance(events[-1], ReplyError) and events[-1].kind == "stall"


def test_no_first_token_in_time_ends_in_error(emulator) -> None:
    emulator.enqueue(Behaviour(first_token_delay=5))
    started = time.monotonic()
    events = collect(provider_for(emulator, first_token_timeout=0.3))
    assert time.monotonic() - started < 2
    assert isinstance(events[-1], ReplyError) and events[-1].kind == "first_token_timeout"
    assert not text_of(events)


def test_unreachable_upstream_is_a_connection_error() -> None:
    provider = CloudflareProvider(
        account_id="a",
        api_token="t",
        gateway_base_url="http://127.0.0.1:9/v1",
        retry_attempts=2,
        retry_base_delay=0.01,
    )
    events = collect(provider)
    assert isinstance(events[-1], ReplyError) and events[-1].kind == "connection"
    assert events[-1].message == "Could not reach the model service."


@pytest.mark.parametrize(
    "payload",
    [
        {
            "result": {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": " there"}],
                "stop_reason": "end_turn",
                "usage": {"input_tokens": 5, "output_tokens": 2},
            },
            "success": True,
            "errors": [],
            "messages": [],
        },
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "text", "text": "Hi there"}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 5, "output_tokens": 2},
        },
        {
            "result": {
                "response": "Hi there",
                "usage": {"prompt_tokens": 5, "completion_tokens": 2},
            },
            "success": True,
            "errors": [],
            "messages": [],
        },
    ],
    ids=["enveloped-anthropic", "bare-anthropic", "workers-ai"],
)
def test_non_streamed_shapes(payload) -> None:
    assert events_from_message(payload) == [
        TextDelta("Hi there"),
        Usage(5, 2),
        Finished("end_turn"),
    ]


def test_non_streamed_reply_over_the_wire(emulator, monkeypatch) -> None:
    from conversations.gateway import cloudflare

    original = cloudflare.request_body
    monkeypatch.setattr(
        cloudflare, "request_body", lambda r, stream=True: original(r, stream=False)
    )
    events = collect(provider_for(emulator, gateway=""))
    assert text_of(events) == expected_reply(emulator)
    assert events[-1] == Finished("end_turn")


def test_finished_streams_give_their_connection_back_for_the_next_reply(emulator) -> None:
    provider = provider_for(emulator)

    async def two_replies() -> list[str]:
        texts = []
        for _ in range(2):
            texts.append(text_of([e async for e in provider.stream(request())]))
        return texts

    assert asyncio.run(two_replies()) == [expected_reply(emulator)] * 2
    assert emulator.connection_count == 1  # no second TCP (and, upstream, TLS) handshake


def test_concurrent_replies_each_get_a_connection_and_the_next_burst_reuses_them(
    emulator,
) -> None:
    from conversations.gateway.cloudflare import shared_client

    emulator.default = Behaviour(first_token_delay=0.05, token_delay=0.005)
    provider = provider_for(emulator)

    async def burst() -> list[str]:
        return await asyncio.gather(*(asyncio.create_task(_text(provider)) for _ in range(30)))

    async def two_bursts() -> tuple[list[str], int, int]:
        first = await burst()
        second = await burst()
        transport = shared_client(connect_timeout=5)._transport
        return first + second, transport.busy, transport.idle  # type: ignore[attr-defined]

    texts, busy, idle = asyncio.run(two_bursts())
    assert texts == [expected_reply(emulator)] * 60
    assert emulator.connection_count == 30  # the second burst opened none
    assert (busy, idle) == (0, 30)


def test_a_reply_abandoned_mid_stream_frees_its_connection_slot(emulator) -> None:
    from conversations.gateway.cloudflare import shared_client

    emulator.default = Behaviour(token_delay=0.01)
    provider = provider_for(emulator)

    async def abandon() -> tuple[int, int]:
        async with contextlib.aclosing(provider.stream(request())) as events:
            async for event in events:
                if isinstance(event, TextDelta):
                    break
        transport = shared_client(connect_timeout=5)._transport
        return transport.busy, transport.idle  # type: ignore[attr-defined]

    busy, idle = asyncio.run(abandon())
    assert busy == 0  # the connection mid-reply is not reused; its slot is free
    assert idle <= 1


def test_at_most_max_idle_connections_are_kept(emulator) -> None:
    import httpx

    from conversations.gateway.pool import ConnectionListTransport

    emulator.default = Behaviour(first_token_delay=0.05)
    url = provider_for(emulator).url_for(SONNET)

    async def run() -> tuple[int, int]:
        transport = ConnectionListTransport(max_idle=3)
        async with httpx.AsyncClient(transport=transport) as client:

            async def one() -> int:
                response = await client.post(
                    url,
                    json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10},
                    headers=provider_for(emulator).headers_for(request()),
                )
                return response.status_code

            statuses = await asyncio.gather(*(one() for _ in range(8)))
            assert statuses == [200] * 8
            return transport.busy, transport.idle

    assert asyncio.run(run()) == (0, 3)
    assert emulator.connection_count == 8


async def _text(provider: CloudflareProvider) -> str:
    return text_of([e async for e in provider.stream(request())])


def test_an_upstream_that_never_sends_headers_fails_fast_and_is_retried(
    emulator, cloudflare_settings
) -> None:
    cloudflare_settings.CHAT_HEADERS_TIMEOUT = 0.3
    cloudflare_settings.CHAT_FIRST_TOKEN_TIMEOUT = 30
    cloudflare_settings.CHAT_RETRY_ATTEMPTS = 2
    emulator.default = Behaviour(headers_delay=3600)  # reads the request, never answers
    started = time.monotonic()
    events = collect(CloudflareProvider.from_settings())
    assert time.monotonic() - started < 3  # two short waits, not the first-token timeout
    assert len(emulator.requests) == 2
    assert events == [events[-1]]
    error = events[-1]
    assert isinstance(error, ReplyError) and error.kind == "headers_timeout"
    assert error.retryable
    assert error.message == "The model service did not answer."


def test_a_slow_first_token_after_prompt_headers_is_governed_by_the_first_token_timeout(
    emulator,
) -> None:
    emulator.enqueue(Behaviour(first_token_delay=1.0))
    provider = provider_for(emulator, headers_timeout=0.3, first_token_timeout=10)
    events = collect(provider)
    assert len(emulator.requests) == 1
    assert text_of(events) == expected_reply(emulator)
    assert events[-1] == Finished("end_turn")


@pytest.mark.parametrize(
    ("shape", "fault"),
    [
        ("anthropic", {"drop_after": 3}),
        ("anthropic", {"stall_after": 3}),
        ("anthropic", {"unterminated": True}),
        ("workers", {"unterminated": True}),
        ("openai", {"unterminated": True}),
    ],
)
def test_a_failed_reply_still_reports_its_input_tokens(emulator, shape, fault) -> None:
    emulator.enqueue(Behaviour(shape=shape, input_tokens=321, **fault))
    events = collect(provider_for(emulator, idle_timeout=0.3))
    assert text_of(events)
    assert isinstance(events[-1], ReplyError)
    usages = [e for e in events if isinstance(e, Usage)]
    assert usages and usages[-1].input_tokens == 321


def test_input_tokens_are_known_before_the_first_text_arrives(emulator) -> None:
    emulator.enqueue(Behaviour(input_tokens=321, token_delay=0.01))
    provider = provider_for(emulator)

    async def stop_at_first_text() -> list[Event]:
        seen: list[Event] = []
        async with contextlib.aclosing(provider.stream(request())) as events:
            async for event in events:
                seen.append(event)
                if isinstance(event, TextDelta):
                    break
        return seen

    seen = asyncio.run(stop_at_first_text())
    assert isinstance(seen[-1], TextDelta)
    assert [e.input_tokens for e in seen if isinstance(e, Usage)] == [321]


def test_a_response_adds_up_a_calls_events() -> None:
    from conversations.gateway import Response

    response = Response()
    for event in (
        ResponseStarted("log-1"),
        Usage(321, 1),
        TextDelta("Hel"),
        TextDelta("lo"),
        Usage(321, 2),
        Finished("max_tokens"),
    ):
        response.add(event)
    assert (response.text, response.length) == ("Hello", 5)
    assert (response.usage, response.stop_reason, response.log_id) == (
        Usage(321, 2),
        "max_tokens",
        "log-1",
    )
    assert response.finished and response.error is None
    assert response.seconds_to_first_text is not None and response.seconds_to_first_text >= 0
    failed = Response()
    failed.add(ReplyError("gone", kind="dropped", log_id="log-2"))
    assert (failed.error.kind, failed.log_id, failed.text) == ("dropped", "log-2", "")
