"""Contract tests: schemathesis against a running `orderly up`."""
