"""``orderly relay`` without its stranded deliveries, for the orders benchmark on a broker.

``orderly relay`` declares the consumers' subscriptions before it publishes (RabbitMQ drops a
message no queue is bound for) by calling ``Transport.subscribe`` on the transport it then
relays with. On RabbitMQ that subscribe also starts consuming: the relay process takes up to
``prefetch`` (128) ``order.placed`` deliveries into a buffer nobody reads and never
acknowledges them, so that many orders stay PENDING for as long as the relay runs (Kafka's
subscribe joins the consumer group likewise). This does what ``orderly relay`` does, but
declares through a second connection that it closes before relaying; then nothing is held.

Run by ``bench.pipeline.run`` as ``python -m bench.pipeline.relay`` (ORDERLY_* settings).
"""

from __future__ import annotations

import asyncio

import structlog
import uvloop

# orderly ships no py.typed, so ``mypy bench`` alone sees it as untyped; ``mypy`` sees src/.
from orderly.bootstrap import (  # type: ignore[import-untyped, unused-ignore]
    Container,
    bootstrap,
    configure_logging,
)
from orderly.config import Settings  # type: ignore[import-untyped, unused-ignore]
from orderly.entrypoints.worker import (  # type: ignore[import-untyped, unused-ignore]
    connect,
    stop_on_signals,
)

log = structlog.get_logger("bench.pipeline.relay")


async def declare(container: Container, stop: asyncio.Event) -> bool:
    """Declare every handler's subscription on a transport that is closed right after."""
    declarer = container.transport()
    try:
        return bool(await connect(declarer, stop, [h.subscription for h in container.handlers()]))
    finally:
        await declarer.close()


async def relay(container: Container) -> None:
    stop = asyncio.Event()
    stop_on_signals(stop)
    if not await declare(container, stop):
        return
    transport = container.transport()
    try:
        if not await connect(transport, stop, []):
            return
        log.info("background processing started", transport=transport.name, relay=True)
        await container.relay(transport).run(stop)
    finally:
        await transport.close()


def main() -> None:
    settings = Settings()
    configure_logging(settings)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        container = bootstrap(settings)
        try:
            runner.run(relay(container))
        finally:
            runner.run(container.close())


if __name__ == "__main__":
    main()
