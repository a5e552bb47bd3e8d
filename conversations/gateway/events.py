"""The typed events every provider yields, and the request they answer."""

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """Everything one upstream call needs, built from a conversation's settings.

    Never temperature with top_p (Anthropic models refuse both): temperature wins,
    here, so providers send what the request says.
    """

    model: str
    messages: list[dict[str, str]]
    max_tokens: int
    system: str = ""
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.temperature is not None and self.top_p is not None:
            object.__setattr__(self, "top_p", None)

    def sampling(self) -> dict[str, float | int]:
        """The sampling settings this request sets (the model's defaults for the rest)."""
        chosen = {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}
        return {name: value for name, value in chosen.items() if value is not None}


@dataclass(frozen=True, slots=True)
class ResponseStarted:
    """The upstream accepted the call; `log_id` links the reply to the gateway log."""

    log_id: str = ""


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int | None = None
    output_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Finished:
    stop_reason: str = "end_turn"


@dataclass(frozen=True, slots=True)
class ReplyError:
    """A failure, as a value: `message` is safe to show a user, `detail` is for operators."""

    message: str
    kind: str = "upstream"
    status: int | None = None
    code: str = ""
    detail: str = ""
    retryable: bool = False
    retry_after: float | None = None  # seconds the upstream asked to wait
    log_id: str = ""  # the gateway's log entry for the failed call


Event = ResponseStarted | TextDelta | Usage | Finished | ReplyError
