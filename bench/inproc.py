"""Long conversations timed in-process: run as ``python -m bench.inproc`` with the server's env.

For each size, times (a) building the upstream request,
``conversations.services.reply_request(turn=...)``, for the conversation's last
turn, and (b) opening the conversation page through Django's test client as its
signed-in owner (server time without the ASGI server and the socket). Reads a
JSON spec on stdin, writes JSON on stdout.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import django


def _timed(fn: Any, repeats: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
    django.setup()
    from django.conf import settings
    from django.db import connection, reset_queries
    from django.test import Client

    from conversations.gateway.cloudflare import request_body
    from conversations.models import Turn
    from conversations.services import reply_request

    spec = json.loads(sys.stdin.read())
    repeats = int(spec.get("repeats", 20))
    cookie_name, _, session_key = spec["cookie"].partition("=")
    client = Client(HTTP_HOST="127.0.0.1")
    client.cookies[cookie_name] = session_key
    out: dict[str, Any] = {}
    for size, item in spec["long"].items():
        turn = Turn.objects.get(pk=item["turn"])
        built = reply_request(turn=turn)
        request_times = _timed(lambda turn=turn: reply_request(turn=turn), repeats)
        url = f"/conversations/{item['conversation']}/"
        response = client.get(url)
        assert response.status_code == 200, response.status_code
        page_times = _timed(lambda url=url: client.get(url), repeats)
        # Queries of one page view (needs DEBUG-style logging of queries).
        connection.force_debug_cursor = True
        reset_queries()
        client.get(url)
        page_queries = len(connection.queries)
        reset_queries()
        reply_request(turn=turn)
        request_queries = len(connection.queries)
        connection.force_debug_cursor = False
        out[size] = {
            "reply_request_s": request_times,
            "reply_request_messages": len(built.messages),
            "reply_request_body_bytes": len(json.dumps(request_body(built)).encode()),
            "reply_request_queries": request_queries,
            "page_inproc_s": page_times,
            "page_bytes": len(response.content),
            "page_queries": page_queries,
            "visible_turns": settings.CHAT_VISIBLE_TURNS,
        }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
