"""Order, lines, event, outbox row and key commit together or not at all."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from orderly.adapters.db import postgres, repositories
from tests.conftest import Backend, row_counts

ORDER = {"items": [{"sku": "PROD-001", "quantity": 1}, {"sku": "PROD-003", "quantity": 2}]}


class InjectedFailure(Exception):
    pass


def fail_after(original: Callable[..., Any]) -> Callable[..., Any]:
    """Run the real write, then fail: the write must not survive."""

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        await original(*args, **kwargs)
        raise InjectedFailure()

    return wrapper


# The write each backend's unit of work uses: SQLAlchemy on SQLite, the driver on PostgreSQL.
WRITES: dict[str, dict[str, type]] = {
    "orders.add": {"sqlite": repositories.SqlOrderRepository, "postgres": postgres.PgOrders},
    "outbox.add": {"sqlite": repositories.SqlOutbox, "postgres": postgres.PgOutbox},
    "idempotency.complete": {
        "sqlite": repositories.SqlIdempotencyStore,
        "postgres": postgres.PgIdempotencyStore,
    },
}


@pytest.mark.parametrize("write", list(WRITES))
async def test_a_failure_between_writes_leaves_nothing(
    client: httpx.AsyncClient,
    alice: dict[str, str],
    backend: Backend,
    monkeypatch: pytest.MonkeyPatch,
    write: str,
) -> None:
    cls, method = WRITES[write][backend.name], write.split(".")[1]
    before = await row_counts(backend)
    idem = str(uuid.uuid4())
    headers = {**alice, "Idempotency-Key": idem}
    with monkeypatch.context() as patch:
        patch.setattr(cls, method, fail_after(getattr(cls, method)))
        with pytest.raises(InjectedFailure):
            await client.post("/api/orders", json=ORDER, headers=headers)
    assert await row_counts(backend) == before
    # Nothing was stored under the key either: the same request now goes through.
    retry = await client.post("/api/orders", json=ORDER, headers=headers)
    assert retry.status_code == 202
    assert "idempotent-replayed" not in retry.headers
    after = await row_counts(backend)
    assert after["orders"] == before["orders"] + 1
    assert after["outbox_messages"] == before["outbox_messages"] + 1
