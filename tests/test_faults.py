"""Every fault, through a real daphne, the gateway emulator and a real WebSocket client.

Each test asserts what the user sees, the final state, the stored text, and that
the user's own message survived.
"""

import asyncio
import sqlite3
import time
from collections.abc import Iterator

import pytest

from tests.chat_client import ChatSocket, create_conversation
from tests.conftest import SONNET, LiveServer, start_live_server, wait_until, wait_until_async
from tests.emulator import Behaviour, GatewayEmulator, reply_for

pytestmark = pytest.mark.live
PROMPT = "Explain the concept of recursion with a simple example."
REPLY = reply_for({"messages": [{"role": "user", "content": PROMPT}]})
FAST_FAILURES = {
    "CHAT_RETRY_BASE_DELAY": "0.05",
    "CHAT_RETRY_MAX_DELAY": "0.2",
    "CHAT_IDLE_TIMEOUT": "1",
    "CHAT_FIRST_TOKEN_TIMEOUT": "2",
    "CHAT_HEARTBEAT_INTERVAL": "0.3",
    "CHAT_STALE_AFTER": "2",
    "CHAT_SWEEP_INTERVAL": "0.5",
    "CHAT_MAX_FRAME_BYTES": "100000",
    "CHAT_SEND_RATE_LIMIT": "1000",
}


@pytest.fixture(scope="module")
def emu(module_emulator: GatewayEmulator) -> GatewayEmulator:
    return module_emulator


@pytest.fixture(scope="module")
def server(emu, tmp_path_factory) -> Iterator[LiveServer]:
    live = start_live_server(tmp_path_factory.mktemp("faults"), {**emu.env(), **FAST_FAILURES})
    yield live
    live.stop()


@pytest.fixture
def chat(server, emu):
    """A fresh conversation of alice's; returns (client, conversation id)."""
    emu.clear()
    emu.default = Behaviour()
    client = server.login()
    return client, create_conversation(client, model=SONNET)


def turns(server: LiveServer, conversation_id: str) -> list[tuple[str, str, str, str]]:
    with sqlite3.connect(server.var_dir / "db.sqlite3") as db:
        return db.execute(
            "SELECT role, state, content, error_message FROM conversations_turn "
            "WHERE conversation_id = ? ORDER BY position",
            (conversation_id.replace("-", ""),),
        ).fetchall()


def reply_text(server: LiveServer, conversation_id: str) -> str:
    """The reply's text as stored so far ("" before there is a reply)."""
    stored = turns(server, conversation_id)
    return stored[1][2] if len(stored) > 1 else ""


async def ask(server: LiveServer, client, conversation_id: str, text: str = PROMPT) -> str:
    async with ChatSocket(server, client, conversation_id) as socket:
        await socket.send(message=text)
        return await socket.until_final()


def run(coroutine):
    return asyncio.run(coroutine)


def test_429_then_success(server, emu, chat) -> None:
    client, conversation_id = chat
    emu.enqueue(Behaviour(status=429, retry_after=1))
    started = time.monotonic()
    final = run(ask(server, client, conversation_id))
    assert time.monotonic() - started >= 1  # retry-after honoured
    assert 'data-state="complete"' in final
    assert len(emu.requests) == 2
    assert turns(server, conversation_id) == [
        ("user", "complete", PROMPT, ""),
        ("assistant", "complete", REPLY, ""),
    ]


def test_529_and_500_then_success(server, emu, chat) -> None:
    client, conversation_id = chat
    emu.enqueue(Behaviour(status=529, error_format="anthropic"), Behaviour(status=500))
    final = run(ask(server, client, conversation_id))
    assert 'data-state="complete"' in final
    assert len(emu.requests) == 3
    assert turns(server, conversation_id)[1][:3] == ("assistant", "complete", REPLY)
    log = server.log()
    assert "upstream_failure" in log and "status=529" in log and "status=500" in log
    assert f"log_id={emu.requests[0].log_id}" in log
    assert "test-token" not in log  # no secret in a log line


def test_persistent_500_ends_in_error_then_retry_succeeds(server, emu, chat) -> None:
    client, conversation_id = chat
    emu.default = Behaviour(status=500)
    final = run(ask(server, client, conversation_id))
    assert 'data-state="error"' in final
    assert "The model service is overloaded or failing. Please try again." in final
    assert ">Retry</span></button>" in final
    assert "3043" not in final and "Internal server error" not in final  # no raw upstream body
    assert turns(server, conversation_id)[0] == ("user", "complete", PROMPT, "")
    assert turns(server, conversation_id)[1][:3] == ("assistant", "error", "")

    emu.default = Behaviour()
    reply_id = int(final.split('id="turn-')[1].split('"')[0])

    async def retry() -> str:
        async with ChatSocket(server, client, conversation_id) as socket:
            await socket.send(action="retry", turn=str(reply_id))
            return await socket.until_final()

    assert 'data-state="complete"' in run(retry())
    assert turns(server, conversation_id)[1][:3] == ("assistant", "complete", REPLY)


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        (
            Behaviour(drop_after=5),
            "The connection to the model was lost before the reply finished.",
        ),
        (Behaviour(error_event_after=5), "The model service is overloaded or failing."),
        (Behaviour(stall_after=5), "The model stopped sending text (stalled)."),
        (Behaviour(unterminated=True), "The reply ended before it was complete."),
    ],
    ids=["drop", "error-event", "stall", "unterminated"],
)
def test_mid_stream_failure_keeps_text_and_offers_retry(
    server, emu, chat, behaviour, message
) -> None:
    client, conversation_id = chat
    emu.enqueue(behaviour)
    final = run(ask(server, client, conversation_id))
    assert 'data-state="error"' in final
    assert message in final and ">Retry</span></button>" in final
    user, reply = turns(server, conversation_id)
    assert user == ("user", "complete", PROMPT, "")
    assert reply[1] == "error"
    assert reply[2] == emu.requests[-1].sent_text and reply[2]  # every piece received is kept
    assert len(emu.requests) == 1  # never retried after the first token


def test_no_first_token_in_time(server, emu, chat) -> None:
    client, conversation_id = chat
    emu.enqueue(Behaviour(first_token_delay=10))
    started = time.monotonic()
    final = run(ask(server, client, conversation_id))
    assert time.monotonic() - started < 6
    assert "The model did not start answering in time." in final
    assert turns(server, conversation_id)[1][:3] == ("assistant", "error", "")


def test_reload_mid_stream_shows_partial_text_and_continues(server, emu, chat) -> None:
    client, conversation_id = chat
    emu.enqueue(Behaviour(tokens=80, token_delay=0.03))

    async def scenario() -> tuple[str, str, int]:
        async with ChatSocket(server, client, conversation_id) as first:
            await first.send(message="count")
            await first.until(r"beforeend:#turn-")
            await wait_until_async(
                lambda: "tok2 " in reply_text(server, conversation_id), what="a checkpoint"
            )
            page = client.get(f"/conversations/{conversation_id}/").text  # the reload
            async with ChatSocket(server, client, conversation_id) as reloaded:
                await reloaded.until_final()
                reply_id = max(reloaded.texts)
                return page, reloaded.texts[reply_id], reply_id

    page, shown, reply_id = run(scenario())
    assert 'data-role="assistant" data-state="streaming"' in page
    assert f'<div id="turn-{reply_id}-text" class="turn-text streaming">tok0 tok1' in page
    stored = turns(server, conversation_id)[1]
    assert stored[1] == "complete"
    assert shown == stored[2]  # caught up: nothing missing, nothing doubled


def test_reconnect_mid_stream_catches_up_without_gaps_or_doubles(server, emu, chat) -> None:
    client, conversation_id = chat
    emu.enqueue(Behaviour(tokens=80, token_delay=0.03))

    async def scenario() -> tuple[str, str]:
        async with ChatSocket(server, client, conversation_id) as before:
            await before.send(message="count")
            await before.until(r"tok5\b")
        reply_id = max(before.texts)
        seen_before = before.texts[reply_id]
        # Text goes on while the socket is down: ten more pieces leave the upstream.
        await wait_until_async(
            lambda: emu.requests[-1].sent_text.count("tok") >= seen_before.count("tok") + 10,
            what="more text sent while the page is away",
        )
        socket = ChatSocket(server, client, conversation_id)
        socket.texts = {reply_id: seen_before}  # the page keeps what it showed
        async with socket as after:
            await after.until_final()
            return seen_before, after.texts[reply_id]

    before_text, after_text = run(scenario())
    stored = turns(server, conversation_id)[1]
    assert stored[1] == "complete"
    assert after_text == stored[2]
    assert after_text.startswith(before_text) and len(after_text) > len(before_text)


def test_stop_from_a_second_socket(server, emu, chat) -> None:
    client, conversation_id = chat
    emu.enqueue(Behaviour(tokens=400, token_delay=0.03))

    async def scenario() -> tuple[str, str]:
        async with ChatSocket(server, client, conversation_id) as writer:
            await writer.send(message="long")
            await writer.until(r"beforeend:#turn-")
            async with ChatSocket(server, client, conversation_id) as other_tab:
                await other_tab.until(r"beforeend:#turn-")  # it shows the reply streaming
                await other_tab.send(action="stop")
                other_final = await other_tab.until_final(timeout=10)
            return await writer.until_final(timeout=10), other_final

    writer_final, other_final = run(scenario())
    assert 'data-state="cancelled"' in writer_final and 'data-state="cancelled"' in other_final
    user, reply = turns(server, conversation_id)
    assert user == ("user", "complete", "long", "")
    assert reply[1] == "cancelled" and reply[2].startswith("tok0 tok1")
    assert emu.wait_for(lambda: emu.requests[-1].outcome == "disconnected")  # upstream closed


def test_double_send_creates_one_turn(server, emu, chat) -> None:
    client, conversation_id = chat
    emu.enqueue(Behaviour(tokens=20, token_delay=0.02))

    async def scenario() -> list[str]:
        async with ChatSocket(server, client, conversation_id) as socket:
            await socket.send(message="only once")
            await socket.send(message="only once")
            await socket.until_final()
            return socket.frames

    frames = run(scenario())
    assert any("A reply is still being written" in frame for frame in frames)
    stored = turns(server, conversation_id)
    assert len(stored) == 2
    assert (stored[0][0], stored[0][2]) == ("user", "only once")


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        ("{not json", "could not be read"),
        (b"\x00\xffbinary", "Only text frames"),
        ('{"message": "' + "x" * 150_000 + '"}', "too large"),
        ('{"action": "explode"}', "Unknown action"),
        ('{"message": ""}', "Type a message first"),
        ('{"message": ["a", "list"]}', "Type a message first"),
        ("42", "could not be read"),
    ],
    ids=["bad-json", "binary", "oversized", "unknown-action", "empty", "wrong-type", "not-object"],
)
def test_bad_frames_get_an_error_and_the_socket_stays_usable(server, emu, chat, frame, message):
    client, conversation_id = chat

    async def scenario() -> tuple[str, str]:
        async with ChatSocket(server, client, conversation_id) as socket:
            await socket.send_raw(frame)
            error = await socket.recv(timeout=10)
            await socket.send(message="still there?")
            return error, await socket.until_final()

    error, final = run(scenario())
    assert message in error and 'class="error"' in error
    assert 'data-state="complete"' in final
    assert turns(server, conversation_id)[0][2] == "still there?"


def test_kill_9_mid_reply_then_restart_marks_it_interrupted(live_server_factory, emulator) -> None:
    emulator.default = Behaviour(tokens=500, token_delay=0.02)
    server = live_server_factory(**emulator.env(), **FAST_FAILURES)
    client = server.login()
    conversation_id = create_conversation(client, model=SONNET)

    async def start_reply() -> None:
        async with ChatSocket(server, client, conversation_id) as socket:
            await socket.send(message="a long answer, please")
            await socket.until(r"beforeend:#turn-")
            await wait_until_async(
                lambda: "tok10 " in reply_text(server, conversation_id), what="a few checkpoints"
            )

    run(start_reply())
    before_kill = turns(server, conversation_id)[1]
    assert before_kill[1] == "streaming" and before_kill[2].startswith("tok0")
    server.kill()
    server.start()  # the same database, a new process
    # The new process's sweep finds the reply its predecessor left streaming.
    wait_until(
        lambda: turns(server, conversation_id)[1][1] != "streaming", 10, what="swept", interval=0.1
    )
    user, reply = turns(server, conversation_id)
    assert user == ("user", "complete", "a long answer, please", "")
    assert reply[1] == "interrupted"
    assert reply[2].startswith(before_kill[2])  # the checkpointed text is kept
    assert reply[3] == "The server stopped while writing this reply."
    page = server.login().get(f"/conversations/{conversation_id}/").text
    assert 'data-state="interrupted"' in page and ">Retry</span></button>" in page


@pytest.mark.parametrize(
    ("tokens", "state"), [(1000, "interrupted"), (60, "complete")], ids=["long", "short"]
)
def test_sigterm_finishes_short_replies_and_interrupts_long_ones(
    live_server_factory, emulator, tokens, state
) -> None:
    emulator.default = Behaviour(tokens=tokens, token_delay=0.02)
    server = live_server_factory(**emulator.env(), **FAST_FAILURES, CHAT_SHUTDOWN_GRACE="2")
    client = server.login()
    conversation_id = create_conversation(client, model=SONNET)

    async def start_reply() -> None:
        async with ChatSocket(server, client, conversation_id) as socket:
            await socket.send(message="go")
            await socket.until(r"beforeend:#turn-")

    run(start_reply())
    started = time.monotonic()
    server.stop()  # SIGTERM
    assert time.monotonic() - started < 8
    user, reply = turns(server, conversation_id)
    assert user == ("user", "complete", "go", "")
    assert reply[1] == state
    assert reply[2].startswith("tok0 tok1")
    if state == "complete":
        assert reply[2].count("tok") == tokens
    else:
        assert reply[3] == "The server stopped while writing this reply."
