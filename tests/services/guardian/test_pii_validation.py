"""Checksums and issuing rules: Luhn, IBAN mod-97, US SSN ranges, card networks."""

from __future__ import annotations

import pytest

from services.guardian.pii_validation import iban_valid, known_card_issuer, luhn_valid, ssn_valid


@pytest.mark.parametrize(
    "number", ["4111111111111111", "5555555555554444", "378282246310005", "6011111111111117", "7992739871300"]
)
def test_luhn_accepts_valid_numbers(number: str) -> None:
    assert luhn_valid(number)


@pytest.mark.parametrize(
    "number", ["4111111111111112", "1234567812345678", "411111111111", "41111111111111111111", "4111-1111", ""]
)
def test_luhn_refuses_invalid_numbers(number: str) -> None:
    assert not luhn_valid(number)


def test_card_networks_need_their_prefix_and_length() -> None:
    assert known_card_issuer("4111111111111111") and known_card_issuer("378282246310005")
    assert not known_card_issuer("9123456789012348") and not known_card_issuer("41111111111111")


@pytest.mark.parametrize(
    "iban", ["GB82 WEST 1234 5698 7654 32", "DE89370400440532013000", "FR1420041010050500013M02606", "nl91abna0417164300"]
)
def test_iban_accepts_valid_codes(iban: str) -> None:
    assert iban_valid(iban)


@pytest.mark.parametrize(
    "iban",
    [
        "GB83 WEST 1234 5698 7654 32",  # check digits off by one
        "DE89370400440532013001",  # account digit changed
        "GB82 WEST 1234 5698 7654 3",  # wrong length for GB
        "XX82WEST12345698765432",  # no such country
        "hello world",
    ],
)
def test_iban_refuses_bad_checksums_lengths_and_countries(iban: str) -> None:
    assert not iban_valid(iban)


@pytest.mark.parametrize("ssn", ["536221234", "001010001", "665991234", "899123456"])
def test_ssn_accepts_issuable_numbers(ssn: str) -> None:
    assert ssn_valid(ssn)


@pytest.mark.parametrize(
    "ssn", ["000121234", "666121234", "900121234", "999121234", "536001234", "536220000", "078051120", "53622123", "53622123x"]
)
def test_ssn_refuses_unissued_ranges_and_samples(ssn: str) -> None:
    assert not ssn_valid(ssn)
