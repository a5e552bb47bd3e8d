"""The four seed examples: a conversation's settings become exactly the seed's body."""

import asyncio

import pytest

from conversations.gateway import TextDelta
from conversations.gateway.cloudflare import CloudflareProvider, request_body
from conversations.services import ReplyOutcome, message_send, reply_finish, reply_request
from conversations.services import conversation_create as create
from tests.conftest import SONNET

DETECTIVE = "Write a short story opening about a detective finding an unusual clue."
ROAD_TRIP = "I need help planning a road trip from San Francisco to Los Angeles."
ROAD_TRIP_REPLY = (
    "I'd be happy to help! The drive is about 380 miles and takes roughly 5-6 hours. "
    "Would you like suggestions for scenic routes or interesting stops along the way?"
)

SEEDS = {
    "system message": (
        {
            "system_prompt": "You are a helpful coding assistant specializing in Python.",
            "temperature": 0.3,
            "max_tokens": 1024,
        },
        [],
        "How do I read a JSON file in Python?",
        {
            "messages": [{"role": "user", "content": "How do I read a JSON file in Python?"}],
            "max_tokens": 1024,
            "system": "You are a helpful coding assistant specializing in Python.",
            "temperature": 0.3,
        },
    ),
    "multi-turn": (
        {"max_tokens": 1024},
        [(ROAD_TRIP, ROAD_TRIP_REPLY)],
        "Yes, what are some good places to stop?",
        {
            "messages": [
                {"role": "user", "content": ROAD_TRIP},
                {"role": "assistant", "content": ROAD_TRIP_REPLY},
                {"role": "user", "content": "Yes, what are some good places to stop?"},
            ],
            "max_tokens": 1024,
        },
    ),
    "creative writing": (
        {"max_tokens": 512, "temperature": 0.8},
        [],
        DETECTIVE,
        {
            "messages": [{"role": "user", "content": DETECTIVE}],
            "max_tokens": 512,
            "temperature": 0.8,
        },
    ),
    "streaming": (
        {"max_tokens": 1024},
        [],
        "Explain the concept of recursion with a simple example.",
        {
            "messages": [
                {
                    "role": "user",
                    "content": "Explain the concept of recursion with a simple example.",
                }
            ],
            "max_tokens": 1024,
            "stream": True,
        },
    ),
}


def seed_reply_request(user, settings_fields, history, prompt):
    conversation = create(owner=user, model=SONNET, **settings_fields)
    for question, answer in history:
        _, reply = message_send(conversation=conversation, text=question)
        reply_finish(turn_id=reply.pk, outcome=ReplyOutcome(state="complete", content=answer))
    _, reply = message_send(conversation=conversation, text=prompt)
    return reply_request(turn=reply)


@pytest.mark.django_db
@pytest.mark.parametrize("name", SEEDS)
def test_seed_body_from_conversation_settings(name, user, fake_provider) -> None:
    settings_fields, history, prompt, seed_body = SEEDS[name]
    request = seed_reply_request(user, settings_fields, history, prompt)
    assert request_body(request, stream=True) == {**seed_body, "stream": True}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("name", SEEDS)
def test_seed_body_reaches_the_gateway(name, user, cloudflare_settings, emulator) -> None:
    settings_fields, history, prompt, seed_body = SEEDS[name]
    request = seed_reply_request(user, settings_fields, history, prompt)

    async def call() -> str:
        provider = CloudflareProvider.from_settings()
        return "".join([e.text async for e in provider.stream(request) if isinstance(e, TextDelta)])

    text = asyncio.run(call())
    recorded = emulator.requests[-1]
    assert recorded.body == {**seed_body, "stream": True}
    assert recorded.path == f"/v1/{emulator.account}/default/workers-ai/{SONNET}"
    assert recorded.headers["authorization"] == "Bearer test-token"
    assert text  # the emulator answered with the seed's reply


def test_temperature_and_top_p_never_sent_together() -> None:
    from conversations.gateway import ChatRequest

    request = ChatRequest(model=SONNET, messages=[], max_tokens=5, temperature=0.2, top_p=0.9)
    body = request_body(request)
    assert body["temperature"] == 0.2
    assert "top_p" not in body
