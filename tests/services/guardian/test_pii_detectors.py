"""E-mail and payment-card detectors, and the Luhn check."""

from __future__ import annotations

import time

import pytest

from services.guardian.pii_detectors import CreditCardDetector, EmailDetector, luhn_valid


@pytest.mark.parametrize(
    "number",
    [
        "4111111111111111",
        "5555555555554444",
        "378282246310005",
        "6011111111111117",
        "3530111333300000",
        "7992739871300",
    ],
)
def test_luhn_accepts_valid_numbers(number: str) -> None:
    assert luhn_valid(number)


@pytest.mark.parametrize(
    "number",
    ["4111111111111112", "5555555555554445", "1234567812345678", "411111111111", "41111111111111111111", "4111-1111"],
)
def test_luhn_refuses_invalid_numbers(number: str) -> None:
    assert not luhn_valid(number)


def _cards(text: str) -> list[tuple[str, float]]:
    return [(text[f.start : f.end], f.score) for f in CreditCardDetector().detect(text, "response")]


def test_card_numbers_are_found_with_or_without_separators() -> None:
    assert _cards("pay with 4111 1111 1111 1111 today") == [("4111 1111 1111 1111", 0.95)]
    assert _cards("amex 3782-822463-10005.") == [("3782-822463-10005", 0.95)]
    assert _cards("4111111111111111") == [("4111111111111111", 0.95)]


def test_luhn_invalid_and_embedded_digit_runs_are_not_cards() -> None:
    assert _cards("order 4111 1111 1111 1112") == []
    # A Luhn-valid card inside a longer reference number is not reported.
    assert _cards("ref 99 4111 1111 1111 1111 42") == []
    assert _cards("tracking 12345678901234567890123") == []


def test_luhn_valid_numbers_of_no_known_network_score_lower() -> None:
    assert _cards("id 9123456789012348") == [("9123456789012348", 0.7)]


def test_emails_are_found_and_near_misses_are_not() -> None:
    text = "write to jane.doe+news@mail.example.co.uk or bob@localhost, not @handle or a@b.c"
    found = [(text[f.start : f.end], f.category) for f in EmailDetector().detect(text, "response")]
    assert found == [("jane.doe+news@mail.example.co.uk", "pii.email")]


def test_detectors_stay_linear_on_hostile_input() -> None:
    hostile = ["a" * 200_000, "1" * 200_000, "1 " * 100_000, "a@" * 100_000, ("x." * 50_000) + "@"]
    started = time.perf_counter()
    for text in hostile:
        EmailDetector().detect(text, "response")
        CreditCardDetector().detect(text, "response")
    assert time.perf_counter() - started < 2.0
