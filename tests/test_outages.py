"""Outages of Redis and PostgreSQL, made to happen under two daphne processes.

Redis and PostgreSQL here are the module's own (tests/conftest.py), so a test may kill
or stop them mid-stream and start them again. What a person would notice: every reply
ends `complete` with the upstream's whole text, every open page shows that end without
a reload, health probes leak nothing, a send during an outage starts its reply or is
refused before anything is stored, and the log says once that Redis went and once that
it came back. Each test prints what the outage cost (run with -s to read it).
"""

import asyncio
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from chatsite.layers import RedisPubSubChannelLayer
from tests.chat_client import ChatSocket, create_conversation
from tests.conftest import (
    SONNET,
    LiveServer,
    PostgresServer,
    RedisServer,
    free_port,
    prepare_shared_database,
)
from tests.emulator import Behaviour, GatewayEmulator

pytestmark = pytest.mark.live
PEOPLE = 20
FINAL_STATES = ("complete", "error", "cancelled", "interrupted")
ARTICLE = re.compile(
    r'<article id="turn-(\d+)" class="[^"]*" data-role="(\w+)"(?: data-state="(\w+)")?'
)
UNAVAILABLE = "dependency_unavailable dependency=channel_layer"
RESTORED = "dependency_restored dependency=channel_layer"


def upstream_text(tokens: int) -> str:
    """What the emulator sends for Behaviour(tokens=n)."""
    return " ".join(f"tok{i}" for i in range(tokens))


@pytest.fixture(scope="module")
def emu(module_emulator: GatewayEmulator) -> GatewayEmulator:
    return module_emulator


@pytest.fixture(scope="module")
def database(own_postgres: PostgresServer) -> str:
    return own_postgres.create_database("chat_outages")


@pytest.fixture(scope="module")
def pair(database, own_redis, emu, tmp_path_factory) -> Iterator[tuple[LiveServer, LiveServer]]:
    """Processes A and B on the module's own PostgreSQL and Redis."""

    tmp = tmp_path_factory.mktemp("outages")
    base_env = prepare_shared_database(
        emulator_env=emu.env(), database=database, redis_url=own_redis.url, var_dir=tmp,
        people=PEOPLE,
    )  # fmt: skip
    servers = []
    try:
        for name in ("a", "b"):
            port = free_port()
            env = {**base_env, "PORT": str(port)}
            servers.append(LiveServer(port, tmp, env, tmp / f"daphne-{name}.log").start())
        yield servers[0], servers[1]
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def redis_comes_back(own_redis: RedisServer) -> Iterator[RedisServer]:
    """The module's Redis, running again after the test whatever happened in it."""
    yield own_redis
    if not own_redis.running:
        own_redis.start()


@pytest.fixture
def postgres_comes_back(own_postgres: PostgresServer) -> Iterator[PostgresServer]:
    yield own_postgres
    if not own_postgres.running:
        own_postgres.start()


def turns(database: str, conversation_id: str) -> list[tuple[str, str, str]]:
    import psycopg

    with psycopg.connect(database, connect_timeout=5) as db:
        return db.execute(
            "SELECT role, state, content FROM conversations_turn WHERE conversation_id = %s "
            "ORDER BY position",
            (conversation_id,),
        ).fetchall()


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def healthz(server: LiveServer) -> tuple[int, dict[str, str], float]:
    """Status, body and how long the probe took."""
    started = time.monotonic()
    response = httpx.get(f"{server.url}/healthz", timeout=30)
    return response.status_code, response.json(), time.monotonic() - started


def log_since(server: LiveServer, offset: int) -> str:
    return server.log()[offset:]


def app_lines(log: str) -> list[str]:
    """The application's log records (JSON lines), not daphne's access lines."""
    return [line for line in log.splitlines() if line.startswith("{")]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


class Page:
    """One open chat page, as a browser keeps it.

    It reads every frame; while its socket is down it reconnects with backoff, and
    on every open it names the turns it shows as still being written and its newest
    turn (`sync`), as static/js/chat.js does. `states` is what the page shows.
    """

    def __init__(self, server: LiveServer, client: httpx.Client, conversation_id: str) -> None:
        self.server, self.client, self.conversation_id = server, client, conversation_id
        self.states: dict[int, tuple[str, str]] = {}  # turn id: (role, state)
        self.errors: list[str] = []
        self.refused: list[int] = []  # handshake statuses
        self.closes: list[int | None] = []  # close codes of sockets that dropped
        self.reconnects = 0
        self.opened = asyncio.Event()
        self.streaming = asyncio.Event()  # its reply shows text
        self.answered = asyncio.Event()  # its send got a turn or an error
        self.final: str | None = None
        self.final_at: float | None = None

    def reply(self) -> tuple[int, str] | None:
        replies = [(i, s) for i, (role, s) in self.states.items() if role == "assistant"]
        return max(replies) if replies else None

    def _absorb(self, frame: str, sent: bool) -> None:
        for turn_id, role, state in ARTICLE.findall(frame):
            self.states[int(turn_id)] = (role, state or "complete")
        if 'class="error"' in frame:
            self.errors.append(frame)
        if sent and (self.reply() is not None or self.errors):
            self.answered.set()
        reply = self.reply()
        if reply is not None and f"beforeend:#turn-{reply[0]}-text" in frame:
            self.streaming.set()

    async def follow(
        self, deadline: float, message: str | None = None, send_when: asyncio.Event | None = None
    ) -> str | None:
        """Until the page shows its reply's final state (returned), or the deadline."""
        delay, sent = 0.25, False
        while time.monotonic() < deadline:
            try:
                async with ChatSocket(self.server, self.client, self.conversation_id) as socket:
                    delay = 0.25
                    self.opened.set()
                    shown = [
                        i for i, (_, s) in self.states.items() if s in ("pending", "streaming")
                    ]
                    await socket.send(
                        action="sync", turns=shown, last=max(self.states, default=None)
                    )
                    if message is not None and not sent:
                        if send_when is not None:
                            await send_when.wait()
                        await socket.send(message=message)
                        sent = True
                    while True:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            return None
                        frame = await socket.recv(timeout=remaining)
                        self._absorb(frame, sent)
                        reply = self.reply()
                        if reply is not None and reply[1] in FINAL_STATES:
                            self.final, self.final_at = reply[1], time.monotonic()
                            return self.final
            except websockets.InvalidStatus as exc:
                self.refused.append(exc.response.status_code)
            except websockets.ConnectionClosed as exc:
                self.closes.append(exc.rcvd.code if exc.rcvd else None)
            except (OSError, TimeoutError):
                pass
            self.reconnects += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        return None


def report(name: str, **numbers: Any) -> None:
    print(f"\n[outage] {name}: " + ", ".join(f"{k}={v}" for k, v in numbers.items()))


def test_redis_killed_mid_stream_every_reply_completes_and_every_page_shows_it(
    pair, redis_comes_back, emu, database
) -> None:
    redis_server = redis_comes_back
    tokens = 150
    emu.clear()
    emu.default = Behaviour(tokens=tokens, token_delay=0.03)
    chats = []
    for n in range(PEOPLE):
        home, other = pair if n % 2 == 0 else pair[::-1]
        client = home.login(f"user{n}")
        chats.append((home, other, client, create_conversation(client, model=SONNET)))
    offsets = [len(server.log()) for server in pair]

    async def scenario() -> tuple[list[Page], float, float]:
        deadline = time.monotonic() + 60
        # Each chat is open on both processes: the reply runs where it was sent, and
        # the page on the other process hears of it only through Redis.
        watchers = [Page(other, client, cid) for _, other, client, cid in chats]
        senders = [Page(home, client, cid) for home, _, client, cid in chats]
        tasks = [asyncio.create_task(page.follow(deadline)) for page in watchers]
        async with asyncio.timeout(15):
            await asyncio.gather(*(page.opened.wait() for page in watchers))
        tasks += [
            asyncio.create_task(page.follow(deadline, message=f"hello from chat {n}"))
            for n, page in enumerate(senders)
        ]
        async with asyncio.timeout(20):
            await asyncio.gather(*(page.streaming.wait() for page in senders))
        await asyncio.sleep(0.5)  # well into the replies
        redis_server.kill()
        killed = time.monotonic()
        await asyncio.sleep(3)
        await asyncio.to_thread(redis_server.start)
        back = time.monotonic()
        await asyncio.gather(*tasks)
        return watchers + senders, killed, back

    pages, killed, back = asyncio.run(scenario())
    expected = upstream_text(tokens)
    stored = [turns(database, cid) for *_, cid in chats]
    logs = [log_since(server, offset) for server, offset in zip(pair, offsets, strict=True)]
    shown = [page.final_at - back for page in pages if page.final_at is not None]
    report(
        "redis killed 3 s, 20 chats on 2 processes",
        replies_complete=sum(rows[1][1] == "complete" for rows in stored if len(rows) == 2),
        pages_complete=sum(page.final == "complete" for page in pages),
        pages=len(pages),
        reconnects=sum(page.reconnects for page in pages),
        refused_handshakes=sum(len(page.refused) for page in pages),
        errors_shown=sum(len(page.errors) for page in pages),
        last_page_truth_after_restart_s=round(max(shown, default=-1), 2),
        last_page_truth_after_kill_s=round(max(shown, default=-1) + back - killed, 2),
        app_log_lines=[len(app_lines(log)) for log in logs],
        traceback_lines=[sum("Traceback" in line for line in app_lines(log)) for log in logs],
    )
    assert [len(rows) for rows in stored] == [2] * PEOPLE
    for n, ((_, user_state, question), (_, state, text)) in enumerate(stored):
        assert (user_state, question) == ("complete", f"hello from chat {n}")
        assert (state, text) == ("complete", expected)
    assert all(request.sent_text == expected for request in emu.requests)
    assert [page.final for page in pages] == ["complete"] * len(pages)
    assert 500 not in [status for page in pages for status in page.refused]
    for log in logs:
        assert "Exception inside application" not in log
        assert "Unexpected exception in receive task" not in log


def test_postgres_stopped_while_replies_finish_every_finished_reply_is_stored_complete(
    pair, postgres_comes_back, emu, database
) -> None:
    postgres = postgres_comes_back
    tokens, token_delay = 100, 0.03
    emu.clear()
    emu.default = Behaviour(tokens=tokens, token_delay=token_delay)
    chats = []
    for n in range(PEOPLE):
        home = pair[n % 2]
        client = home.login(f"user{n}")
        chats.append((home, client, create_conversation(client, model=SONNET)))
    offsets = [len(server.log()) for server in pair]

    async def scenario() -> tuple[list[Page], tuple[int, dict[str, str], float], float]:
        deadline = time.monotonic() + 75
        pages = [Page(home, client, cid) for home, client, cid in chats]
        tasks = [
            asyncio.create_task(page.follow(deadline, message=f"tell me {n}"))
            for n, page in enumerate(pages)
        ]
        async with asyncio.timeout(20):
            await asyncio.gather(*(page.streaming.wait() for page in pages))
        # Stop the database just before the replies' last tokens, so they finish
        # while it is away.
        await asyncio.sleep(tokens * token_delay - 1.2)
        await asyncio.to_thread(postgres.stop)
        stopped = time.monotonic()
        probe = await asyncio.to_thread(healthz, pair[0])
        await asyncio.sleep(max(0.0, 5 - (time.monotonic() - stopped)))
        await asyncio.to_thread(postgres.start)
        back = time.monotonic()
        await asyncio.gather(*tasks)
        return pages, probe, back

    pages, (status, body, took), back = asyncio.run(scenario())
    expected = upstream_text(tokens)

    def all_final() -> bool:
        return all(
            len(rows) == 2 and rows[1][1] in FINAL_STATES
            for rows in (turns(database, cid) for *_, cid in chats)
        )

    stored_in_time = wait_until(all_final, timeout=30)
    stored = [turns(database, cid) for *_, cid in chats]
    logs = [log_since(server, offset) for server, offset in zip(pair, offsets, strict=True)]
    shown = [page.final_at - back for page in pages if page.final_at is not None]
    report(
        "postgres stopped 5 s while 20 replies finish",
        upstream_finished=sum(r.outcome == "complete" for r in emu.requests),
        replies_complete=sum(rows[1][1] == "complete" for rows in stored if len(rows) == 2),
        states=sorted({rows[1][1] for rows in stored if len(rows) == 2}),
        pages_complete=sum(page.final == "complete" for page in pages),
        last_page_truth_after_restart_s=round(max(shown, default=-1), 2),
        healthz_during=(status, body.get("database"), round(took, 2)),
        app_log_lines=[len(app_lines(log)) for log in logs],
        traceback_lines=[sum("Traceback" in line for line in app_lines(log)) for log in logs],
    )
    # While it is away /healthz names the database, and says so promptly.
    assert (status, body["database"]) == (503, "error") and took < 5
    assert len(emu.requests) == PEOPLE
    assert all(r.outcome == "complete" and r.sent_text == expected for r in emu.requests)
    assert stored_in_time
    for n, (question, reply) in enumerate(stored):
        assert question[1:] == ("complete", f"tell me {n}")
        assert reply[1:] == ("complete", expected)
    assert [page.final for page in pages] == ["complete"] * len(pages)


def test_a_thousand_health_probes_leave_redis_subscriptions_and_memory_flat(
    pair, own_redis
) -> None:
    server = pair[0]
    redis_client = own_redis.client()

    def subscriptions() -> tuple[int, int]:
        channels = redis_client.pubsub_channels()
        numsub = redis_client.pubsub_numsub(*channels) if channels else []
        return len(channels), sum(count for _, count in numsub)

    with httpx.Client(base_url=server.url, timeout=10) as http:
        for _ in range(50):  # warm: the first probes may set up what later ones reuse
            assert http.get("/healthz").status_code == 200
        before, rss_before = subscriptions(), rss_kib(server.process.pid)  # type: ignore[union-attr]
        statuses = [http.get("/healthz").status_code for _ in range(1000)]
        after, rss_after = subscriptions(), rss_kib(server.process.pid)  # type: ignore[union-attr]
    report(
        "1,000 /healthz probes",
        channels=f"{before[0]}->{after[0]}",
        subscriptions=f"{before[1]}->{after[1]}",
        rss_kib=f"{rss_before}->{rss_after}",
    )
    assert statuses == [200] * 1000
    assert after == before
    assert rss_after - rss_before < 3 * 1024


def test_during_a_redis_outage_a_send_starts_its_reply_or_is_refused_before_anything_is_stored(
    pair, redis_comes_back, emu, database
) -> None:
    redis_server = redis_comes_back
    a, b = pair
    tokens = 40
    emu.clear()
    emu.default = Behaviour(tokens=tokens, token_delay=0.02)
    client = a.login("alice")
    open_before = create_conversation(client, model=SONNET)
    opened_during = create_conversation(client, model=SONNET)
    offsets = [len(server.log()) for server in pair]

    async def scenario() -> tuple[list[Page], list[tuple[int, dict[str, str], float]]]:
        deadline = time.monotonic() + 45
        send_now = asyncio.Event()
        early = Page(a, client, open_before)
        late = Page(b, client, opened_during)
        tasks = [
            asyncio.create_task(
                early.follow(deadline, message="sent while Redis is down", send_when=send_now)
            )
        ]
        async with asyncio.timeout(10):
            await early.opened.wait()
        redis_server.kill()
        killed, probes = time.monotonic(), []
        for server in pair:  # /healthz names the channel layer while Redis is away
            probes.append(await asyncio.to_thread(healthz, server))
        send_now.set()
        tasks.append(asyncio.create_task(late.follow(deadline, message="from a page opened now")))

        def settled(page: Page) -> bool:
            return page.answered.is_set() or bool(page.refused or page.closes)

        async with asyncio.timeout(10):
            while not (settled(early) and settled(late)):
                await asyncio.sleep(0.05)
        if late.refused:  # a refused handshake: the probe says why, as it happens
            probes.append(await asyncio.to_thread(healthz, b))
        # Redis stays away 2 s: the replies started meanwhile end before it is back.
        await asyncio.sleep(max(0.0, 2 - (time.monotonic() - killed)))
        await asyncio.to_thread(redis_server.start)
        await asyncio.gather(*tasks)
        return [early, late], probes

    pages, probes = asyncio.run(scenario())
    logs = [log_since(server, offset) for server, offset in zip(pair, offsets, strict=True)]
    report(
        "sends while Redis is down",
        outcomes=[
            ("refused" if page.errors and page.reply() is None else "started", page.final)
            for page in pages
        ],
        handshakes_refused=[page.refused for page in pages],
        closes=[page.closes for page in pages],
        healthz=[(status, body["channel_layer"]) for status, body, _ in probes],
    )
    for status, body, took in probes:
        assert (status, body["channel_layer"], body["database"]) == (503, "error", "ok")
        assert took < 5
    for page in pages:
        assert 500 not in page.refused  # never a server error on the handshake
        assert 1011 not in page.closes  # never a crashed consumer
    for log in logs:
        assert "Exception inside application" not in log
    expected = upstream_text(tokens)
    for page, conversation_id in zip(pages, (open_before, opened_during), strict=True):
        stored = turns(database, conversation_id)
        if stored:  # started: its reply completes once Redis is back, and the page shows it
            assert [(role, state) for role, state, _ in stored] == [
                ("user", "complete"),
                ("assistant", "complete"),
            ]
            assert stored[1][2] == expected
            assert page.final == "complete"
        else:  # refused: with an error, before anything was stored
            assert page.errors


def test_the_first_publish_after_redis_returns_arrives(redis_comes_back) -> None:
    redis_server = redis_comes_back

    async def run() -> tuple[list[int], list[int]]:
        layer = RedisPubSubChannelLayer(hosts=[redis_server.url], prefix="outage")
        try:
            channel = await layer.new_channel()
            await layer.group_add("pieces", channel)
            await layer.group_send("pieces", {"type": "piece", "n": 0})
            async with asyncio.timeout(5):
                received = [(await layer.receive(channel))["n"]]
            await asyncio.to_thread(redis_server.kill)
            await asyncio.to_thread(redis_server.start)
            await layer.group_send("pieces", {"type": "piece", "n": 1})  # no stale connection
            async with asyncio.timeout(5):
                received.append((await layer.receive(channel))["n"])
            # The group's subscription came back with Redis: one subscriber, as before.
            counts = [n for _, n in redis_server.client().pubsub_numsub("outage__group__pieces")]
            return received, counts
        finally:
            await layer.flush()

    assert asyncio.run(run()) == ([0, 1], [1])


def test_a_channel_made_or_dropped_while_redis_is_down_leaks_nothing(
    redis_comes_back, caplog
) -> None:
    redis_server = redis_comes_back

    async def run() -> tuple[list[bytes], dict[str, Any]]:
        layer = RedisPubSubChannelLayer(hosts=[redis_server.url], prefix="outage")
        try:
            leaving = await layer.new_channel()
            waiting = asyncio.create_task(layer.receive(leaving))
            await asyncio.sleep(0.2)
            await asyncio.to_thread(redis_server.kill)
            waiting.cancel()  # a socket closes while Redis is away
            await asyncio.gather(waiting, return_exceptions=True)
            arriving = await layer.new_channel()  # a socket opens while Redis is away
            await asyncio.to_thread(redis_server.start)
            client = redis_server.client()
            async with asyncio.timeout(10):  # the layer subscribes it once Redis is back
                while client.pubsub_numsub(arriving) != [(arriving.encode(), 1)]:
                    await asyncio.sleep(0.05)
            await layer.send(arriving, {"type": "hello"})
            async with asyncio.timeout(5):
                message = await layer.receive(arriving)
            return redis_server.client().pubsub_channels("outagespecific.*"), message
        finally:
            await layer.flush()

    channels, message = asyncio.run(run())
    assert message == {"type": "hello"}
    assert len(channels) == 1  # only the one still wanted, not the one dropped
    assert "Unexpected exception" not in caplog.text


def test_a_redis_outage_is_logged_once_when_it_starts_and_once_when_it_ends(
    pair, redis_comes_back
) -> None:
    redis_server = redis_comes_back
    client = pair[0].login("alice")
    conversation_id = create_conversation(client, model=SONNET)
    offsets = [len(server.log()) for server in pair]

    async def outage() -> list[tuple[int, dict[str, str], float]]:
        # An open page on each process: each is subscribed, and hears Redis go.
        async with ChatSocket(pair[0], client, conversation_id):
            async with ChatSocket(pair[1], client, conversation_id):
                redis_server.kill()
                killed, probes = time.monotonic(), []
                while time.monotonic() - killed < 3:  # a load balancer probing meanwhile
                    for server in pair:
                        probes.append(await asyncio.to_thread(healthz, server))
                    await asyncio.sleep(0.5)
                await asyncio.to_thread(redis_server.start)
                return probes

    probes = asyncio.run(outage())
    assert wait_until(
        lambda: all(
            RESTORED in log_since(server, offset)
            for server, offset in zip(pair, offsets, strict=True)
        ),
        timeout=10,
    )
    logs = [
        app_lines(log_since(server, offset)) for server, offset in zip(pair, offsets, strict=True)
    ]
    report(
        "log lines for a 3 s Redis outage",
        probes=len(probes),
        app_lines=[len(lines) for lines in logs],
        tracebacks=[sum("Traceback" in line for line in lines) for lines in logs],
    )
    assert {(status, body["channel_layer"]) for status, body, _ in probes} == {(503, "error")}
    for lines in logs:
        assert sum(UNAVAILABLE in line for line in lines) == 1
        assert sum(RESTORED in line for line in lines) == 1
        assert not [line for line in lines if "Traceback" in line or "receive task" in line]
        assert len(lines) <= 4  # nothing per probe, per socket or per second
