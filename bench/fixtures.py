"""Bench data in a bench database: run as ``python -m bench.fixtures`` with the server's env.

Reads a JSON spec on stdin, writes a JSON description on stdout:

- ``users`` users, each signed in through a session made directly (what a login
  would store: SESSION_KEY, BACKEND_SESSION_KEY, HASH_SESSION_KEY), with an
  unusable password (hashing 500 passwords would take minutes);
- for every set (one per server), empty conversations for the warm-up, each
  level and the profile rounds; conversation i of a group belongs to user i;
- long conversations of 10, 100 and 1,000 turns of realistic Markdown replies,
  owned by a reader user of their own;
- with ``api_tokens``, a personal API token for each user;
- on SQLite, a write counter: triggers on every table add one per inserted,
  updated or deleted row to ``bench_writes`` (PostgreSQL has pg_stat_user_tables).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import django

SONNET = "anthropic/claude-sonnet-4"


def _users(count: int, prefix: str = "bench-") -> list[dict[str, Any]]:
    from django.conf import settings
    from django.contrib.auth import (
        BACKEND_SESSION_KEY,
        HASH_SESSION_KEY,
        SESSION_KEY,
        get_user_model,
    )
    from django.contrib.auth.hashers import make_password
    from django.contrib.sessions.backends.db import SessionStore

    user_model = get_user_model()
    existing = list(user_model.objects.filter(username__startswith=prefix).order_by("username"))
    missing = [
        user_model(username=f"{prefix}{i:04d}", password=make_password(None))
        for i in range(len(existing), count)
    ]
    user_model.objects.bulk_create(missing)
    users = list(user_model.objects.filter(username__startswith=prefix).order_by("username"))
    out = []
    for user in users[:count]:
        session = SessionStore()
        session[SESSION_KEY] = str(user.pk)
        # The backend that signs in people with passwords (the last one configured).
        session[BACKEND_SESSION_KEY] = settings.AUTHENTICATION_BACKENDS[-1]
        session[HASH_SESSION_KEY] = user.get_session_auth_hash()
        session.create()
        out.append(
            {"id": user.pk, "cookie": f"{settings.SESSION_COOKIE_NAME}={session.session_key}"}
        )
    return out


def _api_tokens(users: list[dict[str, Any]]) -> None:
    """A personal API token for each user (the API rows: one client per person)."""
    from django.contrib.auth import get_user_model

    from api.tokens import token_create

    owners = get_user_model().objects.in_bulk([user["id"] for user in users])
    for user in users:
        _, user["token"] = token_create(owner=owners[user["id"]], name="bench")


def _conversations(users: list[dict[str, Any]], count: int) -> list[str]:
    from django.conf import settings

    from conversations.models import Conversation

    made = Conversation.objects.bulk_create(
        Conversation(
            owner_id=users[i % len(users)]["id"],
            model=SONNET,
            max_tokens=settings.CHAT_DEFAULT_MAX_TOKENS,
        )
        for i in range(count)
    )
    return [str(conversation.pk) for conversation in made]


def _long(owner_id: int, sizes: list[str]) -> dict[str, dict[str, Any]]:
    """A conversation per size: `N` turns on one path, or `N/B` with B branch points
    spread along it (another version of that turn, off the path, with a turn after it)."""
    from itertools import pairwise

    from django.conf import settings

    from conversations.models import Conversation, Turn
    from tests.emulator import SEED_REPLIES

    examples = list(SEED_REPLIES.items())
    out = {}
    for label in sizes:
        turns_text, _, points_text = label.partition("/")
        size, branch_points = int(turns_text), int(points_text or 0)
        conversation = Conversation.objects.create(
            owner_id=owner_id,
            model=SONNET,
            title=f"{label} turns",
            max_tokens=settings.CHAT_DEFAULT_MAX_TOKENS,
        )
        turns = []
        for position in range(1, size + 1):
            prompt, reply = examples[(position - 1) // 2 % len(examples)]
            if position % 2:
                turns.append(
                    Turn(
                        conversation=conversation,
                        position=position,
                        role=Turn.Role.USER,
                        content=prompt,
                        state=Turn.State.COMPLETE,
                    )
                )
            else:
                turns.append(
                    Turn(
                        conversation=conversation,
                        position=position,
                        role=Turn.Role.ASSISTANT,
                        content=reply,
                        state=Turn.State.COMPLETE,
                        model=SONNET,
                        max_tokens=settings.CHAT_DEFAULT_MAX_TOKENS,
                        input_tokens=position * 300,
                        output_tokens=len(reply) // 4,
                        stop_reason="end_turn",
                    )
                )
        made = Turn.objects.bulk_create(turns, batch_size=500)
        for parent, turn in pairwise(made):
            turn.parent = parent
        Turn.objects.bulk_update(made[1:], ["parent"], batch_size=500)
        for at in made[:: size // branch_points][:branch_points] if branch_points else []:
            other = Turn.objects.create(
                conversation=conversation, parent=at.parent, position=at.position,
                role=at.role, content=at.content, state=at.state, model=at.model,
                on_path=False, chosen=False,
            )  # fmt: skip
            Turn.objects.create(
                conversation=conversation, parent=other, position=at.position + 1,
                role=made[at.position].role if at.position < size else Turn.Role.USER,
                content="kept", on_path=False,
            )  # fmt: skip
        out[label] = {"conversation": str(conversation.pk), "turn": made[-1].pk}
    return out


def _sqlite_write_counter() -> list[str]:
    from django.db import connection

    if connection.vendor != "sqlite":
        return []
    tables = [t for t in connection.introspection.table_names() if t != "bench_writes"]
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE IF NOT EXISTS bench_writes (id INTEGER PRIMARY KEY, n INTEGER)"
        )
        cursor.execute("INSERT OR IGNORE INTO bench_writes (id, n) VALUES (1, 0)")
        for table in tables:
            for action in ("INSERT", "UPDATE", "DELETE"):
                name = f"bench_count_{action.lower()}_{table}"
                cursor.execute(
                    f'CREATE TRIGGER IF NOT EXISTS "{name}" AFTER {action} ON "{table}" '  # noqa: S608 - table names from introspection
                    "BEGIN UPDATE bench_writes SET n = n + 1 WHERE id = 1; END"
                )
    return tables


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
    django.setup()
    spec = json.loads(sys.stdin.read())
    users = _users(max(1, int(spec["users"])))
    if spec.get("api_tokens"):
        _api_tokens(users)
    sets: dict[str, dict[str, Any]] = {}
    for name, groups in spec["sets"].items():
        sets[name] = {group: _conversations(users, int(n)) for group, n in groups.items()}
    # The long conversations belong to a user of their own: their many recent turns
    # would count against the per-user send rate limit of the chatting users.
    reader = _users(1, prefix="reader-")[0]
    long = _long(reader["id"], [str(n) for n in spec.get("long", [])])
    counted = _sqlite_write_counter() if spec.get("count_writes") else []
    out = {"users": users, "reader": reader, "sets": sets, "long": long, "counted_tables": counted}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
