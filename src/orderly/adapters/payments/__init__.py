"""Payment gateways: implementations of ``orderly.services.payments.PaymentGateway``.

``simulated`` answers in-process (deterministically per idempotency key) for development, demos
and load tests; ``stripe_gateway`` talks to Stripe's PaymentIntents API.
"""
