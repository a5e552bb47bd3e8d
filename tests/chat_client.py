"""A WebSocket client that sees the chat as a page would: frames in, streamed text out."""

import asyncio
import html
import json
import re
from typing import Any

import httpx
import websockets

STREAM_TEXT = re.compile(
    r'<div id="turn-(\d+)-text" class="turn-text streaming"'
    r'(?: hx-swap-oob="([^"]*)")?>(.*?)</div>',
    re.S,
)


def create_conversation(client: httpx.Client, **fields: str) -> str:
    """POST /conversations/ as the new-chat form does; returns the new id."""
    client.get("/")
    response = client.post(
        "/conversations/", data={"csrfmiddlewaretoken": client.cookies["csrftoken"], **fields}
    )
    assert response.status_code == 302, response.text[:800]
    return response.headers["location"].strip("/").split("/")[-1]


class ChatSocket:
    """One open chat page's socket. `texts` is the streaming text each reply shows."""

    def __init__(self, server: Any, client: httpx.Client, conversation_id: str) -> None:
        self.url = f"{server.ws_url}/ws/conversations/{conversation_id}/"
        self.origin = server.url
        self.cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
        self.frames: list[str] = []
        self.texts: dict[int, str] = {}
        self.socket: Any = None

    async def __aenter__(self) -> "ChatSocket":
        # Unbounded receive queue: like a browser, the client keeps reading even
        # while the test is not looking, so closing never waits on backpressure.
        self.socket = await websockets.connect(
            self.url,
            additional_headers={"Cookie": self.cookie},
            origin=self.origin,
            max_queue=None,
            close_timeout=2,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.socket.close()

    async def send(self, **frame: Any) -> None:
        await self.socket.send(json.dumps({**frame, "HEADERS": {"HX-Request": "true"}}))

    async def send_raw(self, data: str | bytes) -> None:
        await self.socket.send(data)

    async def recv(self, timeout: float = 30) -> str:
        frame = str(await asyncio.wait_for(self.socket.recv(), timeout=timeout))
        self.frames.append(frame)
        for turn_id, swap, text in STREAM_TEXT.findall(frame):
            text = html.unescape(text)
            if swap.startswith("beforeend:"):
                self.texts[int(turn_id)] = self.texts.get(int(turn_id), "") + text
            else:
                self.texts[int(turn_id)] = text
        return frame

    async def until(self, pattern: str, timeout: float = 30) -> str:
        """Frames until one matches; returns it."""
        while True:
            frame = await self.recv(timeout=timeout)
            if re.search(pattern, frame):
                return frame

    async def until_final(self, timeout: float = 30) -> str:
        return await self.until(r'data-state="(complete|error|cancelled|interrupted)"', timeout)
