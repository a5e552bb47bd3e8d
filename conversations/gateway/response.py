"""What one call's events add up to, as in simonw/llm's Response: the runner keeps
one and feeds it every event, instead of keeping text, usage and timing itself."""

import time
from dataclasses import dataclass, field

from .events import Event, Finished, ReplyError, ResponseStarted, TextDelta, Usage


@dataclass
class Response:
    """Text, usage, stop reason, log id and timing of one reply, as they arrive."""

    usage: Usage = field(default_factory=Usage)
    stop_reason: str = ""
    log_id: str = ""
    error: ReplyError | None = None
    finished: bool = False
    length: int = 0  # characters of text so far
    started: float = field(default_factory=time.monotonic)
    first_text_at: float | None = None
    _parts: list[str] = field(default_factory=list, repr=False)

    def add(self, event: Event) -> None:
        if isinstance(event, TextDelta):
            if self.first_text_at is None:
                self.first_text_at = time.monotonic()
            self._parts.append(event.text)
            self.length += len(event.text)
        elif isinstance(event, ResponseStarted):
            self.log_id = event.log_id or self.log_id
        elif isinstance(event, Usage):
            self.usage = event
        elif isinstance(event, Finished):
            self.stop_reason, self.finished = event.stop_reason, True
        elif isinstance(event, ReplyError):
            self.error, self.log_id = event, event.log_id or self.log_id

    @property
    def text(self) -> str:
        if len(self._parts) > 1:
            self._parts = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    @property
    def seconds_to_first_text(self) -> float | None:
        return None if self.first_text_at is None else self.first_text_at - self.started
