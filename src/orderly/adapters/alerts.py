"""Alert hooks: a dead letter is always logged, and POSTed to a webhook when one is set."""

from __future__ import annotations

import httpx
import structlog

from orderly.services.ports import NewDeadLetter

log = structlog.get_logger("orderly.alerts")


def alert_body(letter: NewDeadLetter, letter_id: int) -> dict[str, object]:
    message = letter.message
    return {
        "kind": "dead_letter",
        "deadLetterId": letter_id,
        "consumer": letter.consumer,
        "messageId": message.id,
        "type": message.type,
        "correlationId": message.correlation_id,
        "error": letter.error,
        "attempts": letter.attempts,
        "firstFailedAt": letter.first_failed_at.isoformat(),
        "lastFailedAt": letter.last_failed_at.isoformat(),
    }


def attention_body(order_id: str, why: str, detail: dict[str, object]) -> dict[str, object]:
    return {"kind": "needs_attention", "orderId": order_id, "why": why, "detail": detail}


class LogAlerts:
    async def dead_lettered(self, letter: NewDeadLetter, letter_id: int) -> None:
        log.error("ALERT dead letter", **alert_body(letter, letter_id))

    async def needs_attention(self, order_id: str, why: str, detail: dict[str, object]) -> None:
        log.error("ALERT order needs attention", **attention_body(order_id, why, detail))


class WebhookAlerts:
    """Logs, then POSTs the alert as JSON; a failing webhook is logged, never raised."""

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        self._url = url
        self._timeout = timeout

    async def dead_lettered(self, letter: NewDeadLetter, letter_id: int) -> None:
        body = alert_body(letter, letter_id)
        log.error("ALERT dead letter", **body)
        await self._post(body)

    async def needs_attention(self, order_id: str, why: str, detail: dict[str, object]) -> None:
        body = attention_body(order_id, why, detail)
        log.error("ALERT order needs attention", **body)
        await self._post(body)

    async def _post(self, body: dict[str, object]) -> None:
        try:
            async with httpx.AsyncClient(timeout=self._timeout) as client:
                response = await client.post(self._url, json=body)
                response.raise_for_status()
        except httpx.HTTPError as exc:
            log.warning("alert webhook failed", url=self._url, error=str(exc))
