"""Two daphne processes on one PostgreSQL database and one Redis channel layer.

Skipped, with the reason, where PostgreSQL or Redis is not reachable.
"""

import asyncio
import os
from collections.abc import Iterator
from decimal import Decimal

import pytest

from tests.chat_client import ChatSocket, create_conversation
from tests.conftest import (
    REDIS,
    SONNET,
    LiveServer,
    free_port,
    prepare_shared_database,
    reachable,
)
from tests.emulator import Behaviour, GatewayEmulator

pytestmark = pytest.mark.live
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
PEOPLE = 50


@pytest.fixture(scope="module")
def emu(module_emulator: GatewayEmulator) -> GatewayEmulator:
    return module_emulator


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    if not reachable(PG["host"], PG["port"]):
        pytest.skip("PostgreSQL is not reachable at 127.0.0.1:5432")
    if not reachable(*REDIS):
        pytest.skip("Redis is not reachable at 127.0.0.1:6379")
    import psycopg

    name = f"chat_test_mp_{os.getpid()}"
    with psycopg.connect(**PG, dbname="postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    yield f"postgres://{PG['user']}@{PG['host']}:{PG['port']}/{name}"
    with psycopg.connect(**PG, dbname="postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def servers(database, emu, tmp_path_factory) -> Iterator[tuple[LiveServer, LiveServer]]:
    """Processes A and B: the same database, the same Redis, different ports."""
    import redis

    redis_db = 13
    redis.Redis(host=REDIS[0], port=REDIS[1], db=redis_db).flushdb()
    tmp = tmp_path_factory.mktemp("multiprocess")
    base_env = prepare_shared_database(
        emulator_env=emu.env(), database=database,
        redis_url=f"redis://{REDIS[0]}:{REDIS[1]}/{redis_db}", var_dir=tmp, people=PEOPLE,
        usernames=("alice", "spender"),
    )  # fmt: skip
    pair = []
    for name in ("a", "b"):
        port = free_port()
        env = {**base_env, "PORT": str(port)}
        pair.append(LiveServer(port, tmp, env, tmp / f"daphne-{name}.log").start())
    yield pair[0], pair[1]
    for server in pair:
        server.stop()
    redis.Redis(host=REDIS[0], port=REDIS[1], db=redis_db).flushdb()


def turns(database: str, conversation_id: str) -> list[tuple[str, str, str]]:
    import psycopg

    with psycopg.connect(database) as db:
        return db.execute(
            "SELECT role, state, content FROM conversations_turn WHERE conversation_id = %s "
            "ORDER BY position",
            (conversation_id,),
        ).fetchall()


def test_a_reply_started_on_one_process_streams_to_a_socket_on_the_other(
    servers, emu, database
) -> None:
    a, b = servers
    emu.clear()
    emu.default = Behaviour(tokens=60, token_delay=0.01)
    client = a.login("alice")
    conversation_id = create_conversation(client, model=SONNET)

    async def scenario() -> tuple[str, str]:
        async with ChatSocket(b, client, conversation_id) as watcher:
            async with ChatSocket(a, client, conversation_id) as sender:
                await sender.send(message="hello from A")
                await sender.until_final()
            final = await watcher.until_final()
            reply_id = max(watcher.texts)
            return final, watcher.texts[reply_id]

    final, streamed = asyncio.run(scenario())
    assert 'data-state="complete"' in final
    (_, _, question), (_, state, stored) = turns(database, conversation_id)
    assert question == "hello from A" and state == "complete"
    assert streamed == stored  # B saw every piece, in order, once


def test_stop_from_the_other_process(servers, emu, database) -> None:
    a, b = servers
    emu.clear()
    emu.default = Behaviour(tokens=500, token_delay=0.02)
    client = a.login("alice")
    conversation_id = create_conversation(client, model=SONNET)

    async def scenario() -> str:
        async with ChatSocket(a, client, conversation_id) as sender:
            await sender.send(message="a long one")
            await sender.until(r"beforeend:#turn-")
            await sender.until(r"tok5\b")  # a few pieces in
            async with ChatSocket(b, client, conversation_id) as other:
                await other.send(action="stop")
                await other.until_final(timeout=10)
            return await sender.until_final(timeout=10)

    assert 'data-state="cancelled"' in asyncio.run(scenario())
    (_, _, question), (_, state, stored) = turns(database, conversation_id)
    assert question == "a long one" and state == "cancelled" and stored.startswith("tok0 tok1")


def test_a_version_switched_on_one_process_is_followed_by_a_page_on_the_other(
    servers, emu, database
) -> None:
    a, b = servers
    emu.clear()
    emu.default = Behaviour(tokens=5, token_delay=0.01)
    client = a.login("alice")
    conversation_id = create_conversation(client, model=SONNET)

    async def scenario() -> tuple[int, str]:
        async with ChatSocket(a, client, conversation_id) as sender:
            await sender.send(message="one question")
            await sender.until_final()
            first = max(sender.texts)
            await sender.send(action="retry", turn=str(first))  # Regenerate: a second version
            await sender.until_final()
            async with ChatSocket(b, client, conversation_id) as watcher:
                await sender.send(action="switch", turn=str(first))
                return first, await watcher.until(r'id="path-changed"', timeout=10)

    first, frame = asyncio.run(scenario())
    assert f"/conversations/{conversation_id}/turns/" in frame
    import psycopg

    with psycopg.connect(database) as db:
        rows = db.execute(
            "SELECT id, role, on_path FROM conversations_turn WHERE conversation_id = %s "
            "ORDER BY id",
            (conversation_id,),
        ).fetchall()
    assert [(role, on_path) for _, role, on_path in rows] == [
        ("user", True), ("assistant", True), ("assistant", False),
    ]  # fmt: skip
    assert rows[1][0] == first  # the first version is shown again; both are kept
    page = client.get(f"/conversations/{conversation_id}/turns/").text
    assert "1 / 2" in page


def test_fifty_people_chatting_at_once_across_both_processes(servers, emu, database) -> None:
    a, b = servers
    emu.clear()
    emu.default = Behaviour(tokens=50, token_delay=0.01, first_token_delay=0.05)
    people = []
    for n in range(PEOPLE):
        server = a if n % 2 == 0 else b
        client = server.login(f"user{n}")
        people.append((server, client, create_conversation(client, model=SONNET)))

    async def chat(server, client, conversation_id: str) -> str:  # type: ignore[no-untyped-def]
        async with ChatSocket(server, client, conversation_id) as socket:
            await socket.send(message=f"hello, I am {conversation_id[:8]}")
            return await socket.until_final(timeout=60)

    async def everyone() -> list[str]:
        return await asyncio.gather(*(chat(*person) for person in people))

    finals = asyncio.run(everyone())
    assert all('data-state="complete"' in final for final in finals)
    for _, _, conversation_id in people:
        (_, _, question), (_, state, stored) = turns(database, conversation_id)
        assert question.startswith("hello, I am") and state == "complete"
        assert stored.count("tok") == 50
    assert len(emu.requests) == PEOPLE


def test_budget_holds_under_concurrent_sends_on_both_processes(servers, emu, database) -> None:
    import psycopg

    a, b = servers
    emu.clear()
    emu.default = Behaviour(tokens=20, token_delay=0.05)
    clients = [(server, server.login("spender")) for server in (a, b)]
    conversations = [
        (server, client, create_conversation(client, model=SONNET, max_tokens="1000"))
        for server, client in clients
        for _ in range(5)
    ]
    # Each reply may cost up to 1000 * $15/M = $0.015 (plus its short prompt), so a
    # $0.05 budget has room for exactly three replies held at once.
    with psycopg.connect(database) as db:
        user_id = db.execute("SELECT id FROM auth_user WHERE username = 'spender'").fetchone()[0]
        db.execute(
            "INSERT INTO conversations_userbudget (user_id, monthly_budget_usd) VALUES (%s, 0.05)",
            (user_id,),
        )

    async def send(server, client, conversation_id: str) -> str:  # type: ignore[no-untyped-def]
        async with ChatSocket(server, client, conversation_id) as socket:
            await socket.send(message="spend")
            return await socket.until(r'data-state="(complete|error)"|class="error"', timeout=30)

    async def at_once() -> list[str]:
        return await asyncio.gather(*(send(*c) for c in conversations))

    results = asyncio.run(at_once())
    accepted = [r for r in results if 'data-state="complete"' in r]
    refused = [r for r in results if "could cost up to" in r or "is spent" in r]
    assert len(accepted) == 3 and len(refused) == 7
    assert len(emu.requests) == 3
    with psycopg.connect(database) as db:
        spent = db.execute(
            "SELECT COALESCE(SUM(cost_usd), 0) FROM conversations_spend WHERE user_id = %s",
            (user_id,),
        ).fetchone()[0]
        stored_turns = db.execute(
            "SELECT COUNT(*) FROM conversations_turn t JOIN conversations_conversation c "
            "ON t.conversation_id = c.id WHERE c.owner_id = %s",
            (user_id,),
        ).fetchone()[0]
    assert Decimal(spent) <= Decimal("0.05")
    assert stored_turns == 6  # refused sends stored nothing


def test_healthz_of_both_processes_names_postgres_and_redis_ok(servers) -> None:
    import httpx

    for server in servers:
        assert httpx.get(f"{server.url}/healthz").json() == {
            "status": "ok",
            "database": "ok",
            "channel_layer": "ok",
        }
