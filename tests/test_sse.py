"""The SSE parser gives the same events however the bytes are split."""

import pytest

from conversations.gateway.sse import SSEDecoder, SSEEvent

STREAM = (
    ": a comment first\r\n"
    "event: message_start\r\n"
    'data: {"type":"message_start"}\r\n'
    "\r\n"
    "event: content_block_delta\n"
    'data: {"text":"Grüße, 世界 🌍"}\n'
    "\n"
    ": keep-alive\r"
    "data: line one\r"
    "data: line two\r"
    "\r"
    "id: 7\n"
    "data:no-space\n"
    "\r\n"
    "data: [DONE]\n"
    "\n"
).encode()

EXPECTED = [
    SSEEvent("message_start", '{"type":"message_start"}'),
    SSEEvent("content_block_delta", '{"text":"Grüße, 世界 🌍"}'),
    SSEEvent("message", "line one\nline two"),
    SSEEvent("message", "no-space", id="7"),
    SSEEvent("message", "[DONE]", id="7"),
]


def parse(chunks: list[bytes]) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    return events + decoder.close()


def test_whole_stream_parses_to_expected_events() -> None:
    assert parse([STREAM]) == EXPECTED


@pytest.mark.parametrize("offset", range(1, len(STREAM)))
def test_split_at_every_byte_offset(offset: int) -> None:
    assert parse([STREAM[:offset], STREAM[offset:]]) == EXPECTED


def test_one_byte_at_a_time() -> None:
    assert parse([bytes([b]) for b in STREAM]) == EXPECTED


def test_split_at_every_pair_of_offsets_in_the_multibyte_event() -> None:
    start = STREAM.index("Grüße".encode())
    end = start + len("Grüße, 世界 🌍".encode()) + 4
    for first in range(start, end):
        for second in range(first + 1, end):
            chunks = [STREAM[:first], STREAM[first:second], STREAM[second:]]
            assert parse(chunks) == EXPECTED


def test_event_without_blank_line_at_end_is_dropped() -> None:
    assert parse([b"data: complete\n\ndata: partial"]) == [SSEEvent("message", "complete")]


def test_byte_order_mark_and_empty_data_are_ignored() -> None:
    assert parse([b"\xef\xbb\xbfdata: x\n\nevent: ping\n\n"]) == [SSEEvent("message", "x")]


def test_cr_at_chunk_end_followed_by_lf_is_one_line_break() -> None:
    assert parse([b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]) == [SSEEvent("message", "a\nb")]
