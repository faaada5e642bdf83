"""The fraud rule engine: each rule's boundaries, combining outcomes, and odd input."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orderly.domain.fraud import (
    AddressVerificationRule,
    AmountThresholdRule,
    CountryBlocklistRule,
    FraudConfig,
    FraudEngine,
    FraudOutcome,
    FraudRule,
    FraudSubject,
    FraudVerdict,
    RuleHit,
    VelocityRule,
    default_rules,
)

SEVERITY_ORDER = [FraudOutcome.APPROVE, FraudOutcome.REVIEW, FraudOutcome.REJECT]

_DROP = object()  # as a field value in address(): leave the field out

US_ADDRESS: dict[str, Any] = {
    "country": "US",
    "city": "Springfield",
    "line1": "742 Evergreen Terrace",
    "postalCode": "49007",
}


def subject(**changes: Any) -> FraudSubject:
    base = FraudSubject(
        order_id="o-1",
        customer_id="alice",
        total_minor=4999,
        currency="USD",
        shipping_address=US_ADDRESS,
        recent_orders=1,
    )
    return dataclasses.replace(base, **changes)


def address(**changes: Any) -> dict[str, Any]:
    result = {**US_ADDRESS, **changes}
    return {key: value for key, value in result.items() if value is not _DROP}


def engine(**config: Any) -> FraudEngine:
    return FraudEngine(default_rules(FraudConfig(**config)))


class FixedRule:
    """A plug-in rule that always answers the same thing."""

    def __init__(self, name: str, outcome: FraudOutcome | None) -> None:
        self.name = name
        self.outcome = outcome

    def evaluate(self, subject: FraudSubject) -> RuleHit | None:
        if self.outcome is None:
            return None
        return RuleHit(self.name, self.outcome, f"{self.name} says {self.outcome}")


# --- the happy path -------------------------------------------------------------------------


def test_an_ordinary_order_is_approved_with_no_reasons() -> None:
    verdict = engine().evaluate(subject())

    assert verdict == FraudVerdict(FraudOutcome.APPROVE, ())
    assert verdict.as_dict() == {"outcome": "approve", "reasons": []}


def test_outcomes_are_plain_strings() -> None:
    assert [str(outcome) for outcome in FraudOutcome] == ["approve", "review", "reject"]


# --- velocity -------------------------------------------------------------------------------


def test_velocity_at_the_limit_passes() -> None:
    assert (
        VelocityRule(max_orders=5, window_seconds=3600).evaluate(subject(recent_orders=5)) is None
    )


def test_velocity_one_above_the_limit_is_held_for_review() -> None:
    hit = VelocityRule(max_orders=5, window_seconds=3600).evaluate(subject(recent_orders=6))

    assert hit == RuleHit("velocity", FraudOutcome.REVIEW, "6 orders in 3600 s (limit 5)")


def test_velocity_uses_the_configured_limit_and_window() -> None:
    verdict = engine(velocity_max_orders=2, velocity_window_seconds=60).evaluate(
        subject(recent_orders=3)
    )

    assert verdict.outcome is FraudOutcome.REVIEW
    assert [hit.reason for hit in verdict.hits] == ["3 orders in 60 s (limit 2)"]


# --- amount ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total_minor", "expected"),
    [
        (0, None),
        (100_000, None),
        (100_001, FraudOutcome.REVIEW),
        (1_000_000, FraudOutcome.REVIEW),
        (1_000_001, FraudOutcome.REJECT),
    ],
)
def test_amount_thresholds_are_strictly_above(
    total_minor: int, expected: FraudOutcome | None
) -> None:
    rule = AmountThresholdRule(review_above_minor=100_000, reject_above_minor=1_000_000)

    hit = rule.evaluate(subject(total_minor=total_minor))

    assert (hit.outcome if hit else None) == expected


def test_amount_reasons_name_the_total_and_the_limit() -> None:
    rule = AmountThresholdRule(review_above_minor=100_000, reject_above_minor=1_000_000)

    review = rule.evaluate(subject(total_minor=100_001))
    reject = rule.evaluate(subject(total_minor=1_000_001))

    assert review is not None
    assert review.rule == "amount"
    assert "100001" in review.reason
    assert "USD" in review.reason
    assert "review limit 100000" in review.reason
    assert reject is not None
    assert "reject limit 1000000" in reject.reason


def test_no_reject_threshold_means_large_amounts_are_only_reviewed() -> None:
    rule = AmountThresholdRule(review_above_minor=100_000, reject_above_minor=None)

    hit = rule.evaluate(subject(total_minor=10**12))

    assert hit is not None
    assert hit.outcome is FraudOutcome.REVIEW


def test_amount_rule_comes_from_config() -> None:
    verdict = engine(review_above_minor=10, reject_above_minor=20).evaluate(subject(total_minor=21))

    assert verdict.outcome is FraudOutcome.REJECT


# --- country blocklist ----------------------------------------------------------------------


def test_a_blocked_country_is_rejected() -> None:
    rule = CountryBlocklistRule(frozenset({"KP"}))

    hit = rule.evaluate(subject(shipping_address=address(country="KP", postalCode="1")))

    assert hit == RuleHit(
        "country_blocklist", FraudOutcome.REJECT, "shipping country KP is blocked"
    )


@pytest.mark.parametrize(
    ("blocked", "shipped_to"), [("KP", "kp"), ("kp", "KP"), ("Kp", " kP "), ("ir", "Ir")]
)
def test_the_blocklist_ignores_case_and_surrounding_space(blocked: str, shipped_to: str) -> None:
    rule = CountryBlocklistRule(frozenset({blocked}))

    hit = rule.evaluate(subject(shipping_address=address(country=shipped_to)))

    assert hit is not None
    assert hit.outcome is FraudOutcome.REJECT


def test_other_countries_pass_the_blocklist() -> None:
    rule = CountryBlocklistRule(frozenset({"KP", "IR"}))

    assert rule.evaluate(subject()) is None
    assert rule.evaluate(subject(shipping_address=None)) is None


@pytest.mark.parametrize("country", [None, "", 42, "KPX", ["KP"]])
def test_the_blocklist_ignores_unusable_countries(country: object) -> None:
    rule = CountryBlocklistRule(frozenset({"KP"}))

    assert rule.evaluate(subject(shipping_address=address(country=country))) is None


# --- address verification -------------------------------------------------------------------


def test_a_missing_address_is_fine_unless_required() -> None:
    assert (
        AddressVerificationRule(require_shipping_address=False).evaluate(
            subject(shipping_address=None)
        )
        is None
    )

    hit = AddressVerificationRule(require_shipping_address=True).evaluate(
        subject(shipping_address=None)
    )

    assert hit == RuleHit("address", FraudOutcome.REVIEW, "shipping address is missing")


def test_a_complete_address_passes_even_when_required() -> None:
    rule = AddressVerificationRule(require_shipping_address=True)

    assert rule.evaluate(subject()) is None
    assert rule.evaluate(subject(shipping_address=address(line2="Apt 1"))) is None


@pytest.mark.parametrize("field", ["country", "city", "line1", "postalCode"])
@pytest.mark.parametrize("value", [_DROP, None, "", "   ", 12345, ["x"]])
def test_each_required_field_missing_or_blank_is_named(field: str, value: object) -> None:
    rule = AddressVerificationRule(require_shipping_address=False)

    hit = rule.evaluate(subject(shipping_address=address(**{field: value})))

    assert hit is not None
    assert hit.outcome is FraudOutcome.REVIEW
    assert f"missing {field}" in hit.reason


def test_all_missing_fields_are_named_in_one_reason() -> None:
    rule = AddressVerificationRule(require_shipping_address=False)

    hit = rule.evaluate(subject(shipping_address={"line2": "Apt 1"}))

    assert hit is not None
    assert hit.reason == "shipping address: missing country, city, line1, postalCode"


@pytest.mark.parametrize("country", ["USA", "U", "1A", "Ü S", "ÜS", "U-"])
def test_a_country_that_is_not_two_ascii_letters_is_reviewed(country: str) -> None:
    rule = AddressVerificationRule(require_shipping_address=False)

    hit = rule.evaluate(subject(shipping_address=address(country=country)))

    assert hit is not None
    assert "country is not a two-letter ISO 3166 code" in hit.reason


@pytest.mark.parametrize(
    ("country", "postal_code"),
    [
        ("US", "49007"),
        ("us", "49007-1234"),
        ("GB", "SW1A 1AA"),
        ("GB", "sw1a1aa"),
        ("GB", "M1 1AE"),
        ("GB", "B33 8TH"),
        ("GB", "CR2 6XH"),
        ("GB", "DN55 1PT"),
        ("DE", "10115"),
        ("FR", "75008"),
        ("NL", "1012 AB"),
        ("NL", "1012ab"),
        ("CA", "K1A 0B1"),
        ("ca", "k1a0b1"),
        ("JP", "100-0001"),
        ("BR", "01310-100"),
        ("CH", "8001"),
        ("IE", "D02 X285"),
    ],
)
def test_well_formed_postal_codes_pass(country: str, postal_code: str) -> None:
    rule = AddressVerificationRule(require_shipping_address=False)

    hit = rule.evaluate(subject(shipping_address=address(country=country, postalCode=postal_code)))

    assert hit is None


@pytest.mark.parametrize(
    ("country", "postal_code"),
    [
        ("US", "4900"),
        ("US", "490071"),
        ("US", "49007-12"),
        ("US", "ABCDE"),
        ("US", "٤٩٠٠٧"),
        ("GB", "12345"),
        ("GB", "SW1A 1A"),
        ("DE", "1011"),
        ("FR", "750080"),
        ("NL", "1012"),
        ("NL", "AB 1012"),
        ("CA", "12345"),
        ("CA", "K1A 0B"),
        ("JP", "1000001"),
        ("jp", "10-00001"),
    ],
)
def test_postal_codes_inconsistent_with_the_country_are_reviewed(
    country: str, postal_code: str
) -> None:
    rule = AddressVerificationRule(require_shipping_address=False)

    hit = rule.evaluate(subject(shipping_address=address(country=country, postalCode=postal_code)))

    assert hit is not None
    assert hit.outcome is FraudOutcome.REVIEW
    assert f"postalCode does not match the {country.upper()} format" in hit.reason


def test_several_address_problems_make_one_hit_naming_each() -> None:
    rule = AddressVerificationRule(require_shipping_address=False)

    hit = rule.evaluate(subject(shipping_address={"country": "US", "postalCode": "1"}))

    assert hit is not None
    assert hit.reason == (
        "shipping address: missing city, line1; postalCode does not match the US format"
    )


@pytest.mark.parametrize("odd_address", ["US 49007", 42, ["US"], ("country", "US")])
def test_an_address_that_is_not_a_mapping_counts_as_all_fields_missing(
    odd_address: object,
) -> None:
    odd = cast(Mapping[str, Any], odd_address)
    verdict = engine(blocked_countries=frozenset({"US"})).evaluate(subject(shipping_address=odd))

    assert verdict.outcome is FraudOutcome.REVIEW
    assert [hit.rule for hit in verdict.hits] == ["address"]
    assert "missing country, city, line1, postalCode" in verdict.hits[0].reason


# --- odd input never raises -----------------------------------------------------------------


@pytest.mark.parametrize("recent_orders", [None, "99", 99.0, True])
def test_velocity_treats_a_non_integer_count_as_missing(recent_orders: object) -> None:
    odd = subject(recent_orders=recent_orders)

    assert VelocityRule(max_orders=0, window_seconds=3600).evaluate(odd) is None


@pytest.mark.parametrize("total_minor", [None, "10000000", 1e12, True])
def test_amount_treats_a_non_integer_total_as_missing(total_minor: object) -> None:
    rule = AmountThresholdRule(review_above_minor=0, reject_above_minor=0)

    assert rule.evaluate(subject(total_minor=total_minor)) is None


def test_an_odd_currency_does_not_break_the_reason() -> None:
    rule = AmountThresholdRule(review_above_minor=0, reject_above_minor=None)

    hit = rule.evaluate(subject(total_minor=1, currency=None))

    assert hit is not None
    assert hit.outcome is FraudOutcome.REVIEW


def test_a_subject_made_of_odd_values_is_evaluated_without_raising() -> None:
    odd = FraudSubject(
        order_id=cast(str, None),
        customer_id=cast(str, 7),
        total_minor=cast(int, "lots"),
        currency=cast(str, b"USD"),
        shipping_address={"country": b"US", "city": 3, "line1": None, "postalCode": object()},
        recent_orders=cast(int, [1, 2, 3]),
    )

    verdict = engine(require_shipping_address=True, blocked_countries=frozenset({"US"})).evaluate(
        odd
    )

    assert verdict.outcome is FraudOutcome.REVIEW
    assert [hit.rule for hit in verdict.hits] == ["address"]


# --- combining rules ------------------------------------------------------------------------


def test_every_hit_is_reported_and_the_most_severe_wins() -> None:
    risky = subject(
        recent_orders=9,
        total_minor=2_000_000,
        shipping_address={"country": "kp", "city": "", "line1": "1 Main St", "postalCode": "x"},
    )

    verdict = engine(blocked_countries=frozenset({"KP"})).evaluate(risky)

    assert verdict.outcome is FraudOutcome.REJECT
    assert [(hit.rule, hit.outcome) for hit in verdict.hits] == [
        ("velocity", FraudOutcome.REVIEW),
        ("amount", FraudOutcome.REJECT),
        ("country_blocklist", FraudOutcome.REJECT),
        ("address", FraudOutcome.REVIEW),
    ]


def test_several_reviews_stay_a_review() -> None:
    verdict = engine().evaluate(subject(recent_orders=6, total_minor=100_001))

    assert verdict.outcome is FraudOutcome.REVIEW
    assert [hit.rule for hit in verdict.hits] == ["velocity", "amount"]


def test_default_rules_follow_the_config() -> None:
    rules = default_rules(FraudConfig())

    assert [rule.name for rule in rules] == ["velocity", "amount", "country_blocklist", "address"]


def test_a_custom_rule_plugs_into_the_engine() -> None:
    class NewCustomerRule:
        name = "new_customer"

        def evaluate(self, subject: FraudSubject) -> RuleHit | None:
            if subject.customer_id.startswith("guest-"):
                return RuleHit(self.name, FraudOutcome.REVIEW, "guest checkout")
            return None

    rules: list[FraudRule] = [*default_rules(FraudConfig()), NewCustomerRule()]

    assert FraudEngine(rules).evaluate(subject()).outcome is FraudOutcome.APPROVE
    verdict = FraudEngine(rules).evaluate(subject(customer_id="guest-42"))
    assert verdict.as_dict() == {
        "outcome": "review",
        "reasons": [{"rule": "new_customer", "outcome": "review", "reason": "guest checkout"}],
    }


def test_the_engine_keeps_its_own_copy_of_the_rules() -> None:
    rules: list[FraudRule] = [FixedRule("a", FraudOutcome.REJECT)]
    fraud_engine = FraudEngine(rules)

    rules.clear()

    assert fraud_engine.evaluate(subject()).outcome is FraudOutcome.REJECT


def test_as_dict_shapes() -> None:
    hit = RuleHit("velocity", FraudOutcome.REVIEW, "7 orders in 3600 s (limit 5)")
    verdict = FraudVerdict(FraudOutcome.REVIEW, (hit,))

    assert hit.as_dict() == {
        "rule": "velocity",
        "outcome": "review",
        "reason": "7 orders in 3600 s (limit 5)",
    }
    assert verdict.as_dict() == {"outcome": "review", "reasons": [hit.as_dict()]}
    assert type(verdict.as_dict()["outcome"]) is str
    assert type(hit.as_dict()["outcome"]) is str


# --- properties -----------------------------------------------------------------------------

subjects = st.builds(
    FraudSubject,
    order_id=st.text(max_size=8),
    customer_id=st.text(max_size=8),
    total_minor=st.integers(),
    currency=st.text(max_size=3),
    shipping_address=st.none()
    | st.dictionaries(
        st.sampled_from(["country", "city", "line1", "line2", "postalCode"]),
        st.text(max_size=10) | st.none() | st.integers(),
    ),
    recent_orders=st.integers(),
)


@given(
    answers=st.lists(st.none() | st.sampled_from(list(FraudOutcome)), max_size=6),
    fraud_subject=subjects,
)
def test_the_verdict_is_the_most_severe_hit_and_lists_every_hit(
    answers: list[FraudOutcome | None], fraud_subject: FraudSubject
) -> None:
    rules = [FixedRule(f"rule-{index}", answer) for index, answer in enumerate(answers)]

    verdict = FraudEngine(rules).evaluate(fraud_subject)

    outcomes = [answer for answer in answers if answer is not None]
    expected = max(outcomes, key=SEVERITY_ORDER.index, default=FraudOutcome.APPROVE)
    assert verdict.outcome is expected
    assert [hit.rule for hit in verdict.hits] == [
        f"rule-{index}" for index, answer in enumerate(answers) if answer is not None
    ]


@given(fraud_subject=subjects)
def test_an_engine_without_rules_always_approves(fraud_subject: FraudSubject) -> None:
    assert FraudEngine([]).evaluate(fraud_subject) == FraudVerdict(FraudOutcome.APPROVE, ())


@given(fraud_subject=subjects)
def test_the_default_rules_never_raise(fraud_subject: FraudSubject) -> None:
    config = FraudConfig(blocked_countries=frozenset({"KP"}), require_shipping_address=True)

    verdict = FraudEngine(default_rules(config)).evaluate(fraud_subject)

    assert verdict.outcome in FraudOutcome
    assert verdict.outcome == max(
        (hit.outcome for hit in verdict.hits),
        key=SEVERITY_ORDER.index,
        default=FraudOutcome.APPROVE,
    )
