"""The customer-notification port: how an order's terminal outcome reaches the customer."""

from __future__ import annotations

from typing import Protocol

from orderly.domain.notifications import Notification


class NotifierUnavailable(Exception):
    """The notification channel cannot deliver right now (connection, timeout, 4xx); retry."""


class NotificationRejected(ValueError):
    """The channel refused this notification for good (e.g. the recipient does not exist).

    Retrying the same notification will not help.
    """


class Notifier(Protocol):
    """Sends a customer a notification. Raises NotifierUnavailable for transient failures (the
    caller retries) and NotificationRejected when this notification can never be delivered.

    Delivery is at least once: a retried send may reach the customer twice, so implementations
    give a notification a stable identity (e.g. an e-mail Message-ID) derived from its kind and
    order id.
    """

    name: str

    async def send(self, notification: Notification) -> None: ...

    async def close(self) -> None: ...
