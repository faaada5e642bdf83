"""Money as integer minor units plus an ISO 4217 currency code. Never floats."""

from __future__ import annotations

from dataclasses import dataclass


class CurrencyMismatch(ValueError):
    """Two amounts in different currencies were combined."""


@dataclass(frozen=True, slots=True)
class Money:
    amount: int
    currency: str

    def __add__(self, other: Money) -> Money:
        if other.currency != self.currency:
            raise CurrencyMismatch(f"cannot add {other.currency} to {self.currency}")
        return Money(self.amount + other.amount, self.currency)

    def __mul__(self, factor: int) -> Money:
        return Money(self.amount * factor, self.currency)

    @classmethod
    def zero(cls, currency: str) -> Money:
        return cls(0, currency)
