"""End-to-end tests: real `orderly` processes and the command line."""
