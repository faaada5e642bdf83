"""Use cases, message handlers and the ports they need. No SQL, no web framework."""
