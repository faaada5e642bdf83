"""A worker declares its subscriptions all at once, and a broker outage during that is retried.

The transport here is a stand-in (the layer under test is the worker's start-up; every real
transport's ``subscribe`` runs in the contract suite): on Kafka each subscription joins a
consumer group and waits for the group's rebalance, so joining them one by one made a second
worker take ~35 s to start.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from orderly.entrypoints.worker import connect, subscribe_all
from orderly.services.messaging import Subscription, TransportUnavailable

SUBSCRIPTIONS = [Subscription.of(f"consumer-{n}", [f"test.t{n}"]) for n in range(5)]


class JoiningTransport:
    """``subscribe`` takes a while (a group join), and may fail for chosen consumers."""

    name = "joining"

    def __init__(self, failures: dict[str, list[Exception]] | None = None) -> None:
        self.failures = failures or {}
        self.in_flight = 0
        self.most_in_flight = 0
        self.subscribed: list[str] = []
        self.connects = 0

    async def connect(self) -> None:
        self.connects += 1

    async def subscribe(self, subscription: Subscription) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.05)
            pending = self.failures.get(subscription.consumer)
            if pending:
                raise pending.pop(0)
            self.subscribed.append(subscription.consumer)
        finally:
            self.in_flight -= 1


async def test_every_subscription_is_declared_at_once() -> None:
    transport = JoiningTransport()
    await subscribe_all(transport, SUBSCRIPTIONS)  # type: ignore[arg-type]
    assert transport.most_in_flight == len(SUBSCRIPTIONS)
    assert sorted(transport.subscribed) == sorted(s.consumer for s in SUBSCRIPTIONS)


async def test_an_unavailable_broker_is_reported_as_such() -> None:
    transport = JoiningTransport({"consumer-2": [TransportUnavailable("no broker")]})
    with pytest.raises(TransportUnavailable, match="no broker"):
        await subscribe_all(transport, SUBSCRIPTIONS)  # type: ignore[arg-type]


async def test_a_broken_subscription_is_raised_as_itself() -> None:
    failures: dict[str, list[Exception]] = {
        "consumer-1": [TransportUnavailable("no broker")],
        "consumer-3": [ValueError("bad consumer name")],
    }
    transport = JoiningTransport(failures)
    with pytest.raises(ValueError, match="bad consumer name"):
        await subscribe_all(transport, SUBSCRIPTIONS)  # type: ignore[arg-type]


async def test_connect_retries_until_every_subscription_is_declared() -> None:
    transport = JoiningTransport({"consumer-4": [TransportUnavailable("rebalancing")]})
    stop = asyncio.Event()
    connected: Any = await asyncio.wait_for(
        connect(transport, stop, SUBSCRIPTIONS),  # type: ignore[arg-type]
        timeout=5,
    )
    assert connected is True
    assert transport.connects == 2
    assert "consumer-4" in transport.subscribed
