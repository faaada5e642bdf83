"""Thin entrypoints: HTTP API and CLI. Parse, call a service, map the result."""
