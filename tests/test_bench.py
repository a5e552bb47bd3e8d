"""The benchmark's own parts: Poisson arrivals, the open loop's verdict, the HTTPS emulator.

No database and no server under test: the runs themselves are `manage.py bench`
(docs/performance.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import load
from bench.openloop import highest_sustained, next_rate, poisson_schedule, step_verdict
from bench.tls import TlsFiles, make_tls_files
from conversations.gateway.pool import ConnectionListTransport
from tests.emulator import Behaviour, GatewayEmulator

MODEL = "anthropic/claude-sonnet-4"
BODY = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 64, "stream": True}


# --- Poisson arrivals ---------------------------------------------------------------------


def test_poisson_schedule_has_the_asked_mean_rate() -> None:
    times = poisson_schedule(10.0, 1000.0, seed=7)
    # 10,000 expected arrivals: the count of a Poisson process spreads by its square root
    # (100), so 3 % is more than three standard deviations.
    assert len(times) == pytest.approx(10_000, rel=0.03)
    gaps = [b - a for a, b in zip([0.0, *times], times, strict=False)]
    assert sum(gaps) / len(gaps) == pytest.approx(0.1, rel=0.03)


def test_poisson_schedule_is_the_same_for_the_same_seed_only() -> None:
    assert poisson_schedule(4.0, 30.0, seed=1) == poisson_schedule(4.0, 30.0, seed=1)
    assert poisson_schedule(4.0, 30.0, seed=1) != poisson_schedule(4.0, 30.0, seed=2)


@settings(max_examples=50, deadline=None)
@given(
    rate=st.floats(min_value=0.1, max_value=50),
    duration=st.floats(min_value=0.1, max_value=60),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_poisson_arrivals_rise_and_stay_within_the_step(
    rate: float, duration: float, seed: int
) -> None:
    times = poisson_schedule(rate, duration, seed)
    assert all(a < b for a, b in pairwise(times))
    assert all(0 < at < duration for at in times)


@pytest.mark.parametrize(("rate", "duration"), [(0, 10), (-1, 10), (1, 0)])
def test_poisson_schedule_refuses_a_rate_or_duration_that_is_not_positive(
    rate: float, duration: float
) -> None:
    with pytest.raises(ValueError, match="positive"):
        poisson_schedule(rate, duration, seed=1)


# --- the verdict -------------------------------------------------------------------------------


def step(rate: float, p95: float | None, errors: int = 0, ok: int = 10) -> dict[str, Any]:
    return {"rate": rate, "ttft_ms": {"p50": p95, "p95": p95}, "errors": errors, "ok": ok}


def test_a_step_is_sustained_with_no_error_and_ttft_p95_within_a_second() -> None:
    assert step_verdict(step(4, 1000.0))
    assert not step_verdict(step(4, 1000.1))
    assert not step_verdict(step(4, 200.0, errors=1))
    assert not step_verdict(step(4, None, ok=0))


def test_highest_sustained_rate_is_the_top_of_the_unbroken_ramp() -> None:
    steps = [step(1, 80), step(2, 90), step(4, 300), step(8, 2500), step(6, 700)]
    assert highest_sustained(steps) == 6.0


def test_a_lucky_rate_above_a_failed_one_does_not_count() -> None:
    steps = [step(1, 80), step(2, 200, errors=1), step(4, 300)]
    assert highest_sustained(steps) == 1.0


def test_no_sustained_rate_when_the_lowest_fails() -> None:
    assert highest_sustained([step(1, 1500)]) is None
    assert highest_sustained([]) is None


def test_the_ramp_doubles_until_a_failure_then_refines_once() -> None:
    rates = (1.0, 2.0, 4.0, 8.0)
    assert next_rate([], rates) == 1.0
    assert next_rate([step(1, 80)], rates) == 2.0
    done = [step(1, 80), step(2, 90), step(4, 2000)]
    assert next_rate(done, rates) == 3.0
    assert next_rate([*done, {**step(3, 500), "refined": True}], rates) is None
    assert next_rate([step(1, 80), step(2, 90), step(4, 90), step(8, 90)], rates) is None
    assert next_rate([step(1, 5000)], rates) is None


# --- the emulator over HTTPS ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_emulator(tls_files: TlsFiles) -> Iterator[GatewayEmulator]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls_files.cert, tls_files.key)
    emulator = GatewayEmulator(tls=context)
    emulator.default = Behaviour(tokens=5)
    emulator.start_in_thread()
    yield emulator
    emulator.stop_thread()


def gateway_url(emulator: GatewayEmulator) -> str:
    return f"{emulator.gateway_base_url}/acct-test/default/workers-ai/{MODEL}"


async def stream_through_the_product_transport(url: str) -> bytes:
    """A streamed call through the gateway's own transport (default SSL context)."""
    async with httpx.AsyncClient(transport=ConnectionListTransport(max_idle=1)) as client:
        response = await client.post(url, json=BODY, headers={"Authorization": "Bearer test-token"})
        return response.content


async def test_the_emulator_serves_https_that_the_run_ca_verifies(
    tls_emulator: GatewayEmulator, tls_files: TlsFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert tls_emulator.gateway_base_url.startswith("https://127.0.0.1:")
    # What the bench gives the server under test: SSL_CERT_FILE names the run's CA.
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_files.ca))
    body = await stream_through_the_product_transport(gateway_url(tls_emulator))
    assert b"event: message_stop" in body


async def test_the_https_emulator_is_refused_without_the_run_ca(
    tls_emulator: GatewayEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    served = len(tls_emulator.requests)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        await stream_through_the_product_transport(gateway_url(tls_emulator))
    assert len(tls_emulator.requests) == served


async def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """The load generator's run of `job`, told to go at once."""
    commands = asyncio.StreamReader()
    commands.feed_data(b"go\n")
    return await load.run(job, commands)


def https_job(port: int, ca: Path, *, count: int, timeout: float) -> dict[str, Any]:
    """`count` direct streams from the HTTPS emulator, trusting only `ca`."""
    return {
        "mode": "http",
        "host": "127.0.0.1",
        "port": port,
        "tls_ca": str(ca),
        "path": f"/v1/acct-test/default/workers-ai/{MODEL}",
        "token": "test-token",
        "message": "Hello",
        "count": count,
        "timeout": timeout,
        "connect_timeout": timeout,
    }


def open_loop_job(port: int, times: list[float], *, timeout: float) -> dict[str, Any]:
    """One chat arriving at each of `times` (seconds after go) on a socket at `port`."""
    return {
        "mode": "ws-open",
        "host": "127.0.0.1",
        "port": port,
        "origin": f"http://127.0.0.1:{port}",
        "message": "Hello",
        "timeout": timeout,
        "chats": [{"path": "/ws/", "cookie": "s=1", "at": at} for at in times],
    }


async def test_the_load_generator_reads_the_https_baseline(
    tls_emulator: GatewayEmulator, tls_files: TlsFiles
) -> None:
    done = await run_job(https_job(tls_emulator.port, tls_files.ca, count=3, timeout=10))
    assert [r["ok"] for r in done["results"]] == [True, True, True]
    assert all(r["text_frames"] == 5 for r in done["results"])


async def test_the_load_generator_refuses_https_it_cannot_verify(
    tls_emulator: GatewayEmulator, tmp_path: Path
) -> None:
    other = make_tls_files(tmp_path)  # another CA: verification must fail
    done = await run_job(https_job(tls_emulator.port, other.ca, count=1, timeout=5))
    assert done["results"][0]["ok"] is False
    assert "connect: SSLCertVerificationError" in done["results"][0]["error"]


# --- the open loop's load generator ------------------------------------------------------


async def serve_replies(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, refuse: bool = False
) -> None:
    """A stand-in chat socket: accepts the upgrade (or refuses it), then answers the one
    message with a streamed piece and the complete state, as the server's frames do."""
    await reader.readuntil(b"\r\n\r\n")
    if refuse:
        writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        writer.close()
        return
    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
    head = await reader.readexactly(2)
    await reader.readexactly(4 + (head[1] & 0x7F))  # the mask and a short message
    for text in (
        b'<span hx-swap-oob="beforeend:#turn-1">Hi</span>',
        b'<div data-state="complete"></div>',
    ):
        writer.write(bytes([0x81, len(text)]) + text)
    await writer.drain()
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        await reader.read(64)  # the client's close frame: the server closes too
    writer.close()


async def test_the_open_loop_sends_each_chat_at_its_own_arrival_time() -> None:
    server = await asyncio.start_server(serve_replies, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    started = time.perf_counter()
    async with server:
        done = await run_job(open_loop_job(port, [0.0, 0.05, 0.1, 0.3], timeout=10))
    assert [r["ok"] for r in done["results"]] == [True] * 4
    assert all(r["arrival"] is not None and r["arrival"] >= 0 for r in done["results"])
    assert done["wall_s"] >= 0.3
    assert time.perf_counter() - started < 5


async def test_a_refused_socket_in_the_open_loop_says_why() -> None:
    server = await asyncio.start_server(
        lambda r, w: serve_replies(r, w, refuse=True), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]
    async with server:
        done = await run_job(open_loop_job(port, [0.0], timeout=5))
    assert done["results"][0]["ok"] is False
    assert done["results"][0]["error"] == "handshake: HTTP/1.1 403 Forbidden"
