"""The SMTP notifier against a real SMTP server (aiosmtpd on loopback), and the log notifier."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import pytest
import structlog
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from orderly.adapters.notifiers import LogNotifier, SmtpNotifier
from orderly.domain.notifications import Notification
from orderly.services.notifications import NotificationRejected, Notifier, NotifierUnavailable

pytestmark = pytest.mark.timeout(30)

SENDER = "orders@shop.example"

CONFIRMATION = Notification(
    kind="order_confirmed",
    order_id="ORD-A1B2C3D4",
    customer_id="CUST-001",
    subject="Your order ORD-A1B2C3D4 is confirmed",
    body=(
        "Hello,\n\n"
        "Wireless Headphones (PROD-001) \N{MULTIPLICATION SIGN} 2: 99.98 USD\n"
        "Transaction txn_9f8e7d\n"
    ),
)


def free_port() -> int:
    """A loopback port nobody listens on (just released by the kernel)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class RecordingHandler:
    """Stores every accepted envelope; answers RCPT / DATA with a configured reply when set."""

    def __init__(self) -> None:
        self.received: list[Envelope] = []
        self.rcpt_reply: str | None = None
        self.data_reply: str | None = None

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if self.rcpt_reply is not None:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.data_reply is not None:
            return self.data_reply
        self.received.append(envelope)
        return "250 Message accepted for delivery"

    def messages(self) -> list[EmailMessage]:
        parsed = []
        for envelope in self.received:
            assert isinstance(envelope.content, bytes)
            message = message_from_bytes(envelope.content, policy=policy.default)
            assert isinstance(message, EmailMessage)
            parsed.append(message)
        return parsed


@pytest.fixture
def smtp_server() -> Iterator[tuple[RecordingHandler, int]]:
    handler = RecordingHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


@pytest.fixture
def handler(smtp_server: tuple[RecordingHandler, int]) -> RecordingHandler:
    return smtp_server[0]


@pytest.fixture
def notifier(smtp_server: tuple[RecordingHandler, int]) -> SmtpNotifier:
    return SmtpNotifier("127.0.0.1", smtp_server[1], SENDER, recipient_domain="customers.example")


def test_both_notifiers_satisfy_the_port() -> None:
    notifiers: list[Notifier] = [LogNotifier(), SmtpNotifier("127.0.0.1", 25, SENDER)]
    assert [n.name for n in notifiers] == ["log", "smtp"]


async def test_the_mail_arrives_with_envelope_headers_and_body(
    notifier: SmtpNotifier, handler: RecordingHandler
) -> None:
    await notifier.send(CONFIRMATION)

    assert len(handler.received) == 1
    envelope = handler.received[0]
    assert envelope.mail_from == SENDER
    assert envelope.rcpt_tos == ["CUST-001@customers.example"]
    [mail] = handler.messages()
    assert mail["From"] == SENDER
    assert mail["To"] == "CUST-001@customers.example"
    assert mail["Subject"] == "Your order ORD-A1B2C3D4 is confirmed"
    assert mail["Message-ID"] == "<order_confirmed.ORD-A1B2C3D4@shop.example>"
    assert mail["X-Orderly-Order-Id"] == "ORD-A1B2C3D4"
    assert mail["X-Orderly-Notification-Kind"] == "order_confirmed"
    assert mail["Date"]
    assert mail.get_content_type() == "text/plain"
    assert not mail.is_multipart()
    assert mail.get_content().replace("\r\n", "\n") == CONFIRMATION.body  # CRLF on the wire


async def test_a_customer_id_that_is_an_address_is_used_as_is(
    notifier: SmtpNotifier, handler: RecordingHandler
) -> None:
    await notifier.send(
        Notification("order_cancelled", "ORD-9", "alice@mail.example", "Cancelled", "Bye.\n")
    )

    assert handler.received[0].rcpt_tos == ["alice@mail.example"]
    assert handler.messages()[0]["To"] == "alice@mail.example"


async def test_a_retried_send_carries_the_same_message_id(
    notifier: SmtpNotifier, handler: RecordingHandler
) -> None:
    await notifier.send(CONFIRMATION)
    await notifier.send(CONFIRMATION)
    await notifier.send(
        Notification("payment_declined", "ORD-A1B2C3D4", "CUST-001", "Declined", "No.\n")
    )

    ids = [mail["Message-ID"] for mail in handler.messages()]
    assert ids[0] == ids[1]
    assert ids[2] != ids[0]


async def test_a_display_name_sender_uses_the_bare_address_in_the_envelope(
    smtp_server: tuple[RecordingHandler, int],
) -> None:
    handler, port = smtp_server
    notifier = SmtpNotifier("127.0.0.1", port, f"Shop <{SENDER}>")

    await notifier.send(CONFIRMATION)

    assert handler.received[0].mail_from == SENDER
    [mail] = handler.messages()
    assert mail["From"] == f"Shop <{SENDER}>"
    assert mail["To"] == "CUST-001@example.com"
    assert mail["Message-ID"].endswith("@shop.example>")


async def test_a_closed_port_is_unavailable() -> None:
    notifier = SmtpNotifier("127.0.0.1", free_port(), SENDER, timeout=2.0)

    with pytest.raises(NotifierUnavailable):
        await notifier.send(CONFIRMATION)


async def test_a_server_that_never_greets_is_unavailable_after_the_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        notifier = SmtpNotifier("127.0.0.1", port, SENDER, timeout=0.3)
        with pytest.raises(NotifierUnavailable):
            await notifier.send(CONFIRMATION)
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("stage", "reply", "expected"),
    [
        ("rcpt", "451 4.3.0 Try again later", NotifierUnavailable),
        ("rcpt", "452 4.2.2 Mailbox full", NotifierUnavailable),
        ("rcpt", "550 5.1.1 No such user", NotificationRejected),
        ("rcpt", "553 5.1.3 Bad recipient address syntax", NotificationRejected),
        ("data", "451 4.3.0 Local error in processing", NotifierUnavailable),
        ("data", "554 5.6.0 Message content rejected", NotificationRejected),
    ],
)
async def test_smtp_replies_are_classified(
    notifier: SmtpNotifier,
    handler: RecordingHandler,
    stage: str,
    reply: str,
    expected: type[Exception],
) -> None:
    if stage == "rcpt":
        handler.rcpt_reply = reply
    else:
        handler.data_reply = reply

    with pytest.raises(expected, match=reply.split()[0]):
        await notifier.send(CONFIRMATION)
    assert handler.received == []


def test_a_rejection_is_a_value_error_and_unavailability_is_not() -> None:
    assert issubclass(NotificationRejected, ValueError)
    assert not issubclass(NotifierUnavailable, ValueError)


async def test_a_header_that_cannot_be_sent_is_rejected_without_connecting() -> None:
    notifier = SmtpNotifier("127.0.0.1", free_port(), SENDER)
    bad = Notification("order_failed", "ORD-1", "CUST-1", "Hi\r\nBcc: victim@example", "x\n")

    with pytest.raises(NotificationRejected):
        await notifier.send(bad)


async def test_the_log_notifier_logs_one_line_and_keeps_nothing() -> None:
    notifier = LogNotifier()

    with structlog.testing.capture_logs() as logs:
        await notifier.send(CONFIRMATION)
        await notifier.close()

    expected: dict[str, Any] = {
        "event": "customer notified",
        "log_level": "info",
        "kind": "order_confirmed",
        "order_id": "ORD-A1B2C3D4",
        "customer_id": "CUST-001",
        "subject": "Your order ORD-A1B2C3D4 is confirmed",
    }
    assert logs == [expected]
    assert not vars(notifier)
