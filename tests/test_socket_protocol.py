"""The socket protocol as a property: no frame a client can send breaks it.

Arbitrary frames (text and binary; any JSON shape, depth and size up to the limit;
any Unicode, lone surrogates and NUL included) never produce a server error or a
closed socket, and never change stored data except through a valid action.
"""

import json
import re
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings as django_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conversations.models import Turn
from conversations.text import text_is_storable
from tests.conftest import open_chat_socket, signed_in_client

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres]

PROBE = json.dumps({"action": "probe"})  # answered "Unknown action.": marks the end of an answer

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                 max_size=4),
    max_leaves=12,
)  # fmt: skip
actions = st.sampled_from(
    ["send", "retry", "edit", "switch", "stop", "sync", "ack", "", None, "SEND", 7, "probe"]
)
turn_ids = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    # Digits of other scripts pass str.isdigit() but are no turn id.
    st.text(alphabet="0123456789²³¹١٢٣٠۰߀０ -+.eE", max_size=25),  # noqa: RUF001
    json_values,
)
near_valid = st.fixed_dictionaries(
    {},
    optional={
        "action": actions,
        "turn": turn_ids,
        "message": st.text(max_size=300) | json_values,
        "turns": st.lists(turn_ids, max_size=5) | json_values,
        "last": turn_ids,
        "received": st.integers() | json_values,
        "HEADERS": json_values,
    },
).map(json.dumps)
frames = st.one_of(
    near_valid,
    json_values.map(json.dumps),
    st.text(max_size=300),  # any Unicode, surrogates and NUL included
    st.binary(max_size=300),
    st.integers(min_value=1, max_value=120_000).map(lambda n: "[" * n + "]" * n),
    st.integers(min_value=1, max_value=120_000).map(lambda n: '{"a":' * n + "1" + "}" * n),
    st.sampled_from(["x" * 2_000_000, '{"message": "' + "é" * 600_000 + '"}']),
)


def may_act(frame: str | bytes) -> bool:
    """Whether a frame is a valid action that may store something."""
    if not isinstance(frame, str):
        return False
    try:
        data = json.loads(frame)
    except (ValueError, RecursionError):
        return False
    if not isinstance(data, dict):
        return False
    action = data.get("action") or "send"
    message = data.get("message")
    if action in ("retry", "switch"):
        return True
    if action not in ("send", "edit") or not isinstance(message, str):
        return False
    return (
        bool(message.strip())
        and text_is_storable(message)
        and (len(message) <= django_settings.CHAT_MAX_MESSAGE_CHARS)
    )


def stored(conversation: Any) -> list[tuple[Any, ...]]:
    return list(
        Turn.objects.filter(conversation_id=conversation.pk)
        .order_by("pk")
        .values_list("pk", "role", "content", "on_path", "chosen")
    )


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
)  # fmt: skip
@given(sent=st.lists(frames, min_size=1, max_size=4))
def test_no_frame_breaks_the_socket_or_changes_data_without_a_valid_action(
    sent, user, conversation, fake_provider
):
    fake_provider.script = fake_provider.reply("ok")

    async def exchange() -> None:
        client = await sync_to_async(signed_in_client)(user)
        communicator = await open_chat_socket(conversation, client)
        for frame in sent:
            before = await sync_to_async(stored)(conversation)
            key = "bytes" if isinstance(frame, bytes) else "text"
            await communicator.send_input({"type": "websocket.receive", key: frame})
            await communicator.send_to(text_data=PROBE)
            answer = ""
            while "Unknown action." not in answer:
                output = await communicator.receive_output(timeout=10)
                assert output["type"] == "websocket.send", f"socket closed on {frame[:80]!r}"
                answer += output["text"]
            assert "Something went wrong" not in answer, frame[:80]
            # Let a reply that began finish, so the next frame meets a settled state.
            while re.search(r'data-state="(pending|streaming)"', answer) and not re.search(
                r'data-state="(complete|error|cancelled)"', answer
            ):
                answer += (await communicator.receive_output(timeout=10))["text"]
            after = await sync_to_async(stored)(conversation)
            if after != before:
                assert may_act(frame), f"{frame[:80]!r} changed stored turns"
        await communicator.disconnect()

    async_to_sync(exchange)()
