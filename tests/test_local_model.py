"""The bundled model answers offline, through the same provider interface."""

import asyncio
import time

import pytest

from conversations.gateway import ChatRequest, Finished, TextDelta, Usage
from conversations.gateway.local import LocalProvider, weights_path

pytestmark = pytest.mark.local_model


def test_weights_ship_inside_the_installed_package() -> None:
    path = weights_path()
    assert path.suffix == ".gguf"
    assert path.stat().st_size > 50_000_000


def test_bundled_model_answers_a_short_prompt() -> None:
    request = ChatRequest(
        model="local/smollm2-135m",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        system="You are a helpful assistant. Answer in one short sentence.",
        temperature=0.0,
        max_tokens=24,
    )

    async def run() -> tuple[str, list[object], float]:
        started = time.monotonic()
        events = [event async for event in LocalProvider.shared().stream(request)]
        text = "".join(e.text for e in events if isinstance(e, TextDelta))
        return text, events, time.monotonic() - started

    text, events, _ = asyncio.run(run())
    assert text.strip()
    assert "paris" in text.lower()
    usage = next(e for e in events if isinstance(e, Usage))
    assert usage.output_tokens and 0 < usage.output_tokens <= 24
    assert isinstance(events[-1], Finished)


def test_closing_the_stream_early_stops_the_model() -> None:
    request = ChatRequest(
        model="local/smollm2-135m",
        messages=[{"role": "user", "content": "Count from one to one hundred."}],
        max_tokens=400,
    )

    async def run() -> int:
        pieces = 0
        stream = LocalProvider.shared().stream(request)
        async for event in stream:
            if isinstance(event, TextDelta):
                pieces += 1
                if pieces == 3:
                    break
        await stream.aclose()
        return pieces

    assert asyncio.run(run()) == 3
