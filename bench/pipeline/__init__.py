"""Pipeline benchmark: messages/s from outbox insert to committed consumer effect, per
transport, and orders/s from ``POST /api/orders`` to ``CONFIRMED`` (``bench.pipeline.run``)."""
