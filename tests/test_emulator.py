"""Self-test of the Cloudflare gateway emulator (no Django needed)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.emulator import SEED_REPLIES, Behaviour, GatewayEmulator, split_tokens

MODEL = "anthropic/claude-sonnet-4"
TOKEN = {"Authorization": "Bearer test-token"}
RECURSION = "Explain the concept of recursion with a simple example."
ROAD_TRIP = "Yes, what are some good places to stop?"


@pytest.fixture(scope="module")
def server() -> Iterator[GatewayEmulator]:
    emulator = GatewayEmulator().start_in_thread()
    yield emulator
    emulator.stop_thread()


@pytest.fixture
def emulator(server: GatewayEmulator) -> Iterator[GatewayEmulator]:
    server.clear()
    server.default = Behaviour()
    server.gateway_token = None
    yield server
    server.clear()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5.0) as http:
        yield http


def gateway_url(emulator: GatewayEmulator, model: str = MODEL) -> str:
    return f"{emulator.gateway_base_url}/acct-test/default/workers-ai/{model}"


def rest_url(emulator: GatewayEmulator, model: str = MODEL) -> str:
    return f"{emulator.api_base_url}/accounts/acct-test/ai/run/{model}"


def chat(prompt: str, *, stream: bool = True) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": prompt}], "max_tokens": 1024, "stream": stream}


def parse_sse(raw: bytes) -> list[tuple[str, str]]:
    """(event, data) pairs, by the SSE rules (any line ending, comments, multi-line data)."""
    events: list[tuple[str, str]] = []
    name = ""
    data: list[str] = []
    for line in re.split(r"\r\n|\r|\n", raw.decode("utf-8")):
        if not line:
            if data:
                events.append((name or "message", "\n".join(data)))
            name, data = "", []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
    return events


def text_of(events: list[tuple[str, str]]) -> str:
    parts = []
    for name, data in events:
        if data == "[DONE]" or name in {"message_start", "ping", "message_stop", "error"}:
            continue
        obj = json.loads(data)
        if name == "content_block_delta":
            parts.append(obj["delta"]["text"])
        elif "response" in obj:
            parts.append(obj["response"])
        elif "choices" in obj:
            parts.append(obj["choices"][0]["delta"].get("content") or "")
    return "".join(parts)


def test_anthropic_stream_on_gateway(emulator: GatewayEmulator, client: httpx.Client) -> None:
    body = {
        "messages": [
            {"role": "user", "content": "I need help planning a road trip."},
            {"role": "assistant", "content": "Happy to help!"},
            {"role": "user", "content": ROAD_TRIP},
        ],
        "max_tokens": 1024,
        "system": "Be brief.",
        "stream": True,
    }
    response = client.post(gateway_url(emulator), json=body, headers=TOKEN)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    assert response.headers["transfer-encoding"] == "chunked"
    assert re.fullmatch(r"log-\d{6}", response.headers["cf-aig-log-id"])
    events = parse_sse(response.content)
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert text_of(events) == SEED_REPLIES[ROAD_TRIP]
    start = json.loads(events[0][1])
    assert start["message"]["usage"]["input_tokens"] > 0
    delta = json.loads(events[-2][1])
    assert delta["delta"]["stop_reason"] == "end_turn"
    assert delta["usage"]["output_tokens"] == len(split_tokens(SEED_REPLIES[ROAD_TRIP]))
    (recorded,) = emulator.requests
    assert recorded.route == "gateway" and recorded.model == MODEL
    assert recorded.gateway == "default" and recorded.account == "acct-test"
    assert recorded.headers["authorization"] == "Bearer test-token"
    assert recorded.body == body
    assert recorded.log_id == response.headers["cf-aig-log-id"]
    # The client can hold the whole body a moment before the server records it.
    assert emulator.wait_for(lambda: recorded.outcome == "complete", 2.0)


@pytest.mark.parametrize("shape", ["workers", "openai"])
def test_data_only_shapes_on_rest(
    emulator: GatewayEmulator, client: httpx.Client, shape: str
) -> None:
    emulator.enqueue(Behaviour(shape=shape))  # type: ignore[arg-type]
    response = client.post(rest_url(emulator), json=chat(RECURSION), headers=TOKEN)
    assert response.status_code == 200
    events = parse_sse(response.content)
    assert events[-1][1] == "[DONE]"
    assert text_of(events) == SEED_REPLIES[RECURSION]
    last = json.loads(events[-2][1])
    if shape == "workers":
        assert last["response"] == "" and last["usage"]["completion_tokens"] > 0
    else:
        assert last["choices"][0]["finish_reason"] == "stop"
    assert emulator.requests[0].route == "rest"


def test_odd_chunks_crlf_comments_and_echo(emulator: GatewayEmulator) -> None:
    emulator.enqueue(Behaviour(split_bytes=3, crlf=True, comments=True))
    raw = bytearray()
    with (
        httpx.Client(timeout=5.0) as http,
        http.stream("POST", gateway_url(emulator), json=chat(RECURSION), headers=TOKEN) as r,
    ):
        chunks = list(r.iter_raw())
        raw.extend(b"".join(chunks))
    assert len(chunks) > 1
    assert b"\r\n" in raw and b": keep-alive" in raw
    assert text_of(parse_sse(bytes(raw))) == SEED_REPLIES[RECURSION]
    response = httpx.post(gateway_url(emulator), json=chat("héllo ✓"), headers=TOKEN)
    assert text_of(parse_sse(response.content)) == "You said: héllo ✓"


def test_tokens_and_keep_alive(emulator: GatewayEmulator, client: httpx.Client) -> None:
    emulator.default = Behaviour(tokens=5, shape="workers")
    before = emulator.connection_count
    for _ in range(3):
        response = client.post(gateway_url(emulator), json=chat("x"), headers=TOKEN)
        assert text_of(parse_sse(response.content)) == "tok0 tok1 tok2 tok3 tok4"
    assert emulator.connection_count == before + 1


def test_auth(emulator: GatewayEmulator, client: httpx.Client) -> None:
    response = client.post(gateway_url(emulator), json=chat("hi"))
    assert response.status_code == 401
    assert response.json()["errors"][0]["code"] == 10000
    assert response.json()["success"] is False
    emulator.gateway_token = "gw-secret"
    assert client.post(gateway_url(emulator), json=chat("hi"), headers=TOKEN).status_code == 401
    headers = {**TOKEN, "cf-aig-authorization": "Bearer gw-secret"}
    assert client.post(gateway_url(emulator), json=chat("hi"), headers=headers).status_code == 200
    assert client.post(rest_url(emulator), json=chat("hi"), headers=TOKEN).status_code == 200
    assert len(emulator.requests) == 4


def test_bad_requests(emulator: GatewayEmulator, client: httpx.Client) -> None:
    assert client.get(gateway_url(emulator), headers=TOKEN).status_code == 404
    response = client.post(f"{emulator.base_url}/nope", json={}, headers=TOKEN)
    assert response.status_code == 404
    bad = client.post(gateway_url(emulator), content=b"{nope", headers=TOKEN)
    assert bad.status_code == 400 and bad.json()["success"] is False
    no_max = client.post(
        gateway_url(emulator), json={"messages": chat("x")["messages"]}, headers=TOKEN
    )
    assert no_max.status_code == 400
    both = {**chat("x"), "temperature": 0.5, "top_p": 0.9}
    haiku = gateway_url(emulator, "anthropic/claude-haiku-4.5")
    assert client.post(haiku, json=both, headers=TOKEN).status_code == 400
    assert client.post(gateway_url(emulator), json=both, headers=TOKEN).status_code == 200


def test_error_statuses(emulator: GatewayEmulator, client: httpx.Client) -> None:
    emulator.enqueue(
        Behaviour(status=429, retry_after=2),
        Behaviour(status=529, error_format="anthropic"),
    )
    response = client.post(gateway_url(emulator), json=chat("hi"), headers=TOKEN)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "2"
    assert response.json() == {
        "success": False,
        "errors": [{"code": 3040, "message": "Capacity temporarily exceeded"}],
        "result": None,
        "messages": [],
    }
    response = client.post(gateway_url(emulator), json=chat("hi"), headers=TOKEN)
    assert response.status_code == 529
    assert response.json()["error"]["type"] == "overloaded_error"
    assert response.json()["request_id"].startswith("req_")
    assert client.post(gateway_url(emulator), json=chat("hi"), headers=TOKEN).status_code == 200


def test_drop_after(emulator: GatewayEmulator, client: httpx.Client) -> None:
    emulator.enqueue(Behaviour(drop_after=3))
    received: list[bytes] = []
    with (
        pytest.raises(httpx.RemoteProtocolError),
        client.stream("POST", gateway_url(emulator), json=chat(RECURSION), headers=TOKEN) as r,
    ):
        received.extend(r.iter_raw())
    assert text_of(parse_sse(b"".join(received))) == "".join(
        split_tokens(SEED_REPLIES[RECURSION])[:3]
    )
    assert emulator.wait_for(lambda: emulator.requests[0].outcome == "dropped", 2.0)


def test_error_event_and_unterminated(emulator: GatewayEmulator, client: httpx.Client) -> None:
    emulator.enqueue(Behaviour(error_event_after=2), Behaviour(unterminated=True, shape="openai"))
    response = client.post(gateway_url(emulator), json=chat("one two three"), headers=TOKEN)
    events = parse_sse(response.content)
    assert events[-1][0] == "error"
    assert json.loads(events[-1][1])["error"]["type"] == "overloaded_error"
    assert text_of(events) == "You said: "
    response = client.post(gateway_url(emulator), json=chat("one two"), headers=TOKEN)
    events = parse_sse(response.content)
    assert text_of(events) == "You said: one two"
    assert all(data != "[DONE]" for _, data in events)


def test_non_streamed(emulator: GatewayEmulator, client: httpx.Client) -> None:
    prompt = "What are the three laws of thermodynamics?"
    rest = client.post(rest_url(emulator), json=chat(prompt, stream=False), headers=TOKEN)
    assert rest.headers["content-type"] == "application/json"
    envelope = rest.json()
    assert envelope["success"] is True and envelope["errors"] == []
    message = envelope["result"]
    assert message["type"] == "message" and message["stop_reason"] == "end_turn"
    assert message["content"] == [{"type": "text", "text": SEED_REPLIES[prompt]}]
    bare = client.post(gateway_url(emulator), json=chat(prompt, stream=False), headers=TOKEN)
    assert bare.json()["content"][0]["text"] == SEED_REPLIES[prompt]
    emulator.enqueue(Behaviour(shape="workers", text="plain"))
    workers = client.post(gateway_url(emulator), json=chat(prompt, stream=False), headers=TOKEN)
    assert workers.json()["result"]["response"] == "plain"
    assert workers.json()["result"]["usage"]["completion_tokens"] == 1


def test_client_disconnect_is_noticed(emulator: GatewayEmulator, client: httpx.Client) -> None:
    emulator.enqueue(Behaviour(tokens=100, token_delay=0.02))
    with client.stream("POST", gateway_url(emulator), json=chat("x"), headers=TOKEN) as r:
        next(r.iter_raw())
    assert emulator.wait_for(lambda: emulator.requests[0].outcome == "disconnected", 2.0)


def test_stop_closes_stalled_streams() -> None:
    emulator = GatewayEmulator(api_token=None, account=None).start_in_thread()
    emulator.default = Behaviour(stall_after=1)
    with httpx.Client(timeout=5.0) as http:
        url = gateway_url(emulator)
        with http.stream("POST", url, json=chat("stall here")) as response:
            stream = response.iter_raw()
            seen = b""
            while b"content_block_delta" not in seen:
                seen += next(stream)
            assert emulator.wait_for(lambda: emulator.requests[0].outcome == "stalled", 2.0)
            started = time.monotonic()
            emulator.stop_thread()
            assert time.monotonic() - started < 1.0
            with pytest.raises(httpx.HTTPError):
                for _ in stream:
                    pass
