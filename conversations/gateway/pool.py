"""Keep-alive connections to the gateway at a constant cost per request.

httpx's own pool (httpcore 1.0.9) walks every pooled connection, and for each
idle one probes its socket, on every request and every response close; the
surplus check inside that walk makes it quadratic. With a few hundred replies
streaming at once that bookkeeping cost more CPU than reading the replies.

Here each request borrows a whole one-connection httpx transport from a free
list (last in, first out, so the warmest connection goes first) and returns it
when its response is closed. Every pool operation then looks at one
connection. Everything else (HTTP/1.1, TLS, timeouts, exception mapping) is
httpx's own transport.
"""

import ssl
from collections.abc import AsyncIterator
from typing import Any

import httpx


class _ReturnOnClose(httpx.AsyncByteStream):
    def __init__(self, stream: httpx.AsyncByteStream, release: Any) -> None:
        self._stream = stream
        self._release = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            release, self._release = self._release, None
            if release is not None:
                await release()


class ConnectionListTransport(httpx.AsyncBaseTransport):
    """An httpx transport that reuses connections in O(1) per request."""

    def __init__(self, *, max_idle: int = 200, verify: ssl.SSLContext | bool = True) -> None:
        self.max_idle = max_idle
        # One TLS context for every connection: building one loads the CA bundle.
        self._verify: ssl.SSLContext | bool = (
            httpx.create_ssl_context() if verify is True else verify
        )
        self._idle: list[httpx.AsyncHTTPTransport] = []
        self._busy = 0
        self._closed = False

    @property
    def busy(self) -> int:
        """Requests whose responses are still open."""
        return self._busy

    @property
    def idle(self) -> int:
        return len(self._idle)

    def _borrow(self) -> httpx.AsyncHTTPTransport:
        self._busy += 1
        if self._idle:
            return self._idle.pop()
        return httpx.AsyncHTTPTransport(
            verify=self._verify,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )

    async def _give_back(self, transport: httpx.AsyncHTTPTransport) -> None:
        self._busy -= 1
        if self._closed or len(self._idle) >= self.max_idle:
            await transport.aclose()
        else:
            self._idle.append(transport)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise httpx.TransportError("The transport is closed.")
        transport = self._borrow()
        try:
            response = await transport.handle_async_request(request)
        except BaseException:
            await self._give_back(transport)
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)

        async def release() -> None:
            await self._give_back(transport)

        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_ReturnOnClose(response.stream, release),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for transport in idle:
            await transport.aclose()
