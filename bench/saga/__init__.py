"""The saga benchmark: orders/s from POST to CONFIRMED through the order saga (``run.py``)."""
