"""The one place that wires settings to adapters."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from urllib.parse import urlsplit

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from orderly.adapters.alerts import LogAlerts, WebhookAlerts
from orderly.adapters.auth import JwtTokens
from orderly.adapters.db.engine import create_engine, dispose_engine
from orderly.adapters.db.outbox_queue import OutboxQueue, OutboxSignal
from orderly.adapters.db.postgres import PgUnitOfWork
from orderly.adapters.db.read_models import SqlProjectionStore, SqlTrail
from orderly.adapters.db.repositories import SqlUnitOfWork
from orderly.adapters.db.schema import check_schema
from orderly.adapters.db.seed import seed_demo_catalogue
from orderly.adapters.db.views import SqlViews
from orderly.adapters.system import SystemClock, UuidGenerator
from orderly.adapters.transports.local import LocalTransport, OutboxDeliveries
from orderly.config import Settings
from orderly.domain.fraud import FraudConfig, FraudEngine, default_rules
from orderly.domain.inventory import AllocationStrategy
from orderly.domain.order_saga import OrderSagaConfig, order_saga
from orderly.domain.saga import Retry
from orderly.services.consumer import ConsumerRuntime, Handler, RetryPolicy, RuntimeOptions
from orderly.services.dead_letters import DeadLetterDesk
from orderly.services.messaging import Transport
from orderly.services.notifications import Notifier
from orderly.services.order_aftercare import (
    ReservationSweeper,
    UnstartedOrderRedrive,
    alert_handler,
    notification_handler,
    refund_handler,
)
from orderly.services.order_saga import OrderSagaHooks, start_handler
from orderly.services.order_steps import (
    StepSettings,
    fraud_handler,
    fulfilment_handler,
    inventory_handler,
    payment_handler,
    warehouse_handler,
)
from orderly.services.payments import PaymentGateway
from orderly.services.ports import (
    Alerts,
    Clock,
    IdGenerator,
    MessageUnitOfWork,
    OrderViews,
    Tokens,
    UnitOfWork,
)
from orderly.services.projections import projections_handler
from orderly.services.relay import Relay, RelayOptions
from orderly.services.saga import RegisteredSaga, SagaRunner, SagaTimeouts

TRANSPORT_SCHEMES = ("local", "redis", "rediss", "amqp", "amqps", "nats", "kafka")


class UnknownTransport(ValueError):
    """ORDERLY_BROKER_URL names no transport orderly has."""


@dataclass
class Container:
    """Everything the entrypoints need, built from one Settings."""

    settings: Settings
    engine: AsyncEngine
    views: OrderViews
    tokens: Tokens
    clock: Clock
    ids: IdGenerator
    signal: OutboxSignal = field(default_factory=OutboxSignal)
    worker_id: str = field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    )
    _gateway: PaymentGateway | None = None
    _notifier: Notifier | None = None

    def uow(self) -> UnitOfWork:
        if self.engine.dialect.name == "postgresql":
            return PgUnitOfWork(self.engine)
        return SqlUnitOfWork(self.engine, self.signal.notify)

    def message_uow(self) -> MessageUnitOfWork:
        return SqlUnitOfWork(self.engine, self.signal.notify)

    def outbox_queue(self) -> OutboxQueue:
        return OutboxQueue(
            self.engine, clock=self.clock, worker_id=self.worker_id, signal=self.signal
        )

    def transport(self) -> Transport:
        """The transport ORDERLY_BROKER_URL names (connects to nothing yet)."""
        return build_transport(self.settings, self.outbox_queue())

    def alerts(self) -> Alerts:
        url = self.settings.alert_webhook_url
        return WebhookAlerts(url) if url else LogAlerts()

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            attempts=self.settings.retry_attempts,
            base_delay=self.settings.retry_base_delay_seconds,
            timeout=self.settings.handler_timeout_seconds,
        )

    def gateway(self) -> PaymentGateway:
        """The payment gateway (one per container: it holds connections)."""
        if self._gateway is None:
            self._gateway = build_gateway(self.settings)
        return self._gateway

    def notifier(self) -> Notifier:
        if self._notifier is None:
            self._notifier = build_notifier(self.settings)
        return self._notifier

    def saga_runner(self) -> SagaRunner:
        s = self.settings
        definition = order_saga(
            OrderSagaConfig(
                step_timeout=timedelta(seconds=s.step_timeout_seconds),
                fulfilment_timeout=timedelta(seconds=s.fulfilment_timeout_seconds),
                review_timeout=timedelta(seconds=s.review_timeout_seconds),
                retry=Retry(s.retry_attempts, s.retry_base_delay_seconds),
                step_resends=s.step_resends,
            )
        )
        hooks = OrderSagaHooks(self.clock, self.ids)
        return SagaRunner([RegisteredSaga(definition, hooks)], clock=self.clock, ids=self.ids)

    def step_settings(self) -> StepSettings:
        s = self.settings
        return StepSettings(
            reservation_ttl=timedelta(seconds=s.reservation_ttl_seconds),
            allocation=AllocationStrategy(s.allocation_strategy),
            review_timeout=timedelta(seconds=s.review_timeout_seconds),
            velocity_window=timedelta(seconds=s.fraud_velocity_window_seconds),
            warehouse_delay=timedelta(seconds=s.warehouse_delay_seconds),
            warehouse_failure_rate=s.warehouse_failure_rate,
            warehouse_seed=s.payment_seed,
            payment_lanes=s.payment_concurrency,
        )

    def fraud_engine(self) -> FraudEngine:
        s = self.settings
        config = FraudConfig(
            velocity_max_orders=s.fraud_velocity_max_orders,
            velocity_window_seconds=s.fraud_velocity_window_seconds,
            review_above_minor=s.fraud_review_above_minor,
            reject_above_minor=s.fraud_reject_above_minor,
            blocked_countries=frozenset(c.upper() for c in s.fraud_blocked_countries),
            require_shipping_address=s.fraud_require_shipping_address,
        )
        return FraudEngine(default_rules(config))

    def handlers(self) -> list[Handler]:
        """Every consumer of the order pipeline."""
        policy = self.retry_policy
        runner = self.saga_runner()
        steps = self.step_settings()
        clock, ids = self.clock, self.ids
        return [
            start_handler(runner, policy, clock=clock, ids=ids),
            runner.reply_handler(policy),
            inventory_handler(steps, clock=clock, ids=ids, policy=policy),
            fraud_handler(self.fraud_engine(), steps, clock=clock, ids=ids, policy=policy),
            payment_handler(self.gateway(), steps, clock=clock, ids=ids, policy=policy),
            fulfilment_handler(steps, clock=clock, ids=ids, policy=policy),
            warehouse_handler(steps, clock=clock, ids=ids, policy=policy),
            notification_handler(self.notifier(), policy),
            alert_handler(self.alerts(), policy),
            refund_handler(self.gateway(), policy, clock=self.clock, ids=self.ids),
            projections_handler(policy),
        ]

    def projection_store(self) -> SqlProjectionStore:
        return SqlProjectionStore(self.engine)

    def trail(self) -> SqlTrail:
        return SqlTrail(self.engine)

    def saga_timeouts(self) -> SagaTimeouts:
        return SagaTimeouts(
            self.saga_runner(),
            self.message_uow,
            clock=self.clock,
            interval=self.settings.sweep_interval_seconds,
        )

    def reservation_sweeper(self) -> ReservationSweeper:
        return ReservationSweeper(self.message_uow, clock=self.clock, ids=self.ids)

    def unstarted_order_redrive(self) -> UnstartedOrderRedrive:
        return UnstartedOrderRedrive(
            self.message_uow,
            clock=self.clock,
            after=timedelta(seconds=self.settings.redrive_after_seconds),
        )

    def consumer_runtime(
        self, transport: Transport, handlers: list[Handler] | None = None
    ) -> ConsumerRuntime:
        options = RuntimeOptions(
            lanes=self.settings.worker_lanes,
            batch=self.settings.worker_batch,
            hand_off_limit=self.settings.worker_hand_off_limit,
        )
        # What the worker delivers to itself is settled on its outbox rows, whatever the
        # transport (the local transport settles its own deliveries the same way); its dead
        # letters are copied to the transport's dead-letter queue like the others.
        own = OutboxDeliveries(
            self.outbox_queue(),
            lease=self.settings.redelivery_after_seconds,
            transport=transport,
        )
        return ConsumerRuntime(
            transport,
            self.message_uow,
            self.handlers() if handlers is None else handlers,
            clock=self.clock,
            alerts=self.alerts(),
            options=options,
            own=own,
        )

    def relay(self, transport: Transport) -> Relay:
        options = RelayOptions(
            batch=self.settings.relay_batch,
            lease=self.settings.redelivery_after_seconds,
            max_attempts=self.settings.relay_max_attempts,
        )
        return Relay(
            self.outbox_queue(),
            transport,
            self.message_uow,
            clock=self.clock,
            alerts=self.alerts(),
            options=options,
        )

    def dead_letter_desk(self) -> DeadLetterDesk:
        return DeadLetterDesk(self.message_uow, self.clock)

    @property
    def idempotency_ttl(self) -> timedelta:
        return timedelta(seconds=self.settings.idempotency_ttl_seconds)

    async def check_schema(self) -> None:
        await check_schema(self.engine)

    async def migrate(self) -> None:
        # Alembic loads only here: every other process start checks the schema without it.
        from orderly.adapters.db.migrate import upgrade

        await upgrade(self.engine)

    async def seed(self) -> int:
        return await seed_demo_catalogue(self.engine)

    async def close(self) -> None:
        if self._gateway is not None:
            await self._gateway.close()
        if self._notifier is not None:
            await self._notifier.close()
        await dispose_engine(self.engine)


def build_transport(settings: Settings, queue: OutboxQueue) -> Transport:
    """Pick the transport by the broker URL's scheme; broker libraries load only when chosen."""
    url = settings.broker_url
    scheme = urlsplit(url).scheme
    namespace = settings.broker_namespace
    redelivery = settings.redelivery_after_seconds
    if scheme == "local":
        return LocalTransport(queue, lease=redelivery)
    if scheme in ("redis", "rediss"):
        from orderly.adapters.transports.redis_streams import RedisStreamsTransport

        return RedisStreamsTransport(url, namespace=namespace, redelivery_after=redelivery)
    if scheme in ("amqp", "amqps"):
        from orderly.adapters.transports.rabbitmq import RabbitMqTransport

        return RabbitMqTransport(url, namespace=namespace, redelivery_after=redelivery)
    if scheme == "nats":
        from orderly.adapters.transports.nats_jetstream import NatsJetStreamTransport

        return NatsJetStreamTransport(url, namespace=namespace, redelivery_after=redelivery)
    if scheme == "kafka":
        from orderly.adapters.transports.kafka import KafkaTransport

        return KafkaTransport(url, namespace=namespace, redelivery_after=redelivery)
    raise UnknownTransport(
        f"ORDERLY_BROKER_URL: unknown scheme {scheme!r} in {url!r}; "
        f"expected one of {', '.join(s + '://' for s in TRANSPORT_SCHEMES)}"
    )


def build_gateway(settings: Settings) -> PaymentGateway:
    """The payment gateway ORDERLY_PAYMENT_GATEWAY names."""
    if settings.payment_gateway == "stripe":
        from orderly.adapters.payments.stripe_gateway import StripeGateway

        assert settings.stripe_api_key is not None
        return StripeGateway(settings.stripe_api_key, settings.stripe_api_base)
    from orderly.adapters.payments.simulated import SimulatedGateway

    return SimulatedGateway(
        latency_ms=settings.payment_latency_ms,
        decline_rate=settings.payment_decline_rate,
        seed=settings.payment_seed,
    )


def build_notifier(settings: Settings) -> Notifier:
    from orderly.adapters.notifiers import LogNotifier, SmtpNotifier

    if settings.notifier == "smtp":
        return SmtpNotifier(
            settings.smtp_host,
            settings.smtp_port,
            settings.smtp_sender,
            recipient_domain=settings.smtp_recipient_domain,
            username=settings.smtp_username,
            password=settings.smtp_password,
            starttls=settings.smtp_starttls,
        )
    return LogNotifier()


def configure_logging(settings: Settings) -> None:
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if settings.log_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(processors=[*processors, renderer])


def bootstrap(settings: Settings | None = None, *, clock: Clock | None = None) -> Container:
    """Build the container; connects to nothing until first used."""
    settings = settings or Settings()
    clock = clock or SystemClock()
    engine = create_engine(settings.database_url, pool_size=settings.db_pool_size)
    return Container(
        settings=settings,
        engine=engine,
        views=SqlViews(engine),
        tokens=JwtTokens(
            settings.jwt_secret,
            settings.jwt_issuer,
            timedelta(seconds=settings.jwt_ttl_seconds),
            clock,
        ),
        clock=clock,
        ids=UuidGenerator(),
    )
