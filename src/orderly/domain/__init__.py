"""The pure domain: orders, money, catalogue and events. Standard library only, no I/O."""
