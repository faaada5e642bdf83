"""Background processing entrypoints: the consumer runtime and the outbox relay.

``orderly up`` runs both beside the API; ``orderly worker`` and ``orderly relay`` run them
as their own processes. The relay only runs for transports that need one (not ``local://``).
"""

from __future__ import annotations

import asyncio
import signal

import structlog

from orderly.bootstrap import Container
from orderly.services.messaging import Subscription, Transport, TransportUnavailable
from orderly.services.saga import run_periodically
from orderly.services.waiting import sleep_or_stop

log = structlog.get_logger("orderly.worker")


async def connect(
    transport: Transport, stop: asyncio.Event, subscriptions: list[Subscription]
) -> bool:
    """Connect and declare ``subscriptions``, retrying with backoff while the broker is down;
    False if stopped first."""
    pause = 0.5
    while not stop.is_set():
        try:
            await transport.connect()
            await subscribe_all(transport, subscriptions)
            return True
        except TransportUnavailable as exc:
            log.warning(
                "broker unavailable, retrying", transport=transport.name, error=str(exc), wait=pause
            )
            await sleep_or_stop(stop, pause)
            pause = min(pause * 2, 30.0)
    return False


async def subscribe_all(transport: Transport, subscriptions: list[Subscription]) -> None:
    """Declare every subscription at once: on Kafka each one joins its consumer group, and a
    join waits for the group's members to rebalance (a second worker's eleven joins, one after
    the other, took ~35 s). Any other failure than ``TransportUnavailable`` is raised as is."""
    try:
        async with asyncio.TaskGroup() as group:
            for subscription in subscriptions:
                group.create_task(transport.subscribe(subscription))
    except BaseExceptionGroup as failed:
        first = failed.exceptions[0]
        if all(isinstance(e, TransportUnavailable) for e in failed.exceptions):
            raise first from failed
        other = next(e for e in failed.exceptions if not isinstance(e, TransportUnavailable))
        raise other from failed


async def run_background(
    container: Container, stop: asyncio.Event, *, consume: bool, relay: bool
) -> None:
    """Run the consumer runtime and/or the relay until ``stop`` is set."""
    transport = container.transport()
    try:
        # Queues and groups are declared by the consumers: subscribing from a relay-only
        # process would also start consuming there (RabbitMQ prefetch, Kafka group
        # membership). A message relayed before any worker subscribed is refused by RabbitMQ
        # and retried by the relay with backoff.
        subscriptions = [h.subscription for h in container.handlers()] if consume else []
        if not await connect(transport, stop, subscriptions):
            return
        async with asyncio.TaskGroup() as group:
            if consume:
                group.create_task(container.consumer_runtime(transport).run(stop))
                # Deadlines (step and review timeouts, reservation expiry) are swept by every
                # worker; row locks and guarded transitions make concurrent sweeps harmless.
                group.create_task(container.saga_timeouts().run(stop))
                sweeper = container.reservation_sweeper()
                interval = container.settings.sweep_interval_seconds
                group.create_task(
                    run_periodically(sweeper.sweep, stop, interval, "reservation expiry")
                )
            if relay and transport.needs_relay:
                group.create_task(container.relay(transport).run(stop))
                redrive = container.unstarted_order_redrive()
                interval = max(container.settings.sweep_interval_seconds, 5.0)
                group.create_task(
                    run_periodically(redrive.sweep, stop, interval, "order.placed redrive")
                )
            log.info(
                "background processing started",
                transport=transport.name,
                consume=consume,
                relay=relay and transport.needs_relay,
                worker_id=container.worker_id,
            )
    finally:
        await transport.close()


def stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
