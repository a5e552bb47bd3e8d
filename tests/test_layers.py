"""The Redis pub/sub channel layer the team deployment uses, against a real Redis."""

import asyncio

import pytest
import redis.exceptions

from chatsite.layers import RedisPubSubChannelLayer
from tests.test_multiprocess import REDIS, reachable

pytestmark = pytest.mark.skipif(not reachable(*REDIS), reason="Redis is not reachable")

URL = f"redis://{REDIS[0]}:{REDIS[1]}/14"


def test_concurrent_group_sends_all_arrive_in_the_order_they_were_made() -> None:
    async def run() -> list[int]:
        layer = RedisPubSubChannelLayer(hosts=[URL], prefix="test-layers")
        try:
            channel = await layer.new_channel()
            await layer.group_add("pieces", channel)
            await asyncio.sleep(0.2)  # the subscription is live
            await asyncio.gather(
                *(layer.group_send("pieces", {"type": "piece", "n": n}) for n in range(500))
            )
            async with asyncio.timeout(10):
                return [(await layer.receive(channel))["n"] for _ in range(500)]
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
