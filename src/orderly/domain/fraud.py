"""Fraud checks: small rules that each may flag an order, and an engine that combines them.

Every rule looks at one ``FraudSubject`` and returns a ``RuleHit`` (a flag with its outcome and a
human reason) or ``None``. The engine runs all rules, reports every hit, and settles on the most
severe outcome: approve < review < reject. Everything a rule needs (including how many orders the
customer placed recently) is in the subject or the rule's own settings; nothing here reads a
clock or does I/O. Rules never raise on malformed input: an odd value is treated as missing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol


class FraudOutcome(StrEnum):
    APPROVE = "approve"
    REVIEW = "review"
    REJECT = "reject"


_SEVERITY: dict[FraudOutcome, int] = {
    FraudOutcome.APPROVE: 0,
    FraudOutcome.REVIEW: 1,
    FraudOutcome.REJECT: 2,
}


@dataclass(frozen=True, slots=True)
class FraudSubject:
    order_id: str
    customer_id: str
    total_minor: int
    currency: str
    shipping_address: Mapping[str, Any] | None
    recent_orders: int


@dataclass(frozen=True, slots=True)
class RuleHit:
    rule: str
    outcome: FraudOutcome
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"rule": self.rule, "outcome": str(self.outcome), "reason": self.reason}


@dataclass(frozen=True, slots=True)
class FraudVerdict:
    outcome: FraudOutcome
    hits: tuple[RuleHit, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"outcome": str(self.outcome), "reasons": [hit.as_dict() for hit in self.hits]}


class FraudRule(Protocol):
    """One fraud check. Returns a hit when the subject trips it, else ``None``; never raises."""

    name: str

    def evaluate(self, subject: FraudSubject) -> RuleHit | None: ...


@dataclass(frozen=True, slots=True)
class FraudConfig:
    velocity_max_orders: int = 5
    velocity_window_seconds: int = 3600
    review_above_minor: int = 100_000
    reject_above_minor: int | None = 1_000_000
    blocked_countries: frozenset[str] = frozenset()
    require_shipping_address: bool = False


def _as_int(value: object) -> int | None:
    """An integer, or ``None`` for anything else (booleans included)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def _text(value: object) -> str | None:
    """A non-blank string with surrounding whitespace removed, or ``None``."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _address_field(address: object, key: str) -> str | None:
    if not isinstance(address, Mapping):
        return None
    return _text(address.get(key))


def _country_code(value: str | None) -> str | None:
    """The upper-cased ISO 3166 alpha-2 code, or ``None`` when it is not two ASCII letters."""
    if value is not None and len(value) == 2 and value.isascii() and value.isalpha():
        return value.upper()
    return None


class VelocityRule:
    """More than ``max_orders`` orders by one customer within the window: hold for review."""

    name: str = "velocity"

    def __init__(self, max_orders: int, window_seconds: int) -> None:
        self.max_orders = max_orders
        self.window_seconds = window_seconds

    def evaluate(self, subject: FraudSubject) -> RuleHit | None:
        recent = _as_int(subject.recent_orders)
        if recent is None or recent <= self.max_orders:
            return None
        return RuleHit(
            self.name,
            FraudOutcome.REVIEW,
            f"{recent} orders in {self.window_seconds} s (limit {self.max_orders})",
        )


class AmountThresholdRule:
    """Large totals: strictly above the reject limit rejects, above the review limit reviews."""

    name: str = "amount"

    def __init__(self, review_above_minor: int, reject_above_minor: int | None) -> None:
        self.review_above_minor = review_above_minor
        self.reject_above_minor = reject_above_minor

    def evaluate(self, subject: FraudSubject) -> RuleHit | None:
        total = _as_int(subject.total_minor)
        if total is None:
            return None
        currency = _text(subject.currency) or "?"
        if self.reject_above_minor is not None and total > self.reject_above_minor:
            return RuleHit(
                self.name,
                FraudOutcome.REJECT,
                f"total {total} {currency} minor units is above the reject limit "
                f"{self.reject_above_minor}",
            )
        if total > self.review_above_minor:
            return RuleHit(
                self.name,
                FraudOutcome.REVIEW,
                f"total {total} {currency} minor units is above the review limit "
                f"{self.review_above_minor}",
            )
        return None


class CountryBlocklistRule:
    """Shipping to a blocked country (ISO 3166 alpha-2, any case) rejects the order."""

    name: str = "country_blocklist"

    def __init__(self, blocked_countries: frozenset[str]) -> None:
        self.blocked_countries = frozenset(
            code.strip().upper() for code in blocked_countries if isinstance(code, str)
        )

    def evaluate(self, subject: FraudSubject) -> RuleHit | None:
        country = _country_code(_address_field(subject.shipping_address, "country"))
        if country is None or country not in self.blocked_countries:
            return None
        return RuleHit(self.name, FraudOutcome.REJECT, f"shipping country {country} is blocked")


_REQUIRED_ADDRESS_FIELDS = ("country", "city", "line1", "postalCode")

_POSTAL_CODE_FORMATS: dict[str, re.Pattern[str]] = {
    "US": re.compile(r"\d{5}(?:-\d{4})?", re.ASCII),
    "GB": re.compile(r"(?:[A-Z]{1,2}\d[A-Z\d]? ?\d[A-Z]{2}|GIR ?0AA)", re.ASCII | re.IGNORECASE),
    "DE": re.compile(r"\d{5}", re.ASCII),
    "FR": re.compile(r"\d{5}", re.ASCII),
    "NL": re.compile(r"\d{4} ?[A-Z]{2}", re.ASCII | re.IGNORECASE),
    "CA": re.compile(r"[A-Z]\d[A-Z] ?\d[A-Z]\d", re.ASCII | re.IGNORECASE),
    "JP": re.compile(r"\d{3}-\d{4}", re.ASCII),
}


class AddressVerificationRule:
    """Incomplete or inconsistent shipping addresses are held for review.

    An absent address is only flagged when ``require_shipping_address`` is set. A present one
    needs every required field, a two-letter country code, and (for a few well-known countries)
    a postal code in that country's format.
    """

    name: str = "address"

    def __init__(self, require_shipping_address: bool) -> None:
        self.require_shipping_address = require_shipping_address

    def evaluate(self, subject: FraudSubject) -> RuleHit | None:
        address = subject.shipping_address
        if address is None:
            if not self.require_shipping_address:
                return None
            return RuleHit(self.name, FraudOutcome.REVIEW, "shipping address is missing")
        problems = self._problems(address)
        if not problems:
            return None
        return RuleHit(self.name, FraudOutcome.REVIEW, "shipping address: " + "; ".join(problems))

    @staticmethod
    def _problems(address: object) -> list[str]:
        fields = {key: _address_field(address, key) for key in _REQUIRED_ADDRESS_FIELDS}
        problems: list[str] = []
        missing = [key for key, value in fields.items() if value is None]
        if missing:
            problems.append("missing " + ", ".join(missing))
        raw_country = fields["country"]
        country = _country_code(raw_country)
        if raw_country is not None and country is None:
            problems.append("country is not a two-letter ISO 3166 code")
        postal_code = fields["postalCode"]
        pattern = _POSTAL_CODE_FORMATS.get(country or "")
        if postal_code is not None and pattern is not None and not pattern.fullmatch(postal_code):
            problems.append(f"postalCode does not match the {country} format")
        return problems


def default_rules(config: FraudConfig) -> list[FraudRule]:
    """The standard rule set: velocity, amount, country blocklist, address verification."""
    return [
        VelocityRule(config.velocity_max_orders, config.velocity_window_seconds),
        AmountThresholdRule(config.review_above_minor, config.reject_above_minor),
        CountryBlocklistRule(config.blocked_countries),
        AddressVerificationRule(config.require_shipping_address),
    ]


class FraudEngine:
    """Runs every rule; the verdict is the most severe hit (approve when nothing hits)."""

    def __init__(self, rules: Sequence[FraudRule]) -> None:
        self.rules: tuple[FraudRule, ...] = tuple(rules)

    def evaluate(self, subject: FraudSubject) -> FraudVerdict:
        hits = tuple(hit for rule in self.rules if (hit := rule.evaluate(subject)) is not None)
        outcome = max(
            (FraudOutcome(hit.outcome) for hit in hits),
            key=_SEVERITY.__getitem__,
            default=FraudOutcome.APPROVE,
        )
        return FraudVerdict(outcome, hits)
