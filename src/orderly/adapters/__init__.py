"""Implementations of the service ports: database, auth, and later transports and gateways."""
