"""Customer notifiers: a log line (development, tests) and e-mail over SMTP (aiosmtplib)."""

from __future__ import annotations

import re
from email.message import EmailMessage
from email.utils import formatdate, parseaddr

import aiosmtplib
import structlog

from orderly.domain.notifications import Notification
from orderly.services.notifications import NotificationRejected, NotifierUnavailable

__all__ = ["LogNotifier", "NotificationRejected", "NotifierUnavailable", "SmtpNotifier"]

log = structlog.get_logger("orderly.notify")

_UNSAFE_IN_MESSAGE_ID = re.compile(r"[^A-Za-z0-9._-]+")


class LogNotifier:
    """Logs one info line per notification and keeps nothing."""

    name = "log"

    async def send(self, notification: Notification) -> None:
        log.info(
            "customer notified",
            kind=notification.kind,
            order_id=notification.order_id,
            customer_id=notification.customer_id,
            subject=notification.subject,
        )

    async def close(self) -> None:
        return None


class SmtpNotifier:
    """E-mails the customer, one SMTP connection per notification.

    Connection refused, timeouts, a dropped connection and any 4xx reply raise
    ``NotifierUnavailable``. A 5xx refusal of the recipient or of the message content raises
    ``NotificationRejected``. Other 5xx replies (authentication, sender, greeting) mean this
    notifier is misconfigured, not that the notification is bad: they raise
    ``NotifierUnavailable`` so the notification is retried and, failing that, dead-lettered
    for replay once the configuration is fixed.
    """

    name = "smtp"

    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        recipient_domain: str = "example.com",
        username: str | None = None,
        password: str | None = None,
        starttls: bool = False,
        use_tls: bool = False,
        timeout: float = 10.0,
    ) -> None:
        self._host = host
        self._port = port
        self._sender = sender
        self._envelope_sender = parseaddr(sender)[1] or sender
        self._recipient_domain = recipient_domain
        self._username = username
        self._password = password
        self._starttls = starttls
        self._use_tls = use_tls
        self._timeout = timeout

    def recipient_for(self, customer_id: str) -> str:
        return customer_id if "@" in customer_id else f"{customer_id}@{self._recipient_domain}"

    def message_id_for(self, notification: Notification) -> str:
        """Stable per (kind, order id), so a retried send carries the same Message-ID."""
        local = _UNSAFE_IN_MESSAGE_ID.sub("_", f"{notification.kind}.{notification.order_id}")
        domain = self._envelope_sender.rpartition("@")[2] or "orderly.invalid"
        return f"<{local}@{domain}>"

    def build_message(self, notification: Notification) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self._sender
        message["To"] = self.recipient_for(notification.customer_id)
        message["Subject"] = notification.subject
        message["Date"] = formatdate(usegmt=True)
        message["Message-ID"] = self.message_id_for(notification)
        message["X-Orderly-Order-Id"] = notification.order_id
        message["X-Orderly-Notification-Kind"] = notification.kind
        message.set_content(notification.body)
        return message

    async def send(self, notification: Notification) -> None:
        try:
            message = self.build_message(notification)
        except ValueError as exc:  # e.g. a line break in a header value
            raise NotificationRejected(f"cannot build the e-mail: {exc}") from exc
        recipient = self.recipient_for(notification.customer_id)
        try:
            await aiosmtplib.send(
                message,
                sender=self._envelope_sender,
                recipients=[recipient],
                hostname=self._host,
                port=self._port,
                username=self._username,
                password=self._password,
                start_tls=self._starttls,
                use_tls=self._use_tls,
                timeout=self._timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [refused.code for refused in exc.recipients]
            raise _classified(min(codes, default=500), f"recipient refused: {exc}") from exc
        except (aiosmtplib.SMTPRecipientRefused, aiosmtplib.SMTPDataError) as exc:
            raise _classified(exc.code, f"{type(exc).__name__}: {exc.message}") from exc
        except aiosmtplib.SMTPResponseException as exc:
            raise NotifierUnavailable(
                f"SMTP {self._host}:{self._port} answered {exc.code} {exc.message}"
            ) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise NotifierUnavailable(f"SMTP {self._host}:{self._port}: {exc}") from exc
        log.info(
            "customer e-mailed",
            kind=notification.kind,
            order_id=notification.order_id,
            recipient=recipient,
        )

    async def close(self) -> None:
        return None


def _classified(code: int, detail: str) -> Exception:
    if 500 <= code < 600:
        return NotificationRejected(f"SMTP {code}: {detail}")
    return NotifierUnavailable(f"SMTP {code}: {detail}")
