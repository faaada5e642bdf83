"""The message benchmark's own table and statements, shared by the producer and the worker.

Each benchmark message stands for one row of ``bench_items``, inserted by the producer in the
same transaction as the message's outbox row (as a business write and its message would be).
The worker's effect is an ``UPDATE`` of that row, in the consumer runtime's transaction beside
the inbox row: ``done_at`` is the database clock just before the commit and ``applied`` counts
how often the effect ran (exactly once, or the run is wrong).
"""

from __future__ import annotations

MESSAGE_TYPE = "bench.ping"
CONSUMER = "bench-pipeline"

CREATE_ITEMS = """
CREATE TABLE bench_items (
    id bigint PRIMARY KEY,
    message_id varchar(36) NOT NULL,
    created_at timestamptz NOT NULL,
    done_at timestamptz,
    applied integer NOT NULL DEFAULT 0
)
"""

INSERT_ITEM = """
INSERT INTO bench_items (id, message_id, created_at)
VALUES ($1::bigint, $2::varchar, $3::timestamptz)
"""

MARK_DONE = (
    "UPDATE bench_items SET done_at = clock_timestamp(), applied = applied + 1 WHERE id = :id"
)

DONE_BETWEEN = """
SELECT count(*) FROM bench_items WHERE id >= $1 AND id < $2 AND done_at IS NOT NULL
"""

OUTCOME = """
SELECT count(*) AS items, count(done_at) AS done, coalesce(max(applied), 0) AS max_applied,
       min(created_at) AS first_created, min(done_at) AS first_done, max(done_at) AS last_done
FROM bench_items WHERE id >= $1 AND id < $2
"""

# Per message, in seconds from the producer's created_at: the relay's publish (outbox sent_at;
# on the local transport that is the ack, in the consumer's transaction), the start of the
# consumer's transaction (inbox processed_at) and the effect (done_at, just before commit).
TIMELINE = """
SELECT extract(epoch FROM o.sent_at - i.created_at)::float8 AS sent,
       extract(epoch FROM p.processed_at - i.created_at)::float8 AS started,
       extract(epoch FROM i.done_at - i.created_at)::float8 AS done
FROM bench_items i
JOIN outbox_messages o ON o.message_id = i.message_id
JOIN processed_messages p ON p.consumer = $3 AND p.message_id = i.message_id
WHERE i.id >= $1 AND i.id < $2 AND i.done_at IS NOT NULL
"""

INBOX_ROWS = "SELECT count(*) FROM processed_messages WHERE consumer = $1"
