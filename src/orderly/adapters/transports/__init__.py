"""Transports: implementations of ``services.messaging.Transport``."""
