"""Fixtures: users, conversations, a scripted provider, the gateway emulator, a live daphne.

And the helpers test modules share (signing in, the chat socket, waiting on what can be
seen): import them from here, not from one another.
"""

import asyncio
import inspect
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.test import Client

from conversations.gateway import provider_override
from conversations.gateway.fake import ScriptedProvider
from tests.emulator import Behaviour, GatewayEmulator

# Titles by the model are off in tests and in every server they start (many tests count
# the emulator's requests, or take its last one for the reply's): a test that is about
# titles turns them on (`titles_on`, or CHAT_TITLES="on" for a live server).
os.environ["CHAT_TITLES"] = "off"

ROOT = Path(__file__).resolve().parent.parent
SONNET = "anthropic/claude-sonnet-4"
HAIKU = "anthropic/claude-haiku-4.5"
PASSWORD = "a-Long-test-password-42"


# --- shared helpers: signing in, the chat socket, waiting on what can be seen ---

ORIGIN = (b"origin", b"http://127.0.0.1:8000")  # an Origin header the socket accepts
REDIS = ("127.0.0.1", 6379)  # the shared Redis the team-deployment tests use
T = TypeVar("T")


def reachable(host: str, port: int) -> bool:
    """Whether a server (Redis, PostgreSQL) accepts connections there: tests skip if not."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def signed_in_client(user: Any) -> Client:
    """A Django test client with a session of `user`'s."""
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def signed_in(client: Client, user: Any) -> Client:
    """The `client` fixture, signed in as `user`."""
    client.force_login(user)
    return client


async def _chat_socket(
    conversation: Any, who: Any, origin: tuple[bytes, bytes]
) -> tuple[Any, bool]:
    from channels.testing import WebsocketCommunicator

    from chatsite.asgi import application

    if not isinstance(who, Client):
        who = await sync_to_async(signed_in_client)(who)
    cookie = f"sessionid={who.cookies['sessionid'].value}".encode()
    communicator = WebsocketCommunicator(
        application, f"/ws/conversations/{conversation.pk}/", headers=[origin, (b"cookie", cookie)]
    )
    accepted, _ = await communicator.connect()
    return communicator, accepted


async def open_chat_socket(
    conversation: Any, who: Any, *, origin: tuple[bytes, bytes] = ORIGIN
) -> Any:
    """The chat page's socket (a `WebsocketCommunicator` on the real application), opened
    as `who`: a user (a new session of theirs) or a signed-in client (its session)."""
    communicator, accepted = await _chat_socket(conversation, who, origin)
    assert accepted, "the chat socket was refused"
    return communicator


async def chat_socket_accepted(
    conversation: Any, who: Any, *, origin: tuple[bytes, bytes] = ORIGIN
) -> bool:
    """Whether the chat page's socket opens for `who` (see `open_chat_socket`) from `origin`."""
    communicator, accepted = await _chat_socket(conversation, who, origin)
    if accepted:
        await communicator.disconnect()
    return accepted


async def frames_until(communicator: Any, pattern: str, timeout: float = 5) -> list[str]:
    """The frames the socket receives up to and including the first that matches `pattern`."""
    frames: list[str] = []
    while True:
        frame = await communicator.receive_from(timeout=timeout)
        frames.append(frame)
        if re.search(pattern, frame):
            return frames


async def get_turns(conversation: Any) -> list[Any]:
    """The conversation's turns as stored, in order."""
    return await sync_to_async(lambda: list(conversation.turns.order_by("position", "pk")))()


def wait_until(
    predicate: Callable[[], T], timeout: float = 5, *, interval: float = 0.02, what: str = ""
) -> T:
    """Poll `predicate` until it returns something true, and return that; fail the test
    after `timeout` seconds. For waiting on something observable instead of sleeping."""
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"still not {what or predicate} after {timeout} s")
        time.sleep(interval)
    return result


async def wait_until_async(
    predicate: Callable[[], T | Awaitable[T]],
    timeout: float = 5,
    *,
    interval: float = 0.02,
    what: str = "",
) -> T:
    """`wait_until` inside an event loop; `predicate` may be a coroutine function (a query
    through `sync_to_async`, say)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"still not {what or predicate} after {timeout} s")
        await asyncio.sleep(interval)


async def reply_reaches(conversation: Any, *states: str, timeout: float = 5) -> Any:
    """Wait until the conversation's latest reply is stored in one of `states`; return it."""
    from conversations.models import Turn

    def stored() -> Any:
        reply = (
            Turn.objects.filter(conversation_id=conversation.pk, role="assistant")
            .order_by("position")
            .last()
        )
        return reply if reply is not None and reply.state in states else None

    return await wait_until_async(
        sync_to_async(stored), timeout, what=f"its reply stored {' or '.join(states)}"
    )


@pytest.fixture(autouse=True)
def _plain_static_storage(settings):
    # Tests render pages without running collectstatic first.
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


@pytest.fixture(autouse=True)
def _titles_off(settings):
    settings.CHAT_TITLES = False


@pytest.fixture
def titles_on(settings):
    """Conversations get their titles from the model, as in production."""
    settings.CHAT_TITLES = True
    return settings


@pytest.fixture
def user(django_user_model):
    return django_user_model.objects.create_user(username="alice", password=PASSWORD)


@pytest.fixture
def other_user(django_user_model):
    return django_user_model.objects.create_user(username="mallory", password=PASSWORD)


@pytest.fixture
def fake_provider() -> Iterator[ScriptedProvider]:
    """Route both Cloudflare models to a scripted provider (no network)."""
    provider = ScriptedProvider()
    provider_override(SONNET, provider)
    provider_override(HAIKU, provider)
    yield provider
    provider_override(SONNET, None)
    provider_override(HAIKU, None)


@pytest.fixture
def conversation(user, fake_provider):
    from conversations.services import conversation_create

    return conversation_create(owner=user, model=SONNET, title="Test chat")


@pytest.fixture
def emulator() -> Iterator[GatewayEmulator]:
    """The gateway emulator on a free loopback port, in its own thread."""
    server = GatewayEmulator().start_in_thread()
    yield server
    server.stop_thread()


@pytest.fixture(scope="module")
def module_emulator() -> Iterator[GatewayEmulator]:
    """One emulator for a whole test module (its live servers point at it)."""
    server = GatewayEmulator().start_in_thread()
    yield server
    server.stop_thread()


@pytest.fixture
def cloudflare_settings(settings, emulator):
    """Point the in-process Cloudflare provider at the emulator."""
    settings.CLOUDFLARE_ACCOUNT_ID = emulator.account
    settings.CLOUDFLARE_API_TOKEN = "test-token"
    settings.CLOUDFLARE_AI_GATEWAY = "default"
    settings.CLOUDFLARE_AI_GATEWAY_BASE_URL = emulator.gateway_base_url
    settings.CLOUDFLARE_API_BASE_URL = emulator.api_base_url
    settings.CHAT_RETRY_BASE_DELAY = 0.01
    return settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveServer:
    """A real daphne process on its own database, with two test users."""

    port: int
    var_dir: Path
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    drop_database: Callable[[], None] = lambda: None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> "LiveServer":
        """Start daphne (again, on the same database) and wait until it is healthy."""
        self.process = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port),
             "chatsite.asgi:application"],
            cwd=ROOT, env=self.env, stdout=self.log_path.open("ab"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"daphne exited: {self.log()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"daphne did not start: {self.log()}")

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def manage(self, *args: str) -> str:
        """Run a management command against this server's database."""
        result = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True,
            text=True, check=True, timeout=120,
        )  # fmt: skip
        return result.stdout

    def login(self, username: str = "alice") -> httpx.Client:
        client = httpx.Client(base_url=self.url, follow_redirects=False, timeout=10)
        client.get("/accounts/login/")
        response = client.post(
            "/accounts/login/",
            data={
                "username": username,
                "password": PASSWORD,
                "csrfmiddlewaretoken": client.cookies["csrftoken"],
            },
        )
        assert response.status_code == 302, response.text[:500]
        return client

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


_live_databases = iter(range(1_000_000))


def live_database(var_dir: Path) -> tuple[str, Callable[[], None]]:
    """A live server's database and how to drop it: an SQLite file in its folder, or,
    on the PostgreSQL run of `make test` (DATABASE_URL names PostgreSQL), a fresh
    database there, so tests marked `postgres` drive real servers on both."""
    base = os.environ.get("DATABASE_URL", "")
    if not base.startswith("postgres"):
        return f"sqlite:///{var_dir / 'db.sqlite3'}", lambda: None
    import psycopg

    parts = urlsplit(base)
    name = f"chat_live_{os.getpid()}_{next(_live_databases)}"
    admin_url = parts._replace(path="/postgres").geturl()
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return parts._replace(path=f"/{name}").geturl(), drop


def start_live_server(tmp_path: Path, extra_env: dict[str, str]) -> LiveServer:
    port = free_port()
    var_dir = tmp_path / "var"
    var_dir.mkdir(parents=True)
    database_url, drop_database = live_database(var_dir)
    env = {
        **os.environ,
        "CHAT_VAR_DIR": str(var_dir),
        "DATABASE_URL": database_url,
        "DJANGO_SECRET_KEY": "live-test-secret-key-not-for-production-0123456789",
        "PORT": str(port),
        "PYTHONUNBUFFERED": "1",
        "CHAT_CHECKPOINT_INTERVAL": "0.2",
        **extra_env,
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    setup = (
        "from django.contrib.auth import get_user_model; U = get_user_model(); "
        f"U.objects.create_user(username='alice', password='{PASSWORD}'); "
        f"U.objects.create_user(username='mallory', password='{PASSWORD}')"
    )
    prepare_database(env, setup)
    server = LiveServer(port, var_dir, env, tmp_path / "daphne.log", drop_database=drop_database)
    return server.start()


def prepare_database(env: dict[str, str], setup: str) -> None:
    """Migrate, collect static files and run `setup` (Python) against env's database."""
    for args in (["migrate", "--noinput"], ["collectstatic", "--noinput"], ["shell", "-c", setup]):
        subprocess.run(
            [sys.executable, "manage.py", *args, "-v", "0"],
            cwd=ROOT, env=env, check=True, timeout=180, capture_output=True,
        )  # fmt: skip


def prepare_shared_database(
    *,
    emulator_env: dict[str, str],
    database: str,
    redis_url: str,
    var_dir: Path,
    people: int,
    usernames: tuple[str, ...] = ("alice",),
) -> dict[str, str]:
    """The environment of server processes sharing one PostgreSQL and one Redis (with
    `people` users `user0`… and `usernames`), their database migrated and filled."""
    env = {
        **os.environ,
        **emulator_env,
        "DATABASE_URL": database,
        "REDIS_URL": redis_url,
        "CHAT_VAR_DIR": str(var_dir),
        "DJANGO_SECRET_KEY": "shared-test-secret-key-the-same-for-every-process-0123456789",
        "CHAT_CHECKPOINT_INTERVAL": "0.2",
        "CHAT_HEARTBEAT_INTERVAL": "0.3",
        "CHAT_SEND_RATE_LIMIT": "1000",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    names = [f"user{n}" for n in range(people)] + list(usernames)
    setup = (
        "from django.contrib.auth import get_user_model; U = get_user_model(); "
        f"[U.objects.create_user(username=name, password='{PASSWORD}') for name in {names!r}]"
    )
    prepare_database(env, setup)
    return env


@pytest.fixture
def live_server_factory(tmp_path: Path) -> Iterator:
    servers: list[LiveServer] = []

    def factory(**extra_env: str) -> LiveServer:
        server = start_live_server(tmp_path / f"s{len(servers)}", extra_env)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop()
        server.drop_database()


# --- services of a test's own, to kill and start again -----------------------

POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")


@dataclass
class RedisServer:
    """A redis-server on a free port, keeping nothing on disk: killed, it comes back empty."""

    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def answers(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def start(self) -> "RedisServer":
        """Start it (again, on the same port) and wait until it answers PING."""
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=self.log_path.open("ab"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not start: {self.log_path.read_text()}")
            time.sleep(0.05)
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: connections drop at once, every subscription with them."""
        if self.running:
            assert self.process is not None
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory) -> Iterator[RedisServer]:
    """A Redis of this module's own, which its tests may kill and restart."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis") / "redis.log").start()
    yield server
    server.kill()


@dataclass
class PostgresServer:
    """A PostgreSQL cluster in a temporary directory on a free port, trust auth.

    Run as the `postgres` OS user when the tests run as root (PostgreSQL refuses root).
    """

    port: int
    base: Path

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    @property
    def log_path(self) -> Path:
        return self.base / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, program: str, *args: str) -> None:
        command = [str(POSTGRES_BIN / program), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def init(self) -> "PostgresServer":
        self._run("initdb", "-D", str(self.data_dir), "-A", "trust", "-U", "postgres",
                  "-E", "UTF8", "--no-sync")  # fmt: skip
        return self

    def start(self) -> "PostgresServer":
        """Start it (again, on the same port and data) and wait until it takes connections."""
        options = (
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=200"
        )
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_path), "-o", options,
                  "-w", "-t", "30", "start")  # fmt: skip
        return self

    def stop(self) -> None:
        """A fast shutdown: sessions are ended, new connections refused."""
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "30", "stop")

    @property
    def running(self) -> bool:
        return (self.data_dir / "postmaster.pid").exists()

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL of this module's own, which its tests may stop and start."""
    if not (POSTGRES_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL is not installed in {POSTGRES_BIN}")
    base = Path(tempfile.mkdtemp(prefix="chat-pg-"))
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    server = PostgresServer(free_port(), base).init().start()
    yield server
    if server.running:
        server.stop()
    shutil.rmtree(base, ignore_errors=True)


# --- the browser -------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian chromium is not installed (make test installs it when run as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield instance
        instance.close()


@pytest.fixture
def chat_server(live_server_factory, emulator):
    """The live server the `page` fixture is signed in to (alice), on the emulator."""
    emulator.default = Behaviour(first_token_delay=0.05, token_delay=0.01)
    return live_server_factory(**emulator.env())


@pytest.fixture
def page(browser, chat_server):
    server = chat_server
    context = browser.new_context(base_url=server.url, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    page.goto("/accounts/login/")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("a-Long-test-password-42")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(server.url + "/")
    yield page
    context.close()
    # The pages work under the Content-Security-Policy: nothing was blocked.
    assert not [e for e in console_errors if "Content Security Policy" in e], console_errors


def start_chat(page, *, system: str = "", temperature: str = "") -> None:
    """An empty conversation with Claude Sonnet 4 (as a script makes one: `New chat`
    stores a conversation only with its first message), and its chat page."""
    token = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    response = page.request.post(
        "/conversations/",
        form={"model": SONNET, "system_prompt": system, "temperature": temperature,
              "sampling": "temperature" if temperature else "default", "max_tokens": "1024"},
        headers={"X-CSRFToken": token},
        max_redirects=0,
    )  # fmt: skip
    assert response.status == 302, response.text()
    page.goto(response.headers["location"])
    page.wait_for_function("() => document.querySelector('[ws-connect]') && window.htmx")


def migrated_to(targets: list[tuple[str, str | None]] | None) -> Any:
    """Migrate the test database to `targets` (None: every app's latest); the apps, with
    their models as of then."""
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    targets = targets or executor.loader.graph.leaf_nodes()
    executor.migrate(targets)
    executor.loader.build_graph()
    at = [(app, name) for app, name in targets if name is not None]
    return executor.loader.project_state(at).apps


def main_of(response: Any) -> str:
    """The page's `<main>`: what it shows, without the sidebar every page has."""
    html = response.content.decode()
    start = html.index("<main")
    return html[start : html.index("</main>", start)]
