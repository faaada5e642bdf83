"""Helpers shared by the suites that run real orderly processes."""
