"""A real daphne process, the gateway emulator and a real WebSocket client."""

import asyncio
import json
import re
import sqlite3

import pytest
import websockets

from tests.conftest import SONNET
from tests.emulator import Behaviour, reply_for
from tests.test_request_body import SEEDS

pytestmark = pytest.mark.live
PROMPT = "Explain the concept of recursion with a simple example."


def create_conversation(client, **fields: str) -> str:
    client.get("/")
    response = client.post(
        "/conversations/",
        data={"csrfmiddlewaretoken": client.cookies["csrftoken"], **fields},
    )
    assert response.status_code == 302, response.text[:800]
    return response.headers["location"].strip("/").split("/")[-1]


async def chat(server, client, conversation_id: str, message: str) -> list[str]:
    cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
    frames: list[str] = []
    async with websockets.connect(
        f"{server.ws_url}/ws/conversations/{conversation_id}/",
        additional_headers={"Cookie": cookie},
        origin=server.url,
    ) as socket:
        await socket.send(json.dumps({"message": message, "HEADERS": {"HX-Request": "true"}}))
        while True:
            frame = await asyncio.wait_for(socket.recv(), timeout=30)
            frames.append(str(frame))
            if re.search(r'data-state="(complete|error|cancelled)"', str(frame)):
                return frames


def stored_turns(server, conversation_id: str) -> list[tuple[str, str, str, str]]:
    with sqlite3.connect(server.var_dir / "db.sqlite3") as db:
        return db.execute(
            "SELECT role, state, content, gateway_log_id FROM conversations_turn "
            "WHERE conversation_id = ? ORDER BY position",
            (conversation_id.replace("-", ""),),
        ).fetchall()


def test_reply_streams_from_the_gateway_through_daphne(live_server_factory, emulator) -> None:
    emulator.default = Behaviour(token_delay=0.005)
    server = live_server_factory(**emulator.env())
    client = server.login()
    conversation_id = create_conversation(client, model=SONNET, max_tokens="1024")
    frames = asyncio.run(chat(server, client, conversation_id, PROMPT))

    streamed = [f for f in frames if "beforeend:#turn-" in f]
    assert len(streamed) > 5  # token by token, coalesced into small pieces
    assert 'data-state="complete"' in frames[-1]
    assert "<h1>Recursion Explained</h1>" in frames[-1]  # rendered Markdown
    assert emulator.requests[-1].body == {
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 1024,
        "stream": True,
    }
    (user_role, _, user_text, _), (role, state, text, log_id) = stored_turns(
        server, conversation_id
    )
    assert (user_role, user_text) == ("user", PROMPT)
    assert (role, state) == ("assistant", "complete")
    assert text.startswith("# Recursion Explained")
    assert log_id == emulator.requests[-1].log_id

    page = client.get(f"/conversations/{conversation_id}/").text
    assert 'data-role="assistant" data-state="complete"' in page
    assert "Recursion Explained" in page


def test_another_users_socket_is_refused(live_server_factory, emulator) -> None:
    server = live_server_factory(**emulator.env())
    conversation_id = create_conversation(server.login(), model=SONNET)
    intruder = server.login("mallory")
    assert intruder.get(f"/conversations/{conversation_id}/").status_code == 404

    async def attempt() -> None:
        cookie = "; ".join(f"{k}={v}" for k, v in intruder.cookies.items())
        async with websockets.connect(
            f"{server.ws_url}/ws/conversations/{conversation_id}/",
            additional_headers={"Cookie": cookie},
            origin=server.url,
        ) as socket:
            await socket.recv()

    with pytest.raises(websockets.exceptions.InvalidStatus):
        asyncio.run(attempt())


def test_the_four_seed_examples_send_the_seed_bodies_and_render(live_server_factory, emulator):
    server = live_server_factory(**emulator.env())
    client = server.login()
    for name, (settings_fields, history, prompt, seed_body) in SEEDS.items():
        fields = {k: str(v) for k, v in settings_fields.items()}
        conversation_id = create_conversation(client, model=SONNET, **fields)
        for question, _ in history:
            asyncio.run(chat(server, client, conversation_id, question))
        if history:
            # The seed's earlier assistant turn is what the model said then.
            with sqlite3.connect(server.var_dir / "db.sqlite3") as db:
                db.execute(
                    "UPDATE conversations_turn SET content = ? WHERE conversation_id = ? "
                    "AND role = 'assistant'",
                    (history[0][1], conversation_id.replace("-", "")),
                )
        frames = asyncio.run(chat(server, client, conversation_id, prompt))
        assert emulator.requests[-1].body == {**seed_body, "stream": True}, name
        assert 'data-state="complete"' in frames[-1], name
        stored = stored_turns(server, conversation_id)[-1][2]
        assert stored == reply_for({"messages": [{"role": "user", "content": prompt}]}), name
