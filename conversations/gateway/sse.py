"""An incremental Server-Sent Events parser, by the WHATWG standard.

Feed it bytes as they arrive; it returns the events completed so far. A read may
end anywhere: inside a line, between `\\r` and `\\n`, or inside a multi-byte
UTF-8 character. Pure: no I/O, no framework.
"""

import codecs
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SSEEvent:
    event: str
    data: str
    id: str = ""


class SSEDecoder:
    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._skip_lf = False
        self._started = False
        self._event = ""
        self._data: list[str] = []
        self._last_id = ""

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        text = self._decoder.decode(chunk)
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        return self._consume(text)

    def close(self) -> list[SSEEvent]:
        """End of stream: flush the decoder; an event without its blank line is dropped."""
        events = self._consume(self._decoder.decode(b"", final=True))
        self._buffer = ""
        self._event, self._data = "", []
        return events

    def _consume(self, text: str) -> list[SSEEvent]:
        if self._skip_lf and text:
            if text[0] == "\n":
                text = text[1:]
            self._skip_lf = False
        buffer = self._buffer + text
        events: list[SSEEvent] = []
        start = 0
        length = len(buffer)
        while start < length:
            cr = buffer.find("\r", start)
            lf = buffer.find("\n", start)
            if cr == -1 and lf == -1:
                break
            if cr == -1 or (lf != -1 and lf < cr):
                end, next_start = lf, lf + 1
            elif cr + 1 < length:
                end = cr
                next_start = cr + 2 if buffer[cr + 1] == "\n" else cr + 1
            else:
                # A lone CR at the end of what we have: the line is over, and an
                # LF at the start of the next chunk belongs to it.
                end, next_start = cr, cr + 1
                self._skip_lf = True
            event = self._line(buffer[start:end])
            if event is not None:
                events.append(event)
            start = next_start
        self._buffer = buffer[start:]
        return events

    def _line(self, line: str) -> SSEEvent | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._last_id = value
        return None

    def _dispatch(self) -> SSEEvent | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return SSEEvent(event=event or "message", data="\n".join(data), id=self._last_id)
