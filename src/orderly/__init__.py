"""orderly: event-driven order processing with idempotent intake."""

__version__ = "0.1.0"
