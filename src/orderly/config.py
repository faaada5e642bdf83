"""Settings: one object, read from ORDERLY_* environment variables (and a .env file)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_JWT_SECRET = "orderly-dev-secret-do-not-use-in-production"  # noqa: S105


class InsecureSettings(ValueError):
    """A setting that is only acceptable in dev or test was used elsewhere."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ORDERLY_", env_file=".env", extra="ignore")

    env: Literal["dev", "test", "prod"] = "dev"
    database_url: str = "sqlite+aiosqlite:///./orderly.db"
    broker_url: str = "local://"
    db_pool_size: int = Field(default=20, ge=1, le=200)

    jwt_secret: str = DEV_JWT_SECRET
    jwt_issuer: str = "orderly"
    jwt_ttl_seconds: int = Field(default=12 * 3600, ge=60)

    idempotency_ttl_seconds: int = Field(default=24 * 3600, ge=60)
    idempotency_purge_interval_seconds: float = Field(default=300, gt=0)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)

    broker_namespace: str = Field(default="orderly", pattern=r"^[a-z][a-z0-9_-]{0,39}$")
    worker_lanes: int = Field(default=16, ge=1, le=256)
    worker_batch: int = Field(default=64, ge=1, le=1000)
    worker_hand_off_limit: int = Field(default=32, ge=0, le=1000)
    redelivery_after_seconds: float = Field(default=30.0, gt=0)
    retry_attempts: int = Field(default=3, ge=1, le=50)
    retry_base_delay_seconds: float = Field(default=2.0, ge=0)
    handler_timeout_seconds: float = Field(default=30.0, gt=0)
    relay_batch: int = Field(default=256, ge=1, le=5000)
    relay_max_attempts: int = Field(default=10, ge=1)
    redrive_after_seconds: float = Field(default=60.0, gt=0)
    """A broker transport's order still PENDING this long after its ``order.placed`` was
    published is published again (the broker lost it)."""
    alert_webhook_url: str | None = None

    # The order saga and its services.
    step_timeout_seconds: float = Field(default=120.0, gt=0)
    step_resends: int = Field(default=2, ge=0, le=10)
    """An unanswered reserve, authorize, fulfil or capture command is sent again this many
    times, evenly within its step's timeout (a broker that lost a confirmed message)."""
    fulfilment_timeout_seconds: float = Field(default=1800.0, gt=0)
    review_timeout_seconds: float = Field(default=600.0, gt=0)
    reservation_ttl_seconds: float = Field(default=900.0, gt=0)
    allocation_strategy: Literal["priority", "most-stock"] = "priority"
    sweep_interval_seconds: float = Field(default=1.0, gt=0)
    fraud_velocity_max_orders: int = Field(default=5, ge=1)
    fraud_velocity_window_seconds: int = Field(default=3600, ge=1)
    fraud_review_above_minor: int = Field(default=100_000, ge=0)
    fraud_reject_above_minor: int | None = Field(default=1_000_000, ge=0)
    fraud_blocked_countries: list[str] = Field(default_factory=list)
    fraud_require_shipping_address: bool = False
    payment_gateway: Literal["simulated", "stripe"] = "simulated"
    payment_latency_ms: tuple[int, int] = (0, 0)
    payment_decline_rate: float = Field(default=0.0, ge=0, le=1)
    payment_seed: int = 0
    payment_concurrency: int = Field(default=128, ge=1, le=1024)
    stripe_api_key: str | None = None
    stripe_api_base: str | None = None
    warehouse_delay_seconds: float = Field(default=0.0, ge=0)
    warehouse_failure_rate: float = Field(default=0.0, ge=0, le=1)
    notifier: Literal["log", "smtp"] = "log"
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_sender: str = "orderly@example.com"
    smtp_recipient_domain: str = "example.com"
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = False

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = "info"
    log_json: bool = False
    access_log: bool = True

    @field_validator("log_level", mode="before")
    @classmethod
    def _lowercase_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _refuse_dev_secret_in_prod(self) -> Settings:
        if self.env == "prod" and (self.jwt_secret == DEV_JWT_SECRET or len(self.jwt_secret) < 32):
            raise InsecureSettings(
                "ORDERLY_JWT_SECRET must be set to a secret of at least 32 characters "
                "when ORDERLY_ENV=prod"
            )
        return self

    @model_validator(mode="after")
    def _check_payment(self) -> Settings:
        low, high = self.payment_latency_ms
        if not 0 <= low <= high:
            raise ValueError("ORDERLY_PAYMENT_LATENCY_MS must be [min, max] with 0 <= min <= max")
        if self.payment_gateway == "stripe" and not self.stripe_api_key:
            raise ValueError("ORDERLY_PAYMENT_GATEWAY=stripe needs ORDERLY_STRIPE_API_KEY")
        return self

    @property
    def dev_login_enabled(self) -> bool:
        return self.env in ("dev", "test")
