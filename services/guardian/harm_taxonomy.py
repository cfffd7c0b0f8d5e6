"""The harm taxonomy findings are reported under: the 14 hazard categories of Llama Guard 3
(MLCommons AI Safety taxonomy), as categories `harm.S1` ... `harm.S14`."""

from __future__ import annotations

from types import MappingProxyType

__all__ = ["HARM_CATEGORIES", "HARM_NAMES", "harm_category"]

#: `S<n>` -> the hazard's name, as Llama Guard 3 names it.
HARM_NAMES = MappingProxyType(
    {
        "S1": "Violent Crimes",
        "S2": "Non-Violent Crimes",
        "S3": "Sex-Related Crimes",
        "S4": "Child Sexual Exploitation",
        "S5": "Defamation",
        "S6": "Specialized Advice",
        "S7": "Privacy",
        "S8": "Intellectual Property",
        "S9": "Indiscriminate Weapons",
        "S10": "Hate",
        "S11": "Suicide & Self-Harm",
        "S12": "Sexual Content",
        "S13": "Elections",
        "S14": "Code Interpreter Abuse",
    }
)

#: Every harm category as reported in findings: `harm.S1` ... `harm.S14`.
HARM_CATEGORIES = tuple(f"harm.{code}" for code in HARM_NAMES)


def harm_category(code: str) -> str:
    """`S1` -> `harm.S1` (ValueError for a code outside the taxonomy)."""
    if code not in HARM_NAMES:
        raise ValueError(f"unknown harm code {code!r}; expected one of {', '.join(HARM_NAMES)}")
    return f"harm.{code}"
