"""The SQL of the PostgreSQL unit of work, as plain strings with no imports.

Kept apart so the intake benchmark's bare app sends exactly these statements without loading
orderly's dependencies.
"""

SELECT_PRODUCTS = """
SELECT sku, name, price_minor, currency FROM products
WHERE sku = ANY($1::varchar[]) AND active
"""

PRODUCT_EXISTS = "SELECT 1 FROM products WHERE sku = $1::varchar"

INSERT_ORDER = """
WITH new_order AS (
    INSERT INTO orders (id, customer_id, status, failure_reason, currency, total_minor,
                        payment_method, shipping_address, version, created_at, updated_at)
    VALUES ($1::varchar, $2::varchar, $3::varchar, NULL, $4::varchar, $5::bigint,
            $6::varchar, $7::jsonb, $8::integer, $9::timestamptz, $10::timestamptz)
), new_lines AS (
    INSERT INTO order_lines (order_id, line_no, sku, name, quantity, unit_price_minor)
    SELECT $1::varchar, line.* FROM unnest($11::integer[], $12::varchar[], $13::varchar[],
                                           $14::integer[], $15::bigint[]) AS line
)
INSERT INTO order_events (order_id, version, type, data, occurred_at, correlation_id,
                          causation_id)
VALUES ($1::varchar, $16::integer, $17::varchar, $18::jsonb, $19::timestamptz,
        $20::varchar, $21::varchar)
"""

INSERT_OUTBOX = """
INSERT INTO outbox_messages (message_id, type, key, payload, headers, correlation_id,
                             causation_id, created_at, available_at, attempts)
VALUES ($1::varchar, $2::varchar, $3::varchar, $4::jsonb, $5::jsonb, $6::varchar,
        $7::varchar, $8::timestamptz, $8::timestamptz, 0)
"""

# One statement claims a key or reads the finished one. A key found live (not expired) in the
# statement's snapshot is only read: no row is offered to the INSERT, so a retry of a finished
# request takes no transaction id, no sequence value and writes no WAL. Otherwise the row is
# offered under a transaction-scoped advisory lock on the scope (a concurrent claim of an
# uncommitted key gets nothing at once) and an expired key is taken over. claimed_id is the
# claimed row's id, or NULL with the columns of the live key (if any) beside it.
CLAIM_KEY = """
WITH found AS (
    SELECT fingerprint, response_status, response_headers, response_body, resource_id,
           resource_status, expires_at
    FROM idempotency_keys
    WHERE user_id = $1::varchar AND method = $2::varchar AND route = $3::varchar
      AND key = $4::varchar
), claimed AS (
    INSERT INTO idempotency_keys (user_id, method, route, key, fingerprint, created_at,
                                  expires_at)
    SELECT $1::varchar, $2::varchar, $3::varchar, $4::varchar, $5::varchar, $6::timestamptz,
           $7::timestamptz
    WHERE NOT EXISTS (SELECT FROM found WHERE found.expires_at > $6::timestamptz)
      AND pg_try_advisory_xact_lock($8::bigint)
    ON CONFLICT (user_id, method, route, key) DO UPDATE
    SET fingerprint = excluded.fingerprint, created_at = excluded.created_at,
        expires_at = excluded.expires_at, response_status = NULL, response_headers = NULL,
        response_body = NULL, resource_id = NULL, resource_status = NULL
    WHERE idempotency_keys.expires_at <= excluded.created_at
    RETURNING id
)
SELECT claimed.id AS claimed_id, found.*
FROM (SELECT) AS one LEFT JOIN claimed ON true LEFT JOIN found ON true
"""

SELECT_KEY = """
SELECT fingerprint, response_status, response_headers, response_body, resource_id,
       resource_status, expires_at
FROM idempotency_keys
WHERE user_id = $1::varchar AND method = $2::varchar AND route = $3::varchar
  AND key = $4::varchar
"""

COMPLETE_KEY = """
UPDATE idempotency_keys
SET response_status = $2::integer, response_headers = $3::jsonb, response_body = $4::bytea,
    resource_id = $5::varchar, resource_status = $6::varchar
WHERE id = $1::bigint
"""

PURGE_KEYS = """
DELETE FROM idempotency_keys
WHERE id IN (SELECT id FROM idempotency_keys WHERE expires_at <= $1::timestamptz LIMIT $2)
"""

STOCK_LEVELS = """
SELECT sku, warehouse_id, on_hand, reserved FROM stock WHERE sku = $1::varchar
ORDER BY warehouse_id
"""

WAREHOUSE_EXISTS = "SELECT 1 FROM warehouses WHERE id = $1::varchar"

SET_ON_HAND = """
INSERT INTO stock (sku, warehouse_id, on_hand, reserved)
VALUES ($1::varchar, $2::varchar, $3::integer, 0)
ON CONFLICT (sku, warehouse_id) DO UPDATE SET on_hand = excluded.on_hand
WHERE stock.reserved <= excluded.on_hand
RETURNING sku, warehouse_id, on_hand, reserved
"""

STOCK_ON_HAND_FOR_UPDATE = """
SELECT on_hand FROM stock WHERE sku = $1::varchar AND warehouse_id = $2::varchar FOR UPDATE
"""

INSERT_LEDGER = """
INSERT INTO stock_ledger (sku, warehouse_id, kind, on_hand_delta, reserved_delta, order_id, at)
VALUES ($1::varchar, $2::varchar, $3::varchar, $4::integer, $5::integer, $6::varchar,
        $7::timestamptz)
"""
