"""A scripted provider: deterministic replies for tests, no network."""

import asyncio
from collections.abc import AsyncGenerator, Sequence

from .events import ChatRequest, Event, Finished, ResponseStarted, TextDelta, Usage


class Pause:
    """A step in a script: wait this many seconds before the next event."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds


class ScriptedProvider:
    def __init__(self, script: Sequence[Event | Pause] | None = None) -> None:
        self.script = list(script) if script is not None else None
        self.requests: list[ChatRequest] = []

    @staticmethod
    def reply(text: str, *, pieces: int = 3, delay: float = 0.0) -> list[Event | Pause]:
        """A script that streams `text` in a few pieces and finishes normally."""
        size = max(1, -(-len(text) // pieces))
        steps: list[Event | Pause] = [ResponseStarted("log-fake")]
        for start in range(0, len(text), size):
            if delay:
                steps.append(Pause(delay))
            steps.append(TextDelta(text[start : start + size]))
        steps += [Usage(10, pieces), Finished("end_turn")]
        return steps

    async def stream(self, request: ChatRequest) -> AsyncGenerator[Event, None]:
        self.requests.append(request)
        last = request.messages[-1]["content"] if request.messages else ""
        script = self.script if self.script is not None else self.reply(f"Echo: {last}")
        for step in script:
            if isinstance(step, Pause):
                await asyncio.sleep(step.seconds)
            else:
                yield step
