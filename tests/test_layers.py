"""The Redis pub/sub channel layer the team deployment uses, against a real Redis."""

import asyncio

import pytest
import redis.exceptions

from chatsite.layers import RedisPubSubChannelLayer
from tests.conftest import REDIS, reachable

pytestmark = pytest.mark.skipif(not reachable(*REDIS), reason="Redis is not reachable")

URL = f"redis://{REDIS[0]}:{REDIS[1]}/14"


async def subscription_live(layer, group: str, channel: str, timeout: float = 5) -> None:
    """Probe the group until a probe arrives: Redis has then taken the subscription
    (asking for it returns before Redis has)."""
    async with asyncio.timeout(timeout):
        while True:
            await layer.group_send(group, {"type": "probe"})
            try:
                async with asyncio.timeout(0.05):
                    await layer.receive(channel)
                    return
            except TimeoutError:
                continue


def test_concurrent_group_sends_all_arrive_in_the_order_they_were_made() -> None:
    async def run() -> list[int]:
        layer = RedisPubSubChannelLayer(hosts=[URL], prefix="test-layers")
        try:
            channel = await layer.new_channel()
            await layer.group_add("pieces", channel)
            await subscription_live(layer, "pieces", channel)
            await asyncio.gather(
                *(layer.group_send("pieces", {"type": "piece", "n": n}) for n in range(500))
            )
            received: list[int] = []
            async with asyncio.timeout(10):
                while len(received) < 500:
                    message = await layer.receive(channel)
                    if message["type"] == "piece":  # not a late probe
                        received.append(message["n"])
            return received
        finally:
            await layer.flush()

    assert asyncio.run(run()) == list(range(500))


def test_a_send_to_an_unreachable_redis_fails_instead_of_waiting_forever() -> None:
    async def run() -> None:
        layer = RedisPubSubChannelLayer(hosts=["redis://127.0.0.1:1/0"])
        try:
            async with asyncio.timeout(10):
                await layer.group_send("pieces", {"type": "piece"})
        finally:
            await layer.flush()

    with pytest.raises(redis.exceptions.ConnectionError):
        asyncio.run(run())
