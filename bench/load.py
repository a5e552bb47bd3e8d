"""The load generator: a separate, lean process (standard library only, no Django).

Two modes, with the same definitions of time to first token (TTFT) and total time:

- ``ws``: simulated browser users. Each opens the chat socket of its own
  conversation with its session cookie and the page's Origin, sends one message
  as htmx would, and reads frames. TTFT = send until the first frame with a
  streamed text piece (``hx-swap-oob="beforeend:#turn-``); total = until the
  frame with ``data-state="complete"``. A final ``error``/``cancelled``/
  ``interrupted`` state, a refused send, a closed socket or the timeout is an error.
- ``http``: the direct baseline. The same number of streams read straight from
  the gateway emulator. TTFT = request sent until the first text event
  (``content_block_delta``); total = until the end of the chunked stream. The
  same mode drives the server's own API (``/v1/chat/completions``, streamed): the
  job then names the body, a token per client and the marks of the OpenAI shape.
  With ``tls_ca`` (a CA file), the streams go over TLS, verified against that CA.
- ``ws-open``: the open loop. Each chat has an arrival time (``at``, seconds after
  "go"); at that time it opens its socket, sends when the socket is open and closes
  it when the reply ends, whatever the others do. TTFT and total are counted from
  the send, as above; ``arrival`` is the time from the planned arrival to the send
  (the socket's opening, and any lag of this process).

A chat may name its own ``port`` and ``origin`` (several server processes: the chats
are split between them).

Both are ``asyncio.Protocol`` parsers (no per-frame coroutine switches, timestamps
taken when bytes arrive), so the generator stays cheap next to the server.

Protocol with the parent (one JSON object per line)::

    stdin  <- the job
    stdout -> {"event": "ready", ...}     every connection is open (or failed)
    stdin  <- go                          the barrier: all requests are sent at once
    stdout -> {"event": "done", ...}      per-chat results and this process's CPU time
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import resource
import ssl
import sys
import time
from typing import Any

TOKEN_MARK = b'hx-swap-oob="beforeend:#turn-'
STATE_MARK = b'data-state="'
COMPLETE_MARK = b'data-state="complete"'
STREAMING_MARK = b'data-state="streaming"'
CATCHUP_MARK = b'class="turn-text streaming" hx-swap-oob="true">'
BAD_STATES = (b"error", b"cancelled", b"interrupted")
REFUSED_MARK = b'<p class="error">'
SSE_TEXT_MARK = b"event: content_block_delta"
SSE_STOP_MARK = b"event: message_stop"
CHUNKED_END = b"\r\n0\r\n\r\n"
_TAIL = 64


def _mask(payload: bytes) -> bytes:
    key = os.urandom(4)
    repeated = (key * (len(payload) // 4 + 1))[: len(payload)]
    masked = int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")
    return key + masked.to_bytes(len(payload), "big")


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked, unfragmented client frame."""
    length = len(payload)
    if length < 126:
        header = bytes([0x80 | opcode, 0x80 | length])
    elif length < 1 << 16:
        header = bytes([0x80 | opcode, 0x80 | 126]) + length.to_bytes(2, "big")
    else:
        header = bytes([0x80 | opcode, 0x80 | 127]) + length.to_bytes(8, "big")
    return header + _mask(payload)


class Chat(asyncio.Protocol):
    """One simulated user: a chat socket, one message, its reply."""

    def __init__(self, loop: asyncio.AbstractEventLoop, job: dict[str, Any], chat: dict[str, Any]):
        self.job = job
        self.chat = chat
        self.connected: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.fragments = bytearray()
        self.open = False
        self.sent_at: float | None = None
        self.first_at: float | None = None
        self.end_at: float | None = None
        self.error: str | None = None
        self.frames = 0
        self.text_frames = 0
        self.first_frame_at: float | None = None  # the first frame after the send
        self.streaming_at: float | None = None  # the reply's `streaming` state
        # A socket that missed a piece gets the whole text again (a catch-up frame that
        # replaces the text): the page shows text then too, but not as a streamed piece.
        self.catchup_frames = 0
        self.first_visible_at: float | None = None  # first text of either kind

    # --- transport callbacks ------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        host, port = self.job["host"], self.chat.get("port", self.job["port"])
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {self.chat['path']} HTTP/1.1\r\n"
            f"Host: {host}:{port}\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n"
            f"Origin: {self.chat.get('origin', self.job['origin'])}\r\n"
            f"Cookie: {self.chat['cookie']}\r\n"
            "\r\n"
        )
        transport.write(request.encode())

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        self.buf += data
        if not self.open:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status_line = bytes(self.buf[: self.buf.find(b"\r\n")]).decode("latin-1")
            del self.buf[: end + 4]
            if " 101 " not in f"{status_line} ":
                self._fail(f"handshake: {status_line.strip()[:60]}")
                self._abort()
                return
            self.open = True
            if not self.connected.done():
                self.connected.set_result(None)
        self._frames(now)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.connected.done():
            self.connected.set_exception(ConnectionError("closed during the handshake"))
        self._fail("connection lost")
        if not self.closed.done():
            self.closed.set_result(None)

    # --- frames ---------------------------------------------------------------

    def _frames(self, now: float) -> None:
        buf = self.buf
        size = len(buf)
        pos = 0
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            if b1 & 0x80:
                self._fail("masked server frame")
                self._abort()
                return
            if size - pos < head + length:
                break
            payload = bytes(buf[pos + head : pos + head + length])
            pos += head + length
            opcode = b0 & 0x0F
            if opcode in (0, 1, 2):
                if not b0 & 0x80:  # fragmented: keep until the final fragment
                    self.fragments += payload
                    continue
                if self.fragments:
                    payload = bytes(self.fragments) + payload
                    self.fragments.clear()
                self._message(payload, now)
            elif opcode == 8:
                self._fail("closed by the server")
                if self.transport is not None and not self.transport.is_closing():
                    self.transport.write(client_frame(8, payload[:2]))
                    self.transport.close()
            elif opcode == 9 and self.transport is not None:
                self.transport.write(client_frame(10, payload))
        if pos:
            del buf[:pos]

    def _message(self, payload: bytes, now: float) -> None:
        self.frames += 1
        if self.sent_at is None or self.done.done():
            return
        if self.first_frame_at is None:
            self.first_frame_at = now
        if self.streaming_at is None and STREAMING_MARK in payload:
            self.streaming_at = now
        if TOKEN_MARK in payload:
            self.text_frames += 1
            if self.first_at is None:
                self.first_at = now
            if self.first_visible_at is None:
                self.first_visible_at = now
        at = payload.find(CATCHUP_MARK)
        if at >= 0:
            self.catchup_frames += 1
            start = at + len(CATCHUP_MARK)
            if self.first_visible_at is None and not payload.startswith(b"</div>", start):
                self.first_visible_at = now
        if STATE_MARK in payload:
            if COMPLETE_MARK in payload:
                self.end_at = now
                self.done.set_result(None)
                return
            for state in BAD_STATES:
                if STATE_MARK + state + b'"' in payload:
                    self._fail(f"reply {state.decode()}")
                    return
        if REFUSED_MARK in payload:
            start = payload.find(REFUSED_MARK) + len(REFUSED_MARK)
            reason = payload[start : payload.find(b"<", start)].decode(errors="replace")
            self._fail(f"refused: {reason[:60]}")

    def _fail(self, reason: str) -> None:
        if not self.done.done():
            self.error = reason
            self.done.set_result(None)

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # --- actions -----------------------------------------------------------------

    def send(self, message: str) -> None:
        assert self.transport is not None
        frame = client_frame(1, json.dumps({"message": message, "HEADERS": {}}).encode())
        self.sent_at = time.perf_counter()
        self.transport.write(frame)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(8, (1000).to_bytes(2, "big")))

    def result(self) -> dict[str, Any]:
        ok = self.error is None and self.end_at is not None
        out = _result(ok, self.sent_at, self.first_at, self.end_at, self.error, self.text_frames)
        if self.sent_at is not None:
            for name, at in (
                ("first_frame", self.first_frame_at),
                ("streaming", self.streaming_at),
                ("first_visible", self.first_visible_at),
            ):
                out[name] = None if at is None else round(at - self.sent_at, 6)
        out["catchup_frames"] = self.catchup_frames
        return out


class Stream(asyncio.Protocol):
    """One direct stream from the emulator (the baseline)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        request: bytes,
        text_mark: bytes = SSE_TEXT_MARK,
        stop_mark: bytes = SSE_STOP_MARK,
    ):
        self.request = request
        self.text_mark = text_mark
        self.stop_mark = stop_mark
        self.connected: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.head = bytearray()
        self.in_body = False
        self.tail = b""
        self.stopped = False
        self.sent_at: float | None = None
        self.first_at: float | None = None
        self.end_at: float | None = None
        self.error: str | None = None
        self.text_frames = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.connected.set_result(None)

    def send(self) -> None:
        assert self.transport is not None
        self.sent_at = time.perf_counter()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if self.done.done():
            return
        if not self.in_body:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            status_line = bytes(self.head[: self.head.find(b"\r\n")]).decode("latin-1")
            if " 200 " not in f"{status_line} ":
                self._fail(f"status: {status_line.strip()[:60]}")
                return
            self.in_body = True
            data = bytes(self.head[end + 2 :])  # keep a CRLF before the first chunk size
            self.head.clear()
        window = self.tail + data
        count = window.count(self.text_mark)
        if count:
            self.text_frames += count
            if self.first_at is None:
                self.first_at = now
        if self.stop_mark in window:
            self.stopped = True
        if CHUNKED_END in window:
            self.end_at = now
            if not self.stopped:
                self._fail("stream ended without its end event")
            elif not self.done.done():
                self.done.set_result(None)
        self.tail = window[-_TAIL:]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.connected.done():
            self.connected.set_exception(ConnectionError("closed"))
        self._fail("connection lost")
        if not self.closed.done():
            self.closed.set_result(None)

    def _fail(self, reason: str) -> None:
        if not self.done.done():
            self.error = reason
            self.done.set_result(None)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def result(self) -> dict[str, Any]:
        ok = self.error is None and self.end_at is not None
        return _result(ok, self.sent_at, self.first_at, self.end_at, self.error, self.text_frames)


def _result(
    ok: bool,
    sent_at: float | None,
    first_at: float | None,
    end_at: float | None,
    error: str | None,
    text_frames: int,
) -> dict[str, Any]:
    def since(at: float | None) -> float | None:
        return None if at is None or sent_at is None else round(at - sent_at, 6)

    return {
        "ok": ok,
        "ttft": since(first_at),
        "total": since(end_at) if ok else None,
        "error": None if ok else (error or "no end"),
        "text_frames": text_frames,
    }


def _emit(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _http_request(job: dict[str, Any], token: str) -> bytes:
    body = json.dumps(
        job.get("body")
        or {
            "messages": [{"role": "user", "content": job["message"]}],
            "max_tokens": 1024,
            "stream": True,
        }
    ).encode()
    head = (
        f"POST {job['path']} HTTP/1.1\r\n"
        f"Host: {job['host']}:{job['port']}\r\n"
        f"Authorization: Bearer {token}\r\n"
        "Content-Type: application/json\r\n"
        "Accept: text/event-stream\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    )
    return head.encode() + body


def _tls_context(job: dict[str, Any]) -> ssl.SSLContext | None:
    """Verification against the run's own CA only (``tls_ca``), or plain TCP."""
    return ssl.create_default_context(cafile=job["tls_ca"]) if job.get("tls_ca") else None


async def run(job: dict[str, Any], commands: asyncio.StreamReader) -> dict[str, Any]:
    if job["mode"] == "ws-open":
        return await run_open(job, commands)
    loop = asyncio.get_running_loop()
    mode = job["mode"]
    gate = asyncio.Semaphore(int(job.get("connect_concurrency", 64)))
    connect_timeout = float(job.get("connect_timeout", 60))
    tls = _tls_context(job)
    clients: list[Chat | Stream]
    if mode == "ws":
        clients = [Chat(loop, job, chat) for chat in job["chats"]]
    else:
        tokens = job.get("tokens") or [job["token"]]
        marks = [m.encode() for m in job.get("marks", [])] or [SSE_TEXT_MARK, SSE_STOP_MARK]
        clients = [
            Stream(loop, _http_request(job, tokens[i % len(tokens)]), *marks)
            for i in range(int(job["count"]))
        ]
    connect_errors: dict[int, str] = {}

    async def connect(index: int, client: Chat | Stream) -> None:
        port = client.chat.get("port", job["port"]) if isinstance(client, Chat) else job["port"]
        async with gate:
            try:
                await asyncio.wait_for(
                    loop.create_connection(
                        lambda: client,
                        job["host"],
                        port,
                        ssl=tls,
                        server_hostname=job["host"] if tls is not None else None,
                    ),
                    connect_timeout,
                )
                await asyncio.wait_for(asyncio.shield(client.connected), connect_timeout)
            except (OSError, TimeoutError, ConnectionError) as exc:
                # A refused handshake says why (its status line) before the socket closes.
                connect_errors[index] = (
                    getattr(client, "error", None) or f"connect: {type(exc).__name__} {exc}"
                )[:80]
                if client.transport is not None:
                    client.transport.abort()

    started = time.perf_counter()
    await asyncio.gather(*(connect(i, c) for i, c in enumerate(clients)))
    connect_s = time.perf_counter() - started
    _emit(
        {"event": "ready", "connected": len(clients) - len(connect_errors), "connect_s": connect_s}
    )
    line = await commands.readline()
    if line.strip() != b"go":
        raise SystemExit("no go")

    cpu_before = _cpu_seconds()
    started = time.perf_counter()
    live = [c for i, c in enumerate(clients) if i not in connect_errors]
    for client in live:  # the barrier: every request goes out in this one loop turn
        if isinstance(client, Chat):
            client.send(job["message"])
        else:
            client.send()
    if live:
        await asyncio.wait([c.done for c in live], timeout=float(job["timeout"]))
    wall_s = time.perf_counter() - started
    cpu_s = _cpu_seconds() - cpu_before

    results = []
    for index, client in enumerate(clients):
        if index in connect_errors:
            results.append(_result(False, None, None, None, connect_errors[index], 0))
        elif not client.done.done():
            results.append(_result(False, None, None, None, "timeout", client.text_frames))
        else:
            results.append(client.result())
    await _close_all(clients)
    return {
        "event": "done",
        "results": results,
        "wall_s": wall_s,
        "connect_s": connect_s,
        "cpu_s": cpu_s,
    }


async def _close_all(clients: list[Chat] | list[Chat | Stream]) -> None:
    for client in clients:
        client.close()
    pending = [c.closed for c in clients if c.transport is not None and not c.closed.done()]
    if pending:
        await asyncio.wait(pending, timeout=3)
    for client in clients:
        if client.transport is not None and not client.transport.is_closing():
            client.transport.abort()


async def run_open(job: dict[str, Any], commands: asyncio.StreamReader) -> dict[str, Any]:
    """The open loop: every chat arrives at its own time, opens, sends, reads, closes."""
    loop = asyncio.get_running_loop()
    connect_timeout = float(job.get("connect_timeout", 60))
    chats = [Chat(loop, job, chat) for chat in job["chats"]]
    errors: dict[int, str] = {}
    arrivals: dict[int, float] = {}
    _emit({"event": "ready", "connected": 0, "connect_s": 0.0})
    line = await commands.readline()
    if line.strip() != b"go":
        raise SystemExit("no go")

    async def arrive(index: int, client: Chat, planned: float) -> None:
        try:
            await asyncio.wait_for(
                loop.create_connection(
                    lambda: client, job["host"], client.chat.get("port", job["port"])
                ),
                connect_timeout,
            )
            await asyncio.wait_for(asyncio.shield(client.connected), connect_timeout)
        except (OSError, TimeoutError, ConnectionError) as exc:
            errors[index] = (client.error or f"connect: {type(exc).__name__} {exc}")[:80]
            if client.transport is not None:
                client.transport.abort()
            return
        client.send(job["message"])
        assert client.sent_at is not None
        arrivals[index] = client.sent_at - planned
        await client.done
        client.close()  # a person who read the reply leaves; the server sees the close

    cpu_before = _cpu_seconds()
    started = time.perf_counter()
    tasks: list[asyncio.Task[None]] = []
    # Arrivals in time order: sleep until the next one is due, start it, go on.
    for index, client in sorted(enumerate(chats), key=lambda item: item[1].chat["at"]):
        planned = started + float(client.chat["at"])
        delay = planned - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(arrive(index, client, planned)))
    deadline = float(job["timeout"])
    if tasks:
        await asyncio.wait(tasks, timeout=deadline)
    wall_s = time.perf_counter() - started
    cpu_s = _cpu_seconds() - cpu_before
    results = []
    for index, client in enumerate(chats):
        if index in errors:
            out = _result(False, None, None, None, errors[index], 0)
        elif not client.done.done():
            out = _result(False, None, None, None, "timeout", client.text_frames)
        else:
            out = client.result()
        out["arrival"] = None if index not in arrivals else round(arrivals[index], 6)
        results.append(out)
    for task in tasks:
        task.cancel()
    await _close_all(chats)
    return {"event": "done", "results": results, "wall_s": wall_s, "connect_s": 0.0, "cpu_s": cpu_s}


async def main_async() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=64 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    job = json.loads(await reader.readline())
    _emit(await run(job, reader))


def main() -> None:
    # Up to 500 sockets plus the emulator's: make sure the descriptor limit allows it.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096 <= hard or (hard == resource.RLIM_INFINITY and soft < 4096):
        resource.setrlimit(resource.RLIMIT_NOFILE, (4096, hard))
    asyncio.run(main_async())


if __name__ == "__main__":
    main()
