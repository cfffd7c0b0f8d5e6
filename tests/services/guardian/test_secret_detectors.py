"""Secrets via detect-secrets' plugins, in-process."""

from __future__ import annotations

import pytest

from services.guardian.secret_detectors import SECRET_PLACEHOLDERS, SecretDetector


@pytest.fixture(scope="module")
def detector() -> SecretDetector:
    return SecretDetector()


def found(detector: SecretDetector, text: str) -> list[tuple[str, str]]:
    return [(text[f.start : f.end], f.category) for f in detector.detect(text, "response") if f.score >= 0.5]


@pytest.mark.parametrize(
    ("text", "span", "category"),
    [
        ("aws_access_key_id = AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE", "secret.aws_key"),
        ("push with ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789 now", "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789", "secret.token"),
        ("key sk_live_4eC39HqLyjWDarjtT1zdp7dc ok", "sk_live_4eC39HqLyjWDarjtT1zdp7dc", "secret.token"),
        ("db_password = 'Sup3r$ecret!'", "Sup3r$ecret!", "secret.password"),
        ("postgres://admin:hunter22x@db.internal:5432/app", "hunter22x", "secret.password"),
        ("my api secret is q8Xv2LpR7tZ4mN9bW3kJ6hY1", "q8Xv2LpR7tZ4mN9bW3kJ6hY1", "secret.high_entropy"),
    ],
)
def test_known_formats_and_credentials_are_found(detector: SecretDetector, text: str, span: str, category: str) -> None:
    assert (span, category) in found(detector, text)


def test_a_private_key_block_is_redacted_whole(detector: SecretDetector) -> None:
    block = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA1234abcd\nxyz\n-----END RSA PRIVATE KEY-----"
    text = f"Here it is:\n{block}\nthanks"
    [finding] = detector.detect(text, "response")
    assert text[finding.start : finding.end] == block
    assert (finding.category, finding.placeholder) == ("secret.private_key", "<PRIVATE_KEY>")


@pytest.mark.parametrize(
    "text",
    [
        "The fix landed in commit 3f2a9c8e1b7d4f6a0c5e9b2d8f1a7c3e6b4d0a9f yesterday.",
        "Correlation id 123e4567-e89b-12d3-a456-426614174000 is in the logs.",
        "I forgot my password, how do I reset it?",
        "See docs/getting-started-with-the-guardian-service.md for details.",
        "Please kill the process; the key to success is patience.",
    ],
)
def test_hashes_ids_and_prose_are_not_secrets(detector: SecretDetector, text: str) -> None:
    assert found(detector, text) == []


def test_high_entropy_reporting_can_be_switched_off() -> None:
    text = "my api secret is q8Xv2LpR7tZ4mN9bW3kJ6hY1"
    assert SecretDetector(high_entropy=False).detect(text, "prompt") == []


def test_placeholders_and_offsets_on_multiline_text(detector: SecretDetector) -> None:
    text = "line one\nexport AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE\nline three"
    [finding] = detector.detect(text, "prompt")
    assert text[finding.start : finding.end] == "AKIAIOSFODNN7EXAMPLE"
    assert finding.placeholder == SECRET_PLACEHOLDERS["secret.aws_key"] == "<AWS_KEY>"


@pytest.mark.parametrize(
    "text",
    ["a" * 100_000, "password = " + "a" * 100_000, "key: " * 20_000, "A1b2" * 25_000, "a=" * 50_000, "'a" * 50_000],
    ids=["letters", "long-password", "keys", "base64-run", "assignments", "quotes"],
)
def test_hostile_inputs_finish(detector: SecretDetector, text: str) -> None:
    findings = detector.detect(text, "prompt")
    assert all(f.category in SECRET_PLACEHOLDERS for f in findings)
